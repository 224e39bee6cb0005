"""Flows whose full version lands with later work: each answers honestly and returns to the menu."""

from __future__ import annotations

from dialogs.model import Ctx, Handler, Msg, Reply, Step

UPCOMING = ("handoff",)


def starter(name: str) -> Handler:
    def _start(ctx: Ctx) -> Step:
        return Step("@menu", ctx.data, (Reply(Msg(f"upcoming.{name}")),))

    return _start
