"""Reads what the dialog needs from a Telegram update's raw JSON: where it goes, who sent it, and the event.

Pure, and the hot path: it builds no python-telegram-bot objects (turning every update into PTB's frozen objects
was about a fifth of the CPU at saturation), only the few plain fields used later. An update whose fields do not
have the Bot API's shapes is not understood (None), never half-read. It never logs anything a user typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.channels.telegram_render import DATE_PREFIX, MONTH_PREFIX, NOOP
from dialogs.model import Event

Route = Literal["dispatch", "ignore", "group", "edited", "member", "callback_elsewhere"]

_MEDIA_FIELDS: tuple[tuple[str, str], ...] = (
    ("photo", "photo"), ("live_photo", "photo"), ("sticker", "sticker"), ("voice", "voice"), ("audio", "voice"),
    ("animation", "video"), ("video", "video"), ("video_note", "video"), ("document", "document"),
    ("location", "location"), ("venue", "location"),
)
# Things a person sends that are neither text nor media we name; service messages are not among them.
_OTHER_CONTENT = ("poll", "dice", "game", "story", "invoice", "paid_media", "checklist", "giveaway",
                  "users_shared", "chat_shared", "web_app_data", "passport_data")


class NotUnderstood(ValueError):
    """A field is missing or has the wrong type for the Bot API's schema."""


@dataclass(frozen=True, slots=True)
class Press:
    """A button press (callback_query)."""

    id: str
    data: str | None
    # The message the keyboard sits on, when the bot can still edit it (an inaccessible message has date 0).
    message_id: int | None
    # The callback data of that message's inline keyboard, to recognise "the same menu again".
    buttons: tuple[str, ...] = ()
    # A calendar moved a month keeps its other rows (text, data), read from the message it sits on.
    extra_rows: tuple[tuple[tuple[str, str], ...], ...] = ()


@dataclass(frozen=True, slots=True)
class MemberChange:
    """The bot's own membership changed in a chat (blocked, unblocked, added to a group)."""

    chat_type: str
    old_status: str
    new_status: str


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    """What one update asks of us, worked out before any I/O."""

    route: Route
    update_id: int = 0
    chat_id: int = 0
    event: Event | None = None
    lang_hint: str | None = None
    press: Press | None = None
    member: MemberChange | None = None
    kind: str = ""
    # A group message: its text or caption, and whom it replies to (is it addressed to the bot?).
    group_text: str = ""
    reply_to_user: int | None = None
    # The raw message, for the staff group (bot/channels/telegram_staff.py), which reads its own fields.
    message: Mapping[str, Any] | None = None


def is_calendar(data: str) -> bool:
    return data == NOOP or data.startswith((DATE_PREFIX, MONTH_PREFIX))


def _obj(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise NotUnderstood("not an object")
    return value


def _opt_obj(parent: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = parent.get(key)
    return None if value is None else _obj(value)


def _int(parent: Mapping[str, Any], key: str) -> int:
    value = parent.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise NotUnderstood(key)
    return value


def _str(parent: Mapping[str, Any], key: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise NotUnderstood(key)
    return value


def _opt_str(parent: Mapping[str, Any], key: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise NotUnderstood(key)
    return value


def _user(value: Any) -> tuple[int, str | None]:
    """A User object: its id and language_code."""
    user = _obj(value)
    return _int(user, "id"), _opt_str(user, "language_code")


def _chat(message: Mapping[str, Any]) -> tuple[int, str]:
    chat = _obj(message.get("chat"))
    return _int(chat, "id"), _str(chat, "type")


def _message(value: Any) -> Mapping[str, Any]:
    message = _obj(value)
    _int(message, "message_id")
    _int(message, "date")
    _chat(message)
    for key in ("text", "caption"):
        _opt_str(message, key)
    return message


def _keyboard(message: Mapping[str, Any]) -> list[list[Mapping[str, Any]]]:
    markup = message.get("reply_markup")
    rows = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(rows, list):
        return []
    return [[b for b in row if isinstance(b, dict)] for row in rows if isinstance(row, list)]


def _press(query: Mapping[str, Any]) -> tuple[Press, int | None, str | None]:
    """The press, the chat it came from (None: an inline-mode message) and that chat's type."""
    data = _opt_str(query, "data")
    shown = _opt_obj(query, "message")
    if shown is None:
        return Press(_str(query, "id"), data, None), None, None
    message_id, date = _int(shown, "message_id"), _int(shown, "date")
    chat_id, chat_type = _chat(shown)
    rows = _keyboard(shown)
    buttons = tuple(str(b["callback_data"]) for row in rows for b in row if b.get("callback_data") is not None)
    extra: tuple[tuple[tuple[str, str], ...], ...] = ()
    if data is not None and data.startswith(MONTH_PREFIX):
        extra = tuple(tuple((str(b.get("text", "")), str(b["callback_data"])) for b in row) for row in rows
                      if row and all(b.get("callback_data") for b in row)
                      and not any(is_calendar(str(b["callback_data"])) for b in row))
    return (Press(_str(query, "id"), data, message_id if date else None, buttons, extra), chat_id, chat_type)


def _media_kind(message: Mapping[str, Any]) -> str | None:
    for key, kind in _MEDIA_FIELDS:
        if message.get(key):
            return kind
    if any(message.get(key) for key in _OTHER_CONTENT):
        return "other"
    return None


def plan(update: Mapping[str, Any]) -> UpdatePlan | None:
    """The update's route and event, or None when its fields do not have the Bot API's shapes."""
    try:
        return _plan(update)
    except NotUnderstood:
        return None


def _plan(update: Mapping[str, Any]) -> UpdatePlan:
    update_id = _int(update, "update_id")
    query = _opt_obj(update, "callback_query")
    if query is not None:
        sender, lang = _user(query.get("from"))
        press, chat_id, chat_type = _press(query)
        if chat_id is not None and chat_type != "private":
            return UpdatePlan("callback_elsewhere", update_id, chat_id, press=press, lang_hint=lang, kind="callback")
        if chat_id is None and isinstance(query.get("inline_message_id"), str):
            return UpdatePlan("callback_elsewhere", update_id, sender, press=press, lang_hint=lang, kind="callback")
        return UpdatePlan("dispatch", update_id, chat_id if chat_id is not None else sender, press=press,
                          lang_hint=lang, kind="callback")
    member = _opt_obj(update, "my_chat_member")
    if member is not None:
        chat_id, chat_type = _chat(member)
        _sender, lang = _user(member.get("from"))
        change = MemberChange(chat_type, _str(_obj(member.get("old_chat_member")), "status"),
                              _str(_obj(member.get("new_chat_member")), "status"))
        return UpdatePlan("member", update_id, chat_id, member=change, lang_hint=lang, kind="my_chat_member")
    edited = _opt_obj(update, "edited_message")
    if edited is not None:
        edited = _message(edited)
        chat_id, chat_type = _chat(edited)
        if chat_type == "private":
            lang = _user(edited["from"])[1] if edited.get("from") is not None else None
            return UpdatePlan("edited", update_id, chat_id, lang_hint=lang, kind="edited")
        return UpdatePlan("ignore", update_id, kind="edited_group")
    raw = update.get("message")
    if raw is None:
        # channel posts, reactions, inline queries, business messages...: nothing for us to say.
        return UpdatePlan("ignore", update_id, kind="other_update")
    message = _message(raw)
    chat_id, chat_type = _chat(message)
    author: tuple[int | None, str | None] = _user(message["from"]) if message.get("from") is not None \
        else (None, None)
    author_id, lang = author
    if chat_type != "private":
        replied = _opt_obj(message, "reply_to_message")
        replied_from = _opt_obj(replied, "from") if replied is not None else None
        return UpdatePlan("group", update_id, chat_id, lang_hint=lang, kind="group",
                          group_text=message.get("text") or message.get("caption") or "",
                          reply_to_user=_int(replied_from, "id") if replied_from is not None else None,
                          message=message)
    text = message.get("text")
    contact = _opt_obj(message, "contact")
    if isinstance(text, str):
        event = Event("text", text=text)
        kind = "text"
    elif contact is not None:
        owner = contact.get("user_id")
        own = author_id is not None and isinstance(owner, int) and owner == author_id
        event = Event("contact", contact_phone=_str(contact, "phone_number"), contact_own=own)
        kind = "contact"
    else:
        media = _media_kind(message)
        if media is None:
            return UpdatePlan("ignore", update_id, kind="service")
        event = Event("media", media=media)
        kind = "media"
    return UpdatePlan("dispatch", update_id, chat_id, event=event, lang_hint=lang, kind=kind, message=message)


def addressed_to_bot(p: UpdatePlan, username: str | None, bot_id: int | None) -> bool:
    """Group messages we answer: commands, mentions and replies to us; the rest is other people's talk."""
    text = p.group_text
    if text.startswith("/"):
        return True
    if username and f"@{username}".lower() in text.lower():
        return True
    return bool(bot_id and p.reply_to_user == bot_id)
