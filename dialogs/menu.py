"""The main menu: every flow of the mission starts here, and every global command comes back here."""

from __future__ import annotations

from functools import cache

from dialogs import registry
from dialogs.model import Choice, Ctx, Edge, Flow, Msg, Reply, Step

MENU = "menu"



@cache
def menu_reply() -> Reply:
    """Built once from every flow's menu line (dialogs/registry.py): replies are immutable, and the menu is the
    most common reply of all."""
    return Reply(Msg("menu.prompt"),
                 tuple(Choice(entry.choice, Msg(f"menu.{entry.choice}")) for entry in registry.menu_entries()))


def show_menu(ctx: Ctx, *before: Reply) -> Step:
    data = ctx.with_data(**dict.fromkeys(registry.errand_keys()))
    return Step(MENU, data, (*before, menu_reply()))


def welcome(ctx: Ctx) -> Step:
    return show_menu(ctx, Reply(Msg("welcome")))


def _menu(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice":
        for entry in registry.menu_entries():
            if event.choice == entry.choice:
                return Step(f"@{entry.starter}", ctx.data)
    return Step(MENU, ctx.data, (Reply(Msg("menu.pick_one"), error=True), menu_reply()))


# The menu's own edges (to each flow's starter) are drawn by the machine from the flows' menu lines.
FLOW = Flow(
    name="menu",
    handlers={MENU: _menu},
    edges=(),
    starters={"menu": lambda ctx: show_menu(ctx)},
    entries=(Edge("@menu", MENU, ""),),
    prompts={MENU: lambda ctx: menu_reply()},
    # Where a verification returns to (`@goal`), and what the user typed before it: both per errand.
    errand_keys=("goal", "typed_phone"),
)
