"""The escalation ladder for a rejected or overdue unbind request: the platform's own appeal, then the carrier's
complaint line, then the MIIT telecom user complaint service (12300). Pure: dates in, rungs and messages out.

Rules (DOMAIN.md, "When a platform says no"): 12300 takes a complaint only after the operator had it and did not
answer within 15 days or did not satisfy, and it covers the carrier, not an internet platform. How long to give a
platform's own appeal is the platform's to say (the directory's `appeal_days`); where it says nothing we assume a
week, and the README lists that as an assumption.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from dialogs.model import Lines, Localized, Msg, Param

RUNGS = ("platform", "carrier", "miit")
# 电信用户申诉处理办法: the operator must have had the complaint for 15 days (or answered unsatisfactorily).
CARRIER_DAYS = 15
DEFAULT_APPEAL_DAYS = 7
_ENUM_COMMA = chr(0x3001)  # the Chinese list comma; chr() keeps CJK text out of code literals
CARRIER_LINES: Mapping[str, str] = {"china_mobile": "10086", "china_unicom": "10010", "china_telecom": "10000",
                                    "china_broadnet": "10099"}


@dataclass(frozen=True)
class Ladder:
    started: date
    carrier_opens: date
    miit_opens: date

    def rung(self, today: date) -> int:
        """1, 2 or 3: the highest rung open on `today` (Beijing's calendar day)."""
        if today >= self.miit_opens:
            return 3
        if today >= self.carrier_opens:
            return 2
        return 1

    def next_opens(self, today: date) -> date | None:
        for opens in (self.carrier_opens, self.miit_opens):
            if today < opens:
                return opens
        return None


def ladder(started: date, appeal_days: int = DEFAULT_APPEAL_DAYS) -> Ladder:
    carrier = started + timedelta(days=max(1, appeal_days))
    return Ladder(started, carrier, carrier + timedelta(days=CARRIER_DAYS))


def needs_ladder(request: Mapping[str, Any], today: date) -> date | None:
    """When the ladder starts for this request: the day it was rejected, or the day after it fell overdue."""
    if any(p.get("status") == "rejected" for p in request.get("platforms", [])):
        finished = str(request.get("finished_on") or "")
        return date.fromisoformat(finished) if finished else today
    if request.get("status") in ("submitted", "processing", "queued"):
        due = date.fromisoformat(str(request["due"]))
        if today > due:
            return due + timedelta(days=1)
    return None


def _name(platform: Mapping[str, Any]) -> Localized:
    return Localized(str(platform.get("name_zh", "")), str(platform.get("name_en", "")))


def stuck_platforms(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    platforms = list(request.get("platforms", []))
    rejected = [p for p in platforms if p.get("status") == "rejected"]
    return rejected or [p for p in platforms if p.get("status") in ("submitted", "processing", "queued")]


def appeal_days(request: Mapping[str, Any]) -> int:
    days = [int(p.get("appeal_days") or DEFAULT_APPEAL_DAYS) for p in stuck_platforms(request)]
    return max(days) if days else DEFAULT_APPEAL_DAYS


def status_line(request: Mapping[str, Any], today: date) -> Msg | None:
    """One line for the tracker: which rung the request is on and when the next one opens."""
    started = needs_ladder(request, today)
    if started is None:
        return None
    steps = ladder(started, appeal_days(request))
    rung = steps.rung(today)
    opens = steps.next_opens(today)
    following: Param = Msg("escalation.next_opens", {"date": opens.isoformat(), "n": rung + 1}) if opens else Msg(
        "escalation.last_rung")
    return Msg("escalation.on_rung", {"n": rung, "what": Msg(f"escalation.rung.{RUNGS[rung - 1]}"),
                                      "next": following})


def detail(request: Mapping[str, Any], carrier: str, masked: str, today: date) -> Msg:
    """The whole ladder for one request, with the carrier complaint written out for the user to send."""
    started = needs_ladder(request, today) or today
    steps = ladder(started, appeal_days(request))
    rung = steps.rung(today)
    stuck = stuck_platforms(request)
    appeals = tuple(
        Msg("escalation.appeal_line", {"name": _name(p), "where": Localized(str(p["appeal_zh"]), str(p["appeal_en"]))})
        if p.get("appeal_zh") and p.get("appeal_en") else Msg("escalation.appeal_unknown", {"name": _name(p)})
        for p in stuck)
    line: Param = CARRIER_LINES.get(carrier, "") or Msg("escalation.carrier_unknown")
    carrier_name: Param = Msg(f"carrier.{carrier}") if carrier in CARRIER_LINES else Msg(
        "escalation.your_carrier")
    names = Localized(_ENUM_COMMA.join(str(p.get("name_zh", "")) for p in stuck) if stuck else "",
                      ", ".join(str(p.get("name_en", "")) for p in stuck) if stuck else "")
    reasons = tuple(Msg("escalation.reason_line", {"name": _name(p), "reason": Msg(
        f"unbind.reason.{p['reason']}" if p.get("reason") in REASONS else "unbind.reason.other")})
                    for p in stuck if p.get("status") == "rejected")
    return Msg("escalation.detail", {
        "reference": str(request.get("reference", "")),
        "reasons": Lines(reasons) if reasons else Msg("escalation.overdue", {"due": str(request.get("due", ""))}),
        "now": rung,
        "appeals": Lines(appeals),
        "carrier_opens": steps.carrier_opens.isoformat(),
        "carrier": carrier_name,
        "line": line,
        "complaint": Msg("escalation.carrier_text", {"masked": masked, "names": names,
                                                     "reference": str(request.get("reference", "")),
                                                     "started": started.isoformat()}),
        "miit_opens": steps.miit_opens.isoformat(),
    })


REASONS = ("account_already_closed", "identity_check_failed", "tenure_changed", "current_tenure", "not_bound",
           "unsupported")
