"""The tenure rule: an unbind request covers only bindings made before the requester's 开户时间.

Pure. Month granularity is conservative: a binding in the same month as the tenure start is never covered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any


def before_tenure(bound_month: str, tenure_start: date) -> bool:
    return bound_month < tenure_start.strftime("%Y-%m")


def eligible_platforms(bindings: Iterable[Mapping[str, Any]], tenure_start: date,
                       unbindable: Iterable[str], requested: Iterable[str] | None = None) -> list[str]:
    """Platforms that may be requested: previous tenure, strictly earlier month, registry-supported."""
    allowed = set(unbindable)
    wanted = None if requested is None else set(requested)
    chosen: list[str] = []
    for binding in bindings:
        platform = str(binding["platform"])
        if (binding.get("tenure") == "previous" and before_tenure(str(binding["bound_month"]), tenure_start)
                and platform in allowed and (wanted is None or platform in wanted) and platform not in chosen):
            chosen.append(platform)
    return chosen
