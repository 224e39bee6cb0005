"""Issue 12's findings 4, 5, 6 and 9 over the real web chat API (1, 2 and 3 have their own files, 7 and 8 are in
the browser test). Each test is named after what it protects."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from bot.server import RunningServer
from tests.conftest import Chat


def masked(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]


async def test_4_the_letter_carries_the_holders_full_number_and_is_stored_only_masked(
        server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    chat = await Chat(http, server.url).open()
    demo = await chat.demo("recycled")
    await chat.verify(demo["phone"])
    await chat.say("/menu")
    await chat.pick("guide")
    first = next(c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith(("g:", "c:")))
    await chat.pick(first)
    if first.startswith("c:"):
        await chat.pick(next(c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith("g:")))
    assert "list" in [c["id"] for m in chat.last for c in m["choices"]] or first.startswith("c:")
    await chat.pick("letter")
    assert f"本人是手机号码 {demo['phone']} 的现任机主" in chat.text
    # On reload the page reads the stored transcript: there it is masked, and so in the database file.
    stored = await chat.pushed(0)
    assert demo["phone"] not in str(stored) and masked(demo["phone"]) in str(stored)
    await server.stop()
    for path in tmp_path.glob("haoqing.sqlite3*"):
        assert demo["phone"].encode() not in path.read_bytes(), path


async def test_4_an_unverified_user_gets_the_letter_masked(chat: Chat) -> None:
    await chat.say("/start")
    await chat.pick("guide")
    await chat.pick(next(c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith("c:")))
    await chat.pick(next(c["id"] for m in chat.last for c in m["choices"] if c["id"].startswith("g:")))
    await chat.pick("letter")
    assert "本人是手机号码 您的手机号 的现任机主" in chat.text or "号码已打码" in chat.text
    assert not re.search(r"1[3-9]\d{9}", chat.text)
    assert "list" in [c["id"] for m in chat.last for c in m["choices"]] or "detail" in [
        c["id"] for m in chat.last for c in m["choices"]]


async def test_5_typed_text_is_understood_at_the_menu(chat: Chat) -> None:
    await chat.say("/start")
    await chat.say("你好")
    assert "您好！我是号清" in chat.text and "没看懂" not in chat.text
    await chat.say("查询")
    assert "同意并继续" in str(chat.last)
    await chat.say("/menu")
    await chat.say("13800138000")
    assert "收到号码 138****8000" in chat.text
    assert [c["id"] for c in chat.last[-1]["choices"]] == ["go:phone_lookup", "go:phone_recycle", "go:menu"]
    await chat.say("2")
    assert "138****8000" in chat.text and ("二次号" in chat.text or "没有找到" in chat.text or "查不到" in chat.text)
    await chat.say("/menu")
    await chat.say("那个东西怎么弄啊")
    assert "您是想" in chat.text and len(chat.last[-1]["choices"]) == 4
    assert "请选择您要办理的业务" not in chat.text


async def test_6_tagging_previews_confirms_and_never_makes_a_second_statement(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open()
    demo = await chat.demo("tagged")
    await chat.verify(demo["phone"])
    await chat.say("/menu")
    await chat.pick("tag")
    await chat.say(f"{demo['name']} {demo['id_number']}")
    await chat.pick("confirm")
    assert "带有骚扰或营销类标记" in chat.text
    await chat.pick("new_holder")
    assert "预览" in chat.text and "核验码：" not in chat.text
    await chat.pick("confirm")
    code = re.search(r"核验码：(\w+)", chat.text).group(1)  # type: ignore[union-attr]
    await chat.say("/menu")
    await chat.pick("tag")
    labels = {c["id"]: c["label"] for m in chat.last for c in m["choices"]}
    assert labels["new_holder"] == "查看我的易主声明"
    await chat.pick("new_holder")
    assert "您已经登记过" in chat.text and code in chat.text
    async with http.get(f"{server.url}/sandbox/registry/numbers", params={"kind": "recycled"}) as r:
        plain = (await r.json())[0]
    other = await Chat(http, server.url).open()
    await other.verify(plain["phone"])
    await other.say("/menu")
    await other.pick("tag")
    await other.say(f"{plain['name']} {plain['id_number']}")
    await other.pick("confirm")
    assert "没有骚扰标记" in other.text
    assert "clear_harassment" not in [c["id"] for m in other.last for c in m["choices"]]


async def test_9_the_smaller_findings(server: RunningServer, http: aiohttp.ClientSession) -> None:
    chat = await Chat(http, server.url).open()
    demo = await chat.demo("recycled")
    await chat.to_phone_prompt()
    await chat.say(demo["phone"])
    await chat.say("12345")  # wrong length: no "the code was sent to …" again
    assert "验证码是 6 位数字" in chat.text and "已发送到" not in chat.text
    await chat.say(await chat.latest_code(demo["phone"]))
    previous = chat.text
    assert "不能远程解绑，需手动处理" in previous or "前任机主期间绑定：0" in previous
    await chat.say("/menu")
    await chat.pick("guide")
    await chat.pick("c:social")
    await chat.pick("g:wechat")
    assert "难度：中等（" in chat.text and "：中等：" not in chat.text
    assert "首批支持范围" not in chat.text
    await chat.say("取消")
    assert "已取消" in chat.text
    await chat.pick("recycle")
    await chat.say(demo["phone"])
    first = chat.text
    assert "买号小贴士" in first and not re.search(r"约 \d{3,} 天前", first)
    await chat.pick("again")
    await chat.say(demo["phone"])
    assert "买号小贴士" not in chat.text  # the tips once, not every time


async def test_a_number_inside_a_sentence_is_gated_like_a_typed_number(tmp_path: Path,
                                                                       http: aiohttp.ClientSession) -> None:
    """Typed intent keeps a number from a sentence and sends it a code later: the proof-of-work gate on codes
    (issue 11) must see that number when it is typed, as it sees a bare one."""
    from bot.server import start_server
    from tests.conftest import make_settings

    server = await start_server(make_settings(tmp_path, otp_pow_after=1, pow_bits=8, otp_resend_seconds=0))
    try:
        first = await Chat(http, server.url).open()
        demos = [d["phone"] for d in await (await http.get(f"{server.url}/sandbox/registry/numbers",
                                                           params={"kind": "recycled"})).json()]
        await first.to_phone_prompt()
        await first.say(demos[0])
        assert "验证码已发送" in first.text
        second = await Chat(http, server.url).open()
        await second.say("/start")
        refused = await second.send({"text": f"帮我解绑 {demos[1]}"}, expect=429)
        assert refused and refused[0].get("error")
    finally:
        await server.stop()
