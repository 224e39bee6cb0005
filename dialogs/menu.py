"""The main menu: every flow of the mission starts here, and every global command comes back here."""

from __future__ import annotations

from dialogs.model import Choice, Ctx, Edge, Flow, Msg, Reply, Step

MENU = "menu"

MENU_ITEMS: tuple[tuple[str, str], ...] = (
    ("lookup", "lookup"),
    ("unbind", "unbind"),
    ("recycle", "recycle"),
    ("tag", "tag"),
    ("plan", "plan"),
    ("requests", "requests"),
    ("guide", "guide"),
    ("human", "handoff"),
    ("settings", "settings"),
)

# Data that belongs to one errand and is dropped when the user goes back to the menu.
ERRAND_KEYS = ("goal", "challenge_id", "phone_masked", "realname_pending", "name_masked", "unbind_selected",
               "guide_list", "guide_platform", "plan_item")


# Built once: replies are immutable, and the menu is the most common reply of all.
_MENU_REPLY = Reply(Msg("menu.prompt"),
                    tuple(Choice(choice_id, Msg(f"menu.{choice_id}")) for choice_id, _ in MENU_ITEMS))


def menu_reply() -> Reply:
    return _MENU_REPLY


def show_menu(ctx: Ctx, *before: Reply) -> Step:
    data = ctx.with_data(**dict.fromkeys(ERRAND_KEYS))
    return Step(MENU, data, (*before, menu_reply()))


def welcome(ctx: Ctx) -> Step:
    return show_menu(ctx, Reply(Msg("welcome")))


def _menu(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice":
        for choice_id, state in MENU_ITEMS:
            if event.choice == choice_id:
                return Step(f"@{state}", ctx.data)
    return Step(MENU, ctx.data, (Reply(Msg("menu.pick_one"), error=True), menu_reply()))


FLOW = Flow(
    name="menu",
    handlers={MENU: _menu},
    edges=tuple(Edge(MENU, f"@{state}", choice_id) for choice_id, state in MENU_ITEMS),
)
PROMPTS = {MENU: lambda ctx: menu_reply()}
