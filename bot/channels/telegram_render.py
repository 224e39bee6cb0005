"""Turns channel-neutral reply payloads into Telegram messages, and callback data back into choice ids.

Pure: no I/O. It must never put anything into a message that the dialog did not render (no echo of
user input), and never emit callback data over Telegram's 64-byte limit.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)

from bot.i18n import Catalog
from dialogs.model import Msg
from domain import beijing

CALLBACK_MAX_BYTES = 64
# Telegram counts a message's length in UTF-16 code units (an emoji is two), up to 4096.
TEXT_LIMIT = 4096
# Telegram refuses an inline keyboard of more than 100 buttons ("reply markup is too long").
MAX_BUTTONS = 100
_HASHED = "#"

# Slash commands shown in Telegram's menu; descriptions reuse catalog keys where one already says it.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", "tg.cmd.start"),
    ("menu", "common.back_to_menu"),
    ("help", "tg.cmd.help"),
    ("language", "settings.language"),
    ("human", "menu.human"),
    ("stop", "settings.reminders_off"),
    ("forget", "settings.forget"),
)


def say(catalog: Catalog, key: str, lang: str, **params: Any) -> str:
    return catalog.render(Msg(key, params), lang)


def bot_commands(catalog: Catalog, lang: str) -> list[BotCommand]:
    return [BotCommand(name, say(catalog, key, lang)[:256]) for name, key in COMMANDS]


def encode_choice(choice_id: str) -> str:
    """Callback data for a choice: the id itself when it fits, else a digest the adapter resolves."""
    raw = choice_id.encode()
    if 0 < len(raw) <= CALLBACK_MAX_BYTES and not choice_id.startswith(_HASHED):
        return choice_id
    return _HASHED + base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:18]).decode()


def resolve_choice(data: str | None, offered: Iterable[str]) -> str | None:
    """The offered choice id that `data` names, or None for an old, unknown or forged button."""
    if not data:
        return None
    for choice_id in offered:
        if encode_choice(choice_id) == data:
            return choice_id
    return None


def offered_ids(conversation_data: Mapping[str, Any]) -> list[str]:
    offered = conversation_data.get("_offered")
    if not isinstance(offered, list):
        return []
    return [str(item[0]) for item in offered if isinstance(item, list | tuple) and item]


Markup = InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove


@dataclass(frozen=True)
class Outgoing:
    """One Telegram message; `seq` ties it to its outbox row (None for adapter notices)."""

    text: str
    markup: Markup | None = None
    seq: int | None = None
    # Encoded callback data of the inline keyboard, to recognise "the same menu again".
    buttons: tuple[str, ...] = ()
    shows_reply_keyboard: bool = False

    def with_markup(self, markup: Markup) -> Outgoing:
        return Outgoing(self.text, markup, self.seq, self.buttons, self.shows_reply_keyboard)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _utf16_head(text: str, limit: int) -> str:
    """The longest start of `text` within `limit` UTF-16 units, never splitting a surrogate pair."""
    return text.encode("utf-16-le")[: limit * 2].decode("utf-16-le", errors="ignore")


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    if utf16_len(text) <= limit:
        return [text]
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while utf16_len(line) > limit:
            if current:
                parts.append(current)
                current = ""
            head = _utf16_head(line, limit)
            parts.append(head)
            line = line[len(head):]
        candidate = f"{current}\n{line}" if current else line
        if utf16_len(candidate) > limit:
            parts.append(current)
            current = line
        else:
            current = candidate
    if current:
        parts.append(current)
    return parts


def inline_keyboard(choices: Sequence[Mapping[str, Any]]) -> tuple[InlineKeyboardMarkup, tuple[str, ...]]:
    return _inline_keyboard(tuple((str(c["id"]), str(c["label"])) for c in choices))


class FixedInlineKeyboard(InlineKeyboardMarkup):
    """PTB's inline keyboard whose wire form is computed once: it never changes after it is built, and
    serialising the same menu on every send was a twentieth of the send path."""

    __slots__ = ("_wire",)

    def __init__(self, rows: Sequence[Sequence[InlineKeyboardButton]]) -> None:
        super().__init__(rows)
        with self._unfrozen():
            self._wire = super().to_dict()

    def to_dict(self, recursive: bool = True) -> dict[str, Any]:
        # A fresh top-level dict: callers may add to it, and the cached one must not change.
        return dict(self._wire) if recursive else super().to_dict(recursive=False)


@lru_cache(maxsize=4096)
def _inline_keyboard(choices: tuple[tuple[str, str], ...]) -> tuple[InlineKeyboardMarkup, tuple[str, ...]]:
    # Cached: the same few menus are drawn over and over, and PTB's markup objects are immutable.
    # One button per row: labels are sentences in Chinese and English alike, and phones are narrow.
    choices = choices[:MAX_BUTTONS]
    datas = tuple(encode_choice(choice_id) for choice_id, _ in choices)
    rows = [[InlineKeyboardButton(label[:64], callback_data=data)] for (_, label), data in zip(choices, datas,
                                                                                              strict=True)]
    return FixedInlineKeyboard(rows), datas


DATE_PREFIX = "date:"
MONTH_PREFIX = "month:"
NOOP = "noop"


def calendar_rows(month: date, today: date, catalog: Catalog, lang: str) -> list[list[InlineKeyboardButton]]:
    """A month of day buttons (`date:YYYY-MM-DD`) with ‹ › to move; days the plan cannot take are blank.

    The plan accepts today up to a year ahead (dialogs/dates.py); the dialog checks again whatever arrives."""
    first = month.replace(day=1)
    last_allowed = today + timedelta(days=366)
    prev_month = (first - timedelta(days=1)).replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    rows = [[InlineKeyboardButton("‹" if prev_month >= today.replace(day=1) else " ",
                                  callback_data=f"{MONTH_PREFIX}{prev_month:%Y-%m}"
                                  if prev_month >= today.replace(day=1) else NOOP),
             InlineKeyboardButton(f"{first:%Y-%m}", callback_data=NOOP),
             InlineKeyboardButton("›" if next_month <= last_allowed else " ",
                                  callback_data=f"{MONTH_PREFIX}{next_month:%Y-%m}"
                                  if next_month <= last_allowed else NOOP)]]
    rows.append([InlineKeyboardButton(day, callback_data=NOOP)
                 for day in say(catalog, "tg.weekdays", lang).split()])
    week: list[InlineKeyboardButton] = [InlineKeyboardButton(" ", callback_data=NOOP)] * first.weekday()
    day = first
    while day.month == first.month:
        usable = today <= day <= last_allowed
        week.append(InlineKeyboardButton(str(day.day) if usable else "·",
                                         callback_data=f"{DATE_PREFIX}{day.isoformat()}" if usable else NOOP))
        if len(week) == 7:
            rows.append(week)
            week = []
        day += timedelta(days=1)
    if week:
        rows.append(week + [InlineKeyboardButton(" ", callback_data=NOOP)] * (7 - len(week)))
    return rows


def calendar_keyboard(month: date, today: date, catalog: Catalog, lang: str,
                      extra: Sequence[Sequence[InlineKeyboardButton]] = ()) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([*calendar_rows(month, today, catalog, lang), *extra])


def render_payload(payload: Mapping[str, Any], catalog: Catalog, lang: str) -> list[Outgoing]:
    """One reply payload as one or more messages; the keyboard rides on the last part."""
    text = str(payload.get("text") or "")
    if payload.get("error"):
        text = "⚠️ " + text
    parts = split_text(text) or [""]
    seq = payload.get("seq") if isinstance(payload.get("seq"), int) else None
    choices = [c for c in payload.get("choices") or [] if isinstance(c, Mapping) and c.get("id")]
    markup: Markup | None = None
    buttons: tuple[str, ...] = ()
    reply_keyboard = False
    if payload.get("request_contact"):
        # A contact button only lives on a reply keyboard; the other choices go there too, and their
        # labels come back as text that the dispatcher maps to the choice.
        rows = [[KeyboardButton(say(catalog, "tg.share_contact", lang), request_contact=True)]]
        rows.extend([KeyboardButton(str(c["label"]))] for c in choices)
        markup = ReplyKeyboardMarkup(rows, resize_keyboard=True, one_time_keyboard=True)
        reply_keyboard = True
    elif payload.get("date_picker"):
        choice_markup, buttons = inline_keyboard(choices) if choices else (None, ())
        today = beijing.today()
        markup = calendar_keyboard(today, today, catalog, lang,
                                   choice_markup.inline_keyboard if choice_markup is not None else ())
    elif choices:
        markup, buttons = inline_keyboard(choices)
    out = [Outgoing(part, seq=seq) for part in parts[:-1]]
    out.append(Outgoing(parts[-1], markup, seq, buttons, reply_keyboard))
    return out


def render_batch(payloads: Sequence[Mapping[str, Any]], catalog: Catalog, lang: str, *,
                 keyboard_shown: bool) -> tuple[list[Outgoing], bool]:
    """All payloads of one step. Returns the messages and whether a contact keyboard stays on screen.

    A contact keyboard left from an earlier step is taken down by the first message that has no inline
    keyboard of its own (Telegram allows one markup per message).
    """
    messages: list[Outgoing] = []
    for payload in payloads:
        messages.extend(render_payload(payload, catalog, lang))
    shown = keyboard_shown
    for index, message in enumerate(messages):
        if message.shows_reply_keyboard:
            shown = True
        elif shown and message.markup is None:
            messages[index] = message.with_markup(ReplyKeyboardRemove())
            shown = False
    return messages, shown
