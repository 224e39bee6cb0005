"""The vocabulary of the conversation: events in, replies and effects out. Pure data, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Lang = Literal["zh_CN", "en"]
LANGS: tuple[Lang, ...] = ("zh_CN", "en")
DEFAULT_LANG: Lang = "zh_CN"


@dataclass(frozen=True)
class Localized:
    """A name that comes from outside the catalog (a platform's name) in both languages."""

    zh_CN: str
    en: str


@dataclass(frozen=True)
class Msg:
    """A catalog key plus parameters; parameters may nest further messages."""

    key: str
    params: Mapping[str, Param] = field(default_factory=dict)


@dataclass(frozen=True)
class Lines:
    """Several parameters rendered one per line."""

    items: tuple[Param, ...]


Param = str | int | Msg | Localized | Lines


@dataclass(frozen=True)
class Choice:
    id: str
    label: Msg


@dataclass(frozen=True)
class Reply:
    msg: Msg
    choices: tuple[Choice, ...] = ()
    # Ask the channel for the user's own phone number (Telegram's request_contact button).
    request_contact: bool = False
    # The reply answers bad input: channels may style it as an inline error.
    error: bool = False
    # A date picker is offered where the channel can draw one.
    date_picker: bool = False
    # False when the text numbers its own items and the labels carry those numbers: channels must not number
    # the buttons again, or "10" would mean two things (issue 12, finding 1).
    numbered: bool = True
    # What the answer to this prompt is (phone, code, name, id_number): the web chat picks a numeric keypad or
    # one-time-code autofill for it, and masks the user's own bubble once a name or ID number is sent.
    expects: str = ""
    # What is stored once delivered, when `msg` carries something that must not be kept (the holder's own full
    # number in their letter to a platform): the outbox and a replayed answer get this form instead.
    kept: Msg | None = None


@dataclass(frozen=True)
class Effect:
    """Work the runner does outside the machine; its outcome comes back as a `result` event."""

    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)


EventKind = Literal["text", "choice", "command", "contact", "media", "result"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    text: str = ""
    choice: str = ""
    # Normalised global command: start, menu, help, language, human, forget, stop, check.
    command: str = ""
    command_arg: str = ""
    # A shared contact: the phone and whether the channel vouches it is the sender's own.
    contact_phone: str = ""
    contact_own: bool = False
    # Media kind for non-text messages: photo, sticker, voice, document, location, video, link.
    media: str = ""
    # For `result` events: the effect kind and its outcome.
    effect: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Step:
    state: str
    data: Mapping[str, Any]
    replies: tuple[Reply, ...] = ()
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class Ctx:
    """What a handler sees: the current state, its data and the event."""

    state: str
    data: Mapping[str, Any]
    event: Event

    @property
    def lang(self) -> Lang:
        value = self.data.get("lang")
        return value if value in LANGS else DEFAULT_LANG

    def with_data(self, **changes: Any) -> dict[str, Any]:
        merged = dict(self.data)
        for key, value in changes.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged


Handler = Callable[[Ctx], Step]


@dataclass(frozen=True)
class Edge:
    """A declared transition; the diagram is drawn from these and the engine enforces them."""

    source: str
    target: str
    label: str


Prompt = Callable[[Ctx], Reply]


@dataclass(frozen=True)
class MenuEntry:
    """A flow's line in the main menu: the choice (its label is the catalog key `menu.<choice>`), the starter
    it leads to, and its place (lower first)."""

    choice: str
    starter: str
    order: int


@dataclass(frozen=True)
class Flow:
    """Everything the machine needs to know of one flow, declared in the flow's own module: adding a flow is
    adding a module (and its catalog entries), found by dialogs/registry.py."""

    name: str
    handlers: Mapping[str, Handler]
    edges: tuple[Edge, ...]
    # Pseudo-states this flow starts (`@name` -> its starter) and where each may lead (drawn and enforced).
    starters: Mapping[str, Handler] = field(default_factory=dict)
    entries: tuple[Edge, ...] = ()
    # What to show again in each state after bad input or /help.
    prompts: Mapping[str, Prompt] = field(default_factory=dict)
    menu: MenuEntry | None = None
    # Starters a verification may return to when the user came for them (`@goal`).
    goals: tuple[str, ...] = ()
    # Conversation data that belongs to one errand of this flow, dropped on the way back to the menu.
    errand_keys: tuple[str, ...] = ()
