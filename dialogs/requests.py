"""My requests: the user's own unbind requests with status and due date. Only ever the asker's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Lines, Localized, Msg, Reply, Step

VIEW = "requests.view"


def start(ctx: Ctx) -> Step:
    return Step(VIEW, ctx.data, (), (Effect("requests.list"),))


def _choices() -> tuple[Choice, ...]:
    return (Choice("refresh", Msg("requests.refresh")), Choice("menu", Msg("common.back_to_menu")))


def _item(item: Mapping[str, Any]) -> Msg:
    platforms = Lines(tuple(
        Msg("requests.platform_line", {"name": Localized(str(p["name_zh"]), str(p["name_en"])),
                                       "status": Msg(f"requests.status.{p['status']}")})
        for p in item.get("platforms", [])
    ))
    if item["status"] in ("done", "rejected", "refused"):
        due = Msg("requests.finished")
    else:
        due = Msg("unbind.due_estimated" if item.get("estimated") else "unbind.due", {"date": str(item["due"])})
    return Msg("requests.item", {"reference": str(item["reference"]),
                                 "status": Msg(f"requests.status.{item['status']}"), "due": due, "lines": platforms})


def _view(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "result" and event.effect == "requests.list":
        items = list(event.result.get("items", []))
        if not items:
            return Step(VIEW, ctx.data, (Reply(Msg("requests.none"), _choices()),))
        replies = [Reply(_item(item)) for item in items[:10]]
        replies.append(Reply(Msg("requests.summary", {"count": len(items)}), _choices()))
        return Step(VIEW, ctx.data, tuple(replies))
    if event.kind == "choice" and event.choice == "refresh":
        return start(ctx)
    if event.kind == "choice" and event.choice == "menu":
        return Step("@menu", ctx.data)
    return Step(VIEW, ctx.data, (Reply(Msg("menu.pick_one"), error=True), Reply(Msg("lookup.next"), _choices())))


FLOW = Flow(name="requests", handlers={VIEW: _view}, edges=(Edge(VIEW, "@menu", "back"),))
PROMPTS = {VIEW: lambda ctx: Reply(Msg("lookup.next"), _choices())}
