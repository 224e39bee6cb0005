"""The shipped platform directory: coverage, shape, and no URLs or phone numbers anywhere."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from integrations.platform_directory import (
    CATEGORIES,
    DEFAULT_PATH,
    DirectoryError,
    Platform,
    load_directory,
    parse_directory,
)

REQUIRED_CATEGORIES = set(
    "social payment bank shopping travel cloud_drive mail education device_id railway video local_services"
    " securities".split()
)
REQUIRED_IDS = set(
    "weibo taobao meituan dianping douyin toutiao xiaomi wechat qq alipay baidu jd kuaishou zhihu pinduoduo"
    " bilibili xiaohongshu netease_mail baidu_netdisk ctrip railway12306 eleme didi amap xianyu douban"
    " huawei_id apple_id cmb icbc chsi".split()
)
# The CAICT 码号服务平台 一键解绑 launch set.
REGISTRY_UNBIND = set("weibo taobao meituan dianping douyin toutiao xiaomi".split())

URL_LIKE = re.compile(r"https?:|www\.|://|[A-Za-z0-9-]\.(?:com|cn|net|org|gov|edu|me|io)\b", re.IGNORECASE)
# Mobile numbers, landlines, 400/800 lines, 95xxx/96xxx service lines, and any long run of digits.
PHONE_LIKE = re.compile(r"(?<!\d)(?:1[3-9]\d{9}|0\d{2,3}-?\d{7,8}|[48]00-?\d{3}-?\d{4}|9[56]\d{3,4})(?!\d)|\d{7,}")


@pytest.fixture(scope="module")
def directory_json() -> dict[str, object]:
    data: dict[str, object] = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    return data


def test_at_least_forty_platforms_with_unique_ids() -> None:
    directory = load_directory()
    ids = [p.id for p in directory.all()]
    assert len(ids) >= 40
    assert len(ids) == len(set(ids))


def test_every_required_category_and_id_is_present() -> None:
    directory = load_directory()
    assert REQUIRED_CATEGORIES <= set(directory.by_category())
    assert REQUIRED_IDS <= {p.id for p in directory.all()}


def test_registry_unbind_is_exactly_the_launch_set() -> None:
    assert load_directory().registry_unbind_ids() == REGISTRY_UNBIND


def test_tencent_and_banks_are_not_registry_unbindable() -> None:
    directory = load_directory()
    for platform_id in ("wechat", "qq", "icbc", "cmb"):
        platform = directory.get(platform_id)
        assert platform is not None and not platform.registry_unbind
    assert all(not p.registry_unbind for p in directory.by_category()["bank"])


def test_no_urls_or_phone_numbers_anywhere(directory_json: dict[str, object]) -> None:
    platforms = directory_json["platforms"]
    assert isinstance(platforms, list)
    for entry in platforms:
        for key, value in entry.items():
            if not isinstance(value, str):
                continue
            assert not URL_LIKE.search(value), (entry["id"], key, value)
            assert not PHONE_LIKE.search(value), (entry["id"], key, value)


def test_the_patterns_themselves_catch_what_they_should() -> None:
    for text in ["见 https://example.org", "www.example", "kefu.example.com", "微博 WEIBO.COM"]:
        assert URL_LIKE.search(text), text
    for text in ["拨打 95588", "400-123-4567", "13800138000", "010-12345678", "客服 1234567"]:
        assert PHONE_LIKE.search(text), text
    for text in ["铁路12306", "railway12306", "139 邮箱", "QQ 邮箱"]:
        assert not PHONE_LIKE.search(text) and not URL_LIKE.search(text), text


def test_paths_come_in_pairs_and_text_is_trimmed() -> None:
    for platform in load_directory().all():
        assert bool(platform.change_path_zh) == bool(platform.change_path_en), platform.id
        assert bool(platform.notes_zh) == bool(platform.notes_en), platform.id
        for value in asdict(platform).values():
            if isinstance(value, str):
                assert value == value.strip(), platform.id


def test_lookups() -> None:
    directory = load_directory()
    wechat = directory.get("wechat")
    assert wechat is not None
    assert wechat.change_path_zh == "我 → 设置 → 账号与安全 → 手机号"
    assert wechat.name("en") == "WeChat" and wechat.name("zh_CN") == "微信"
    assert wechat.change_path("en").startswith("Me →")
    assert directory.get("no_such_platform") is None
    assert "alipay" in directory and "nope" not in directory
    groups = directory.by_category()
    assert list(groups) == [c for c in CATEGORIES if c in groups]
    assert sum(len(g) for g in groups.values()) == len(directory)
    assert all(p.category == name for name, group in groups.items() for p in group)


def test_loaded_once_and_immutable() -> None:
    assert load_directory() is load_directory()
    platform = load_directory().all()[0]
    with pytest.raises(AttributeError):
        platform.name_zh = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        load_directory().by_category()["social"] = ()  # type: ignore[index]


def test_loading_an_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "dir.json"
    path.write_text(DEFAULT_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    assert [p.id for p in load_directory(path).all()] == [p.id for p in load_directory().all()]


def _entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": "demo",
        "name_zh": "演示",
        "name_en": "Demo",
        "category": "social",
        "registry_unbind": False,
        "change_path_zh": "",
        "change_path_en": "",
        "difficulty": "easy",
    }
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "platforms"),
        ({"platforms": [_entry(), _entry()]}, "duplicate"),
        ({"platforms": [_entry(category="games")]}, "category"),
        ({"platforms": [_entry(difficulty="trivial")]}, "difficulty"),
        ({"platforms": [_entry(registry_unbind="yes")]}, "registry_unbind"),
        ({"platforms": [_entry(name_zh="")]}, "name_zh"),
        ({"platforms": [_entry(id="Bad-Id")]}, "id"),
        ({"platforms": [_entry(website="x")]}, "unknown fields"),
        ({"platforms": ["wechat"]}, "not an object"),
    ],
)
def test_validation_rejects_bad_documents(document: object, message: str) -> None:
    with pytest.raises(DirectoryError, match=message):
        parse_directory(document)


def test_optional_notes_default_to_empty() -> None:
    directory = parse_directory({"platforms": [_entry()]})
    platform = directory.get("demo")
    assert platform is not None and platform.notes_zh == "" and platform.notes_en == ""
    assert {f.name for f in fields(Platform)} >= {"notes_zh", "notes_en"}
