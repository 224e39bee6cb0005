"""Every key in both languages, with the same placeholders; no user-facing text outside the catalog."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

from bot.i18n import Catalog

ROOT = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u3400-\u9fff\u3000-\u303f\uff0c\uff1a\uff01\uff1f]")
# Input keywords users type (not text the bot says) and docstrings/comments are allowed to hold Chinese.
ALLOWED = {ROOT / "dialogs" / "commands.py", ROOT / "dialogs" / "dates.py"}


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_both_catalogs_have_the_same_keys_all_translated_with_the_same_placeholders() -> None:
    catalog = Catalog.load()
    zh, en = catalog.messages["zh_CN"], catalog.messages["en"]
    assert set(zh) == set(en), set(zh) ^ set(en)
    for key in zh:
        assert zh[key].strip() and en[key].strip(), key
        assert placeholders(zh[key]) == placeholders(en[key]), key
    assert len(zh) > 80


def _keys_used_in_code() -> set[str]:
    keys: set[str] = set()
    for path in (ROOT / "dialogs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Msg" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    keys.add(first.value)
    return keys


def test_every_literal_key_in_the_dialogs_exists() -> None:
    catalog = Catalog.load()
    missing = _keys_used_in_code() - set(catalog.messages["zh_CN"])
    assert not missing


def test_no_user_facing_chinese_outside_the_catalog() -> None:
    offenders = []
    for folder in ("dialogs", "bot", "integrations"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in ALLOWED or "sandbox_registry" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                          if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                          and n.body and isinstance(n.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and id(node) not in docstrings and CJK.search(node.value)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:30]!r}")
    assert not offenders, offenders


def test_the_page_takes_its_words_from_the_catalog() -> None:
    html = (ROOT / "bot" / "web" / "static" / "chat.html").read_text()
    visible = re.sub(r"<script>.*?</script>|<style>.*?</style>|\{\{[^}]+\}\}", "", html, flags=re.S)
    assert not CJK.search(visible)
    assert not re.search(r">\s*[A-Za-z][A-Za-z ]{3,}\s*<", visible), "hard-coded English on the page"


def test_keys_built_at_run_time_exist() -> None:
    from dialogs import guide, registry
    from dialogs.idcard import IdReason
    from dialogs.phones import PhoneProblem
    from integrations.platform_directory import CATEGORIES, DIFFICULTIES

    catalog = Catalog.load().messages["zh_CN"]
    keys = [f"category.{c}" for c in guide.CATEGORIES]
    keys += [f"difficulty.{d}" for d in DIFFICULTIES]
    keys += [f"requests.status.{s}" for s in ("queued", "submitted", "processing", "done", "rejected", "refused")]
    keys += [f"unbind.update.{s}" for s in ("submitted", "submitted_late", "processing", "done", "rejected", "refused")]
    keys += [f"realname.id.{r}" for r in IdReason.__args__ if r != "ok"]
    keys += [f"verify.phone.{p}" for p in PhoneProblem.__args__ if p != "ok"]
    keys += [f"menu.{entry.choice}" for entry in registry.menu_entries()]
    keys += [f"plan.task.{t}" for t, _ in __import__("bot.plans", fromlist=["TASKS"]).TASKS]
    keys += [f"plan.date.{p}" for p in ("unreadable", "past", "too_far")]
    keys += [f"carrier.{c}" for c in ("china_mobile", "china_unicom", "china_telecom", "china_broadnet")]
    assert [k for k in keys if k not in catalog] == []
    assert set(guide.CATEGORIES) == set(CATEGORIES)
