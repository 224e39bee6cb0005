"""Finds the flows: every module in this package that declares `FLOW`, in module-name order.

A new flow is one module plus its catalog entries; the machine, the menu and the diagram pick it up from its
`Flow` declaration (starters, entries, prompts, menu line, goals, errand data). Pure: importing modules of this
package is all it does, once.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from dialogs.model import Flow, MenuEntry


@cache
def flows() -> tuple[Flow, ...]:
    import dialogs

    found: list[Flow] = []
    for info in sorted(pkgutil.iter_modules(dialogs.__path__), key=lambda i: i.name):
        if info.name in ("machine", "registry"):
            continue
        flow = getattr(importlib.import_module(f"dialogs.{info.name}"), "FLOW", None)
        if isinstance(flow, Flow):
            found.append(flow)
    names = [flow.name for flow in found]
    duplicated = {name for name in names if names.count(name) > 1}
    if duplicated:
        raise RuntimeError(f"two flows share a name: {sorted(duplicated)}")
    return tuple(found)


@cache
def menu_entries() -> tuple[MenuEntry, ...]:
    """The main menu's lines, in their order."""
    entries = [flow.menu for flow in flows() if flow.menu is not None]
    return tuple(sorted(entries, key=lambda entry: (entry.order, entry.choice)))


@cache
def errand_keys() -> tuple[str, ...]:
    """Every flow's errand data: what going back to the menu forgets."""
    return tuple(dict.fromkeys(key for flow in flows() for key in flow.errand_keys))
