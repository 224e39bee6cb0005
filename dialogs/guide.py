"""Guidance for platforms nobody can unbind remotely: the in-app path, a difficulty, and a prefilled
PIPL Art. 47 deletion request plus new-holder statement the user can copy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dialogs.model import Choice, Ctx, Edge, Effect, Flow, Localized, MenuEntry, Msg, Param, Reply, Step
from dialogs.results import GuideList, GuidePlatform, LetterNumber, answer
from dialogs.verify import verified_recently

CATEGORY = "guide.category"
PICK = "guide.pick"
DETAIL = "guide.detail"

# Mirrors integrations/platform_directory.CATEGORIES (a test keeps them equal).
CATEGORIES = ("social", "news", "video", "payment", "bank", "shopping", "local_services", "travel", "railway",
              "cloud_drive", "mail", "education", "device_id", "securities")


def start(ctx: Ctx) -> Step:
    manual = _manual(ctx)
    if manual:
        return Step(PICK, ctx.with_data(guide_list=manual), (_pick_reply(manual, intro=True),))
    return Step(CATEGORY, ctx.data, (_category_reply(),))


def _manual(ctx: Ctx) -> list[Mapping[str, Any]]:
    options = ctx.data.get("unbind_options") or {}
    return [{"id": str(i["platform"]), "name_zh": str(i["name_zh"]), "name_en": str(i["name_en"])}
            for i in options.get("manual", [])]


def _category_reply() -> Reply:
    return Reply(Msg("guide.categories"),
                 (*(Choice(f"c:{c}", Msg(f"category.{c}")) for c in CATEGORIES),
                  Choice("menu", Msg("common.back_to_menu"))))


def _pick_reply(items: Sequence[Mapping[str, Any]], intro: bool = False) -> Reply:
    choices = tuple(Choice(f"g:{i['id']}", Msg("guide.platform_choice",
                                                {"name": Localized(str(i["name_zh"]), str(i["name_en"]))}))
                    for i in items[:30])
    return Reply(Msg("guide.pick_manual" if intro else "guide.pick", {"count": len(items)}),
                 (*choices, Choice("browse", Msg("guide.browse")), Choice("menu", Msg("common.back_to_menu"))))


def _detail_reply(ctx: Ctx) -> Reply:
    platform = ctx.data.get("guide_platform") or {}
    path: Param = Localized(str(platform.get("path_zh", "")), str(platform.get("path_en", "")))
    if not platform.get("path_zh") or not platform.get("path_en"):
        path = Msg("guide.path_unknown")
    notes: Param = Localized(str(platform.get("notes_zh", "")), str(platform.get("notes_en", "")))
    key = "guide.detail_registry" if platform.get("registry_unbind") else "guide.detail"
    return Reply(
        Msg(key, {"name": Localized(str(platform.get("name_zh", "")), str(platform.get("name_en", ""))),
                  "difficulty": Msg(f"difficulty.{platform.get('difficulty', 'medium')}"),
                  "path": path, "notes": notes}),
        (Choice("letter", Msg("guide.letter_button")),
         *((Choice("list", Msg("guide.back_to_list")),) if ctx.data.get("guide_list") else ()),
         Choice("browse", Msg("guide.browse")), Choice("menu", Msg("common.back_to_menu"))),
    )


def _letter(ctx: Ctx, phone: str = "") -> Reply:
    """The letter carries the holder's full number when they verified it just now: it is their own, and a
    platform cannot act on a masked one. Only its masked form is ever stored (`kept`)."""
    platform = ctx.data.get("guide_platform") or {}
    verified = ctx.data.get("verified") or {}
    realname = ctx.data.get("realname") or {}
    masked: Param = str(verified.get("masked") or "") or Msg("guide.letter_your_number")
    since: Param = str(realname.get("tenure_start") or "")[:7] or Msg("guide.letter_since_unknown")
    params: dict[str, Param] = {"name": Localized(str(platform.get("name_zh", "")), str(platform.get("name_en", ""))),
                                "masked": masked, "since": since, "today": ctx.event.now.date().isoformat()}
    kept = Msg("guide.letter_kept", {**params})
    full = Msg("guide.letter", {**params, "masked": phone}) if phone else None
    back = (Choice("detail", Msg("guide.back_to_platform")),
            *((Choice("list", Msg("guide.back_to_list")),) if ctx.data.get("guide_list") else ()),
            Choice("menu", Msg("common.back_to_menu")))
    if full is None:
        return Reply(Msg("guide.letter_masked", {"letter": Msg("guide.letter", params)}), back)
    return Reply(full, back, kept=kept)


def _common(ctx: Ctx, state: str) -> Step | None:
    event = ctx.event
    if event.kind == "result" and event.effect == "guide.list":
        items = list(answer(event, GuideList).get("platforms", []))
        return Step(PICK, ctx.with_data(guide_list=items), (_pick_reply(items),))
    if event.kind == "result" and event.effect == "guide.platform":
        found = answer(event, GuidePlatform)
        if not found.get("ok"):
            return Step(CATEGORY, ctx.data, (Reply(Msg("guide.not_found"), error=True), _category_reply()))
        data = ctx.with_data(guide_platform=dict(found["platform"]))
        return Step(DETAIL, data, (_detail_reply(Ctx(DETAIL, data, event)),))
    if event.kind == "choice":
        if event.choice.startswith("c:") and event.choice[2:] in CATEGORIES:
            return Step(state, ctx.data, (), (Effect("guide.list", {"category": event.choice[2:]}),))
        if event.choice.startswith("g:"):
            return Step(state, ctx.data, (), (Effect("guide.platform", {"id": event.choice[2:]}),))
        if event.choice == "browse":
            return Step(CATEGORY, ctx.data, (_category_reply(),))
        if event.choice == "menu":
            return Step("@menu", ctx.with_data(guide_list=None, guide_platform=None))
    return None


def _category(ctx: Ctx) -> Step:
    return _common(ctx, CATEGORY) or Step(CATEGORY, ctx.data, (Reply(Msg("menu.pick_one"), error=True),
                                                               _category_reply()))


def _pick(ctx: Ctx) -> Step:
    items = list(ctx.data.get("guide_list") or [])
    return _common(ctx, PICK) or Step(PICK, ctx.data, (Reply(Msg("menu.pick_one"), error=True), _pick_reply(items)))


def _detail(ctx: Ctx) -> Step:
    event = ctx.event
    if event.kind == "choice" and event.choice == "letter":
        if verified_recently(ctx):
            verified = ctx.data.get("verified") or {}
            return Step(DETAIL, ctx.data, (), (Effect("guide.letter", {"verification_id": verified.get("id")}),))
        return Step(DETAIL, ctx.data, (_letter(ctx),))
    if event.kind == "result" and event.effect == "guide.letter":
        return Step(DETAIL, ctx.data, (_letter(ctx, str(answer(event, LetterNumber).get("phone") or "")),))
    if event.kind == "choice" and event.choice == "detail":
        return Step(DETAIL, ctx.data, (_detail_reply(ctx),))
    if event.kind == "choice" and event.choice == "list" and ctx.data.get("guide_list"):
        return Step(PICK, ctx.data, (_pick_reply(list(ctx.data["guide_list"])),))
    return _common(ctx, DETAIL) or Step(DETAIL, ctx.data, (Reply(Msg("menu.pick_one"), error=True),
                                                           _detail_reply(ctx)))


PROMPTS = {
    CATEGORY: lambda ctx: _category_reply(),
    PICK: lambda ctx: _pick_reply(list(ctx.data.get("guide_list") or [])),
    DETAIL: _detail_reply,
}

FLOW = Flow(
    name="guide",
    handlers={CATEGORY: _category, PICK: _pick, DETAIL: _detail},
    edges=(
        Edge(CATEGORY, PICK, "category"),
        Edge(CATEGORY, DETAIL, "platform"),
        Edge(CATEGORY, "@menu", "back"),
        Edge(PICK, DETAIL, "platform"),
        Edge(PICK, CATEGORY, "browse"),
        Edge(PICK, "@menu", "back"),
        Edge(DETAIL, CATEGORY, "browse"),
        Edge(DETAIL, PICK, "list"),
        Edge(DETAIL, "@menu", "back"),
    ),
    starters={"guide": start},
    entries=(Edge("@guide", PICK, "manual platforms known"), Edge("@guide", CATEGORY, "browse")),
    prompts=PROMPTS,
    menu=MenuEntry("guide", "guide", 70),
    errand_keys=("guide_list", "guide_platform"),
)
