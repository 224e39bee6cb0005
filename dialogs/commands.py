"""Global commands typed as text: slash commands and their Chinese keywords. Input patterns, not output."""

from __future__ import annotations

import unicodedata

# Keywords users type; the catalog holds everything the bot says.
_KEYWORDS: dict[str, str] = {
    "/start": "start",
    "/menu": "menu",
    "/cancel": "cancel",
    "menu": "menu",
    "cancel": "cancel",
    "菜单": "menu",
    "取消": "cancel",
    "主菜单": "menu",
    "返回": "menu",
    "/help": "help",
    "help": "help",
    "帮助": "help",
    "/language": "language",
    "/lang": "language",
    "language": "language",
    "语言": "language",
    "/human": "human",
    "human": "human",
    "人工": "human",
    "人工客服": "human",
    "转人工": "human",
    "/forget": "forget",
    "删除我的数据": "forget",
    "/stop": "stop",
    "退订": "stop",
    "/check": "check",
}


def parse_command(text: str) -> tuple[str, str] | None:
    """Returns (command, argument) when `text` is a global command, else None."""
    cleaned = unicodedata.normalize("NFKC", text).strip()
    if not cleaned:
        return None
    head, _, arg = cleaned.partition(" ")
    head = head.lower()
    if head.startswith("/") and "@" in head:
        head = head.split("@", 1)[0]  # Telegram appends @botname in groups
    command = _KEYWORDS.get(head)
    if command is None:
        return None
    return command, arg.strip()
