"""A WeChat follower from before the account had a bot never got a subscribe event: their first words ("设置") got
only the greeting and the menu, and they had to ask again. Now the greeting comes with what they asked for; words
the menu does not understand still get the greeting and the menu, with no "not understood" on top."""

from __future__ import annotations

from typing import Any

from tests.test_wechat import WxServer, fake_api, wx_factory  # noqa: F401  (fixtures)


async def test_a_new_followers_first_words_are_greeted_and_answered(wx_factory: Any) -> None:  # noqa: F811
    wx: WxServer = await wx_factory()
    answer = await wx.user("oOldFollower001").say("设置")
    assert "号清" in answer.text, answer.text  # the greeting
    assert "语言：中文" in answer.text and "关闭提醒" in answer.text, answer.text  # and the settings asked for

    answer = await wx.user("oOldFollower002").say("你好呀")
    assert "号清" in answer.text and "1. 查询号码绑定" in answer.text, answer.text
    assert "没看懂" not in answer.text, answer.text

    # A bare number is not a pick from a menu they have not seen yet.
    answer = await wx.user("oOldFollower003").say("1")
    assert "1. 查询号码绑定" in answer.text and "同意并继续" not in answer.text, answer.text
