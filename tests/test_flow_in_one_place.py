"""A flow is one module plus its catalog entries: added to a copy of the tree with no other edit, a test-only
flow shows in the main menu (in both languages), is reachable from it, and is drawn in the diagram.

This is the worked example of CONTRIBUTING.md, kept honest by running it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOW_MODULE = '''"""A call-back request: the user leaves a time, staff call back (test-only example flow)."""

from __future__ import annotations

from dialogs.menu import show_menu
from dialogs.model import Choice, Ctx, Edge, Flow, MenuEntry, Msg, Reply, Step

ASK = "callback.ask"


def start(ctx: Ctx) -> Step:
    return Step(ASK, ctx.data, (_ask(),))


def _ask() -> Reply:
    return Reply(Msg("callback.ask"), (Choice("menu", Msg("common.back_to_menu")),))


def _answer(ctx: Ctx) -> Step:
    if ctx.event.kind == "text":
        return show_menu(ctx, Reply(Msg("callback.noted", {"when": ctx.event.text})))
    return show_menu(ctx)


PROMPTS = {ASK: lambda ctx: _ask()}

FLOW = Flow(
    name="callback",
    handlers={ASK: _answer},
    edges=(Edge(ASK, "menu", "time given / back"),),
    starters={"callback": start},
    entries=(Edge("@callback", ASK, ""),),
    prompts=PROMPTS,
    menu=MenuEntry("callback", "callback", 85),
    errand_keys=("callback_when",),
)
'''

CATALOG = {
    "zh_CN": {"menu.callback": "预约回电", "callback.ask": "您希望什么时候接到电话？",
              "callback.noted": "好的，我们会在 {when} 给您回电。"},
    "en": {"menu.callback": "Book a call-back", "callback.ask": "When should we call you back?",
           "callback.noted": "Noted: we will call you back {when}."},
}

PROBE = '''
import json
from bot.i18n import Catalog
from dialogs import machine
from dialogs.model import Event

catalog = Catalog.load()
first = machine.step("", {}, Event("command", command="start"))
labels = {lang: [catalog.render(c.label, lang) for c in first.replies[-1].choices] for lang in ("zh_CN", "en")}
picked = machine.step(first.state, first.data, Event("choice", choice="callback"))
answered = machine.step(picked.state, picked.data, Event("text", text="明天上午"))
print(json.dumps({"labels": labels, "picked": picked.state, "asked": catalog.render(picked.replies[-1].msg, "zh_CN"),
                  "answered": answered.state, "said": catalog.render(answered.replies[0].msg, "zh_CN"),
                  "diagram": machine.mermaid()}, ensure_ascii=False))
'''


def test_a_flow_added_as_one_module_shows_in_the_menu_and_the_diagram(tmp_path: Path) -> None:
    for package in ("domain", "dialogs", "bot", "integrations", "locales"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "*.sqlite3"))
    (tmp_path / "dialogs" / "callback.py").write_text(FLOW_MODULE)
    for lang, entries in CATALOG.items():
        po = tmp_path / "locales" / lang / "LC_MESSAGES" / "messages.po"
        po.write_text(po.read_text() + "".join(f'\nmsgid "{key}"\nmsgstr "{text}"\n' for key, text in entries.items()))
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    assert "预约回电" in seen["labels"]["zh_CN"] and "Book a call-back" in seen["labels"]["en"]
    assert seen["labels"]["zh_CN"].index("预约回电") == len(seen["labels"]["zh_CN"]) - 2, "ordered by its menu line"
    assert (seen["picked"], seen["asked"]) == ("callback.ask", "您希望什么时候接到电话？")
    assert (seen["answered"], seen["said"]) == ("menu", "好的，我们会在 明天上午 给您回电。")
    assert "%% flow: callback" in seen["diagram"]
    assert "menu --> callback_start: callback" in seen["diagram"]
    assert 'state "callback.ask" as callback_ask' in seen["diagram"]


def test_the_real_tree_declares_every_flow_in_its_module() -> None:
    from dialogs import machine, registry

    names = {flow.name for flow in registry.flows()}
    assert {"menu", "verify", "realname", "lookup", "unbind", "requests", "guide", "recycle", "tag", "plan",
            "settings", "handoff"} <= names
    # Every starter's entries are declared by the flow that owns the starter.
    for flow in registry.flows():
        for name in flow.starters:
            assert any(edge.source == f"@{name}" for edge in flow.entries), (flow.name, name)
    assert set(machine.GOALS) == {"lookup", "unbind", "tag", "plan", "requests"}
