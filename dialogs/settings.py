"""Settings: language, reminders on/off, and deleting one's own data."""

from __future__ import annotations

from dialogs.model import LANGS, Choice, Ctx, Edge, Effect, Flow, MenuEntry, Msg, Reply, Step
from dialogs.results import Forgotten, answer

SETTINGS = "settings"
LANGUAGE = "settings.language"
FORGET = "settings.forget"


def _reminders_on(ctx: Ctx) -> bool:
    return ctx.data.get("reminders", True) is not False


def _settings_reply(ctx: Ctx) -> Reply:
    reminders = Msg("settings.reminders_off") if _reminders_on(ctx) else Msg("settings.reminders_on")
    return Reply(
        Msg("settings.prompt", {"language": Msg(f"language.{ctx.lang}"),
                                "reminders": Msg("settings.state_on" if _reminders_on(ctx) else "settings.state_off")}),
        (
            Choice("language", Msg("settings.language")),
            Choice("reminders", reminders),
            Choice("forget", Msg("settings.forget")),
            Choice("menu", Msg("common.back_to_menu")),
        ),
    )


def _language_reply() -> Reply:
    choices = tuple(Choice(lang, Msg(f"language.{lang}")) for lang in LANGS)
    return Reply(Msg("settings.language_prompt"), (*choices, Choice("menu", Msg("common.back_to_menu"))))


def _forget_reply() -> Reply:
    return Reply(Msg("settings.forget_confirm"),
                 (Choice("confirm", Msg("settings.forget_yes")), Choice("menu", Msg("common.back_to_menu"))))


def start(ctx: Ctx) -> Step:
    return Step(SETTINGS, ctx.data, (_settings_reply(ctx),))


def start_language(ctx: Ctx) -> Step:
    return Step(LANGUAGE, ctx.data, (_language_reply(),))


def start_forget(ctx: Ctx) -> Step:
    return Step(FORGET, ctx.data, (_forget_reply(),))


def stop_reminders(ctx: Ctx) -> Step:
    return Step("@menu", ctx.with_data(reminders=False), (Reply(Msg("settings.reminders_stopped")),),
                (Effect("settings.reminders", {"on": False}),))


def _settings(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice":
        if event.choice == "language":
            return start_language(ctx)
        if event.choice == "reminders":
            on = not _reminders_on(ctx)
            data = ctx.with_data(reminders=on)
            note = Msg("settings.reminders_now_on" if on else "settings.reminders_now_off")
            return Step(SETTINGS, data, (Reply(note), _settings_reply(Ctx(SETTINGS, data, event))),
                        (Effect("settings.reminders", {"on": on}),))
        if event.choice == "forget":
            return start_forget(ctx)
        if event.choice == "menu":
            return Step("@menu", ctx.data)
    return Step(SETTINGS, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _settings_reply(ctx)))


def _language(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice in LANGS:
        data = ctx.with_data(lang=event.choice)
        return Step("@menu", data, (Reply(Msg("settings.language_set")),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(LANGUAGE, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _language_reply()))


def _forget(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "data.forget":
        kept = int(answer(event, Forgotten).get("kept_requests", 0))
        data = {key: ctx.data[key] for key in ("lang",) if key in ctx.data}
        note = Msg("settings.forgotten_kept", {"count": kept}) if kept else Msg("settings.forgotten")
        return Step("@menu", data, (Reply(note),))
    if event.kind == "choice" and event.choice == "confirm":
        return Step(FORGET, ctx.data, (), (Effect("data.forget"),))
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(FORGET, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _forget_reply()))


PROMPTS = {
    SETTINGS: _settings_reply,
    LANGUAGE: lambda ctx: _language_reply(),
    FORGET: lambda ctx: _forget_reply(),
}

FLOW = Flow(
    name="settings",
    handlers={SETTINGS: _settings, LANGUAGE: _language, FORGET: _forget},
    edges=(
        Edge(SETTINGS, LANGUAGE, "language"),
        Edge(SETTINGS, FORGET, "delete my data"),
        Edge(SETTINGS, "@menu", "back"),
        Edge(LANGUAGE, "@menu", "picked"),
        Edge(FORGET, "@menu", "deleted / back"),
    ),
    starters={"settings": start, "language": start_language, "forget": start_forget},
    entries=(Edge("@settings", SETTINGS, ""), Edge("@language", LANGUAGE, "typed intent"),
             Edge("@forget", FORGET, "typed intent (asks first)")),
    prompts=PROMPTS,
    menu=MenuEntry("settings", "settings", 90),
)
