"""`python -m bot broadcast ...`: broadcasts from the command line (issue 14), on the database directly through
the broadcast service; a running server's engine picks up what changes here within a second or so.

    python -m bot broadcast create --text-zh T --text-en T [--channel telegram|wechat|web] [--lang zh_CN|en]
                                   [--has-open-requests] [--has-plan] [--active-days N] [--at ISO] [--dry-run]
    python -m bot broadcast start|pause|resume|cancel ID
    python -m bot broadcast status ID [--watch]      (--watch: a progress bar until it is done or cancelled)
    python -m bot broadcast list
    python -m bot broadcast report ID [-o FILE.csv]

`--json` after the sub-command prints the service's answer as JSON instead. Exit codes: 0 done, 1 an unknown id
or an action the broadcast's state does not allow, 2 bad input. Every change is written to the staff audit log
as `cli:<login name>`. Nothing here prints a user's number, name or chat id.

`main()` is the command; `run_cli()` is the same command inside a running event loop, writing to the streams it
is given (the tests call it in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from bot.broadcasts import CHANNELS, LANGS, BroadcastError, BroadcastService
from bot.config import Settings
from bot.i18n import Catalog
from bot.staff import audit
from bot.storage import Database, utcnow
from bot.vault import Vault

FINISHED = ("done", "cancelled")
# Bad input exits 2 (as argparse does), an unknown id or the wrong state 1.
EXIT_OF = {"bad_texts": 2, "bad_segment": 2, "bad_schedule": 2, "not_found": 1, "bad_state": 1}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot broadcast",
                                     description="Broadcasts: reminders to many users (admins only).")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="compose a broadcast (a draft; `start` sends it), or --dry-run to count")
    create.add_argument("--text-zh", required=True, metavar="TEXT", help="the Chinese text")
    create.add_argument("--text-en", required=True, metavar="TEXT", help="the English text")
    create.add_argument("--channel", choices=CHANNELS, help="only users of this channel")
    create.add_argument("--lang", choices=LANGS, help="only users who use this language")
    create.add_argument("--has-open-requests", action="store_true", help="only users with unbind requests under way")
    create.add_argument("--has-plan", action="store_true", help="only users with a cancellation plan")
    create.add_argument("--active-days", type=int, metavar="N", help="only users active in the last N days")
    create.add_argument("--at", metavar="ISO", help="send at this time once started, e.g. 2026-12-01T09:00+08:00 "
                                                   "(without an offset: this machine's local time)")
    create.add_argument("--dry-run", action="store_true", help="count the recipients per channel; create nothing")
    for action, text in (("start", "start sending a draft (or schedule it, if it has a time)"),
                         ("pause", "pause a running or scheduled broadcast"), ("resume", "resume a paused one"),
                         ("cancel", "cancel a broadcast; what was sent stays sent")):
        sub.add_parser(action, help=text).add_argument("id", type=int)
    status = sub.add_parser("status", help="where a broadcast stands")
    status.add_argument("id", type=int)
    status.add_argument("--watch", action="store_true", help="a progress bar until it is done or cancelled")
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    sub.add_parser("list", help="the recent broadcasts, newest first")
    report = sub.add_parser("report", help="the report per channel, outcome and reason, as CSV")
    report.add_argument("id", type=int)
    report.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the CSV here (default: stdout)")
    for action_parser in sub.choices.values():
        action_parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    return parser


def main(argv: list[str], settings: Settings | None = None) -> int:
    try:
        return asyncio.run(run_cli(argv, settings))
    except KeyboardInterrupt:
        # Stopping a watch leaves the broadcast as it is.
        return 130


def parse(argv: list[str], out: TextIO, err: TextIO) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse chose (2 for bad input, 0 for --help) once it has written
    its message to `out` (help) or `err` (usage errors)."""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


async def run_cli(argv: list[str], settings: Settings | None = None, out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    """`python -m bot broadcast ARGV` inside the running event loop: its exit code. What it prints goes to `out`
    and `err` (standard output and standard error by default)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = parse(argv, out, err)
    if isinstance(args, int):
        return args
    return await run(args, settings or Settings(), out, err)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (OSError, KeyError):
        return "cli"


def _schedule(raw: str | None) -> str | None:
    """The time as ISO 8601 with its offset; without one, this machine's local time."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BroadcastError("bad_schedule", "use ISO 8601, e.g. 2026-12-01T09:00+08:00") from None
    return (moment if moment.tzinfo else moment.astimezone()).isoformat()


def _segment(args: argparse.Namespace) -> dict[str, Any]:
    segment: dict[str, Any] = {}
    if args.channel:
        segment["channel"] = args.channel
    if args.lang:
        segment["lang"] = args.lang
    if args.has_open_requests:
        segment["has_open_requests"] = True
    if args.has_plan:
        segment["has_plan"] = True
    if args.active_days is not None:
        segment["active_days"] = args.active_days
    return segment


async def run(args: argparse.Namespace, settings: Settings, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    try:
        await db.create_all()
        service = BroadcastService(db, Vault(settings.resolved_secret()), Catalog.load(), settings)
        try:
            return await _run(args, service, db, out, err)
        except BroadcastError as exc:
            print(f"{exc.code}: {exc.detail}" if exc.detail else exc.code, file=err)
            return EXIT_OF.get(exc.code, 1)
    finally:
        await db.close()


async def _audit(db: Database, action: str, detail: str) -> None:
    await audit.record_now(db, None, action, detail, "cli", utcnow(), name=_operator())


async def _run(args: argparse.Namespace, service: BroadcastService, db: Database, out: TextIO,
               err: TextIO) -> int:
    as_json = args.json
    if args.action == "create":
        segment = _segment(args)
        made = await service.create(texts={"zh_CN": args.text_zh, "en": args.text_en}, segment=segment,
                                    dry_run=args.dry_run, scheduled_at=_schedule(args.at), created_by=_operator())
        words = f"segment {', '.join(f'{k}={v}' for k, v in segment.items()) or 'everyone'}; " \
                f"{made.get('recipients', 0)} recipients"
        if args.dry_run:
            await _audit(db, "broadcast_dry_run", words)
        else:
            await _audit(db, "broadcast_create", f"#{made['id']} {words}")
        if as_json:
            print(json.dumps(made, ensure_ascii=False), file=out)
        elif args.dry_run:
            print(_dry_run_text(made), file=out)
        else:
            print(_status_text(made), file=out)
            print(f"start it with: python -m bot broadcast start {made['id']}", file=out)
        return 0
    if args.action in ("start", "pause", "resume", "cancel"):
        state = await getattr(service, args.action)(args.id)
        await _audit(db, f"broadcast_{args.action}", f"#{args.id} → {state['status']}")
        print(json.dumps(state, ensure_ascii=False) if as_json else _status_text(state), file=out)
        return 0
    if args.action == "list":
        recent = await service.recent(50)
        if as_json:
            print(json.dumps(recent, ensure_ascii=False), file=out)
        for item in [] if as_json else recent:
            print(f"#{item['id']}\t{item['status']}\t{item['created_at'] or ''}\t{item['created_by']}\t"
                  f"{_done(item)}/{item['recipients']}", file=out)
        return 0
    if args.action == "report":
        csv_text = await service.report_csv(args.id)
        await _audit(db, "broadcast_report", f"#{args.id}")
        if args.output:
            args.output.write_text(csv_text, encoding="utf-8")
            print(f"report of broadcast #{args.id} written to {args.output}", file=err)
        else:
            out.write(csv_text)
        return 0
    # status
    state = await service.status(args.id)
    if args.watch:
        state = await _watch(service, args.id, state, max(args.interval, 0.05), err)
    print(json.dumps(state, ensure_ascii=False) if as_json else _status_text(state), file=out)
    return 0


def _done(state: dict[str, Any]) -> int:
    return int(state.get("sent", 0)) + int(state.get("failed", 0)) + int(state.get("unreachable", 0))


def _eta(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _status_text(state: dict[str, Any]) -> str:
    lines = [f"broadcast #{state['id']}: {state['status']}"
             + (f" (scheduled for {state['scheduled_at']})" if state.get("scheduled_at") else ""),
             f"  recipients {state['recipients']}: sent {state.get('sent', 0)}, failed {state.get('failed', 0)}, "
             f"unreachable {state.get('unreachable', 0)}, left {state.get('left', state['recipients'])}"]
    if state["status"] == "running":
        lines.append(f"  rate {state.get('rate', 0)}/s, about {_eta(state.get('eta_seconds'))} to go")
    for channel, counts in sorted((state.get("by_channel") or {}).items()):
        lines.append(f"  {channel}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def _dry_run_text(counts: dict[str, Any]) -> str:
    lines = [f"dry run (nothing created): {counts['recipients']} recipients; "
             f"{counts.get('opted_out', 0)} more turned reminders off and are left out"]
    for channel in CHANNELS:
        entry = (counts.get("by_channel") or {}).get(channel)
        if entry is None:
            continue
        line = f"  {channel}: {entry['recipients']}"
        if channel == "wechat":
            line += (f" (reachable now {entry.get('window', 0)}, only by template {entry.get('template', 0)}, "
                     f"not at all {entry.get('unreachable', 0)})")
        elif entry.get("unreachable"):
            line += f" ({entry['unreachable']} unreachable: blocked or unfollowed)"
        lines.append(line)
    return "\n".join(lines)


async def _watch(service: BroadcastService, broadcast_id: int, state: dict[str, Any],
                 interval: float, err: TextIO) -> dict[str, Any]:
    """A rich progress bar on stderr, with the figures on the line below, until the broadcast is done or cancelled
    (Ctrl-C stops watching only)."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
    from rich.text import Text

    console = Console(file=err)
    progress = Progress(TextColumn("#{task.fields[id]} {task.fields[status]}"), BarColumn(bar_width=None),
                        TaskProgressColumn(), MofNCompleteColumn(), console=console, expand=True)

    class Figures:
        def __init__(self) -> None:
            self.state = state

        def __rich__(self) -> Text:
            s = self.state
            eta = _eta(s.get("eta_seconds")) if s["status"] == "running" else "-"
            return Text(f"sent {s.get('sent', 0)} · failed {s.get('failed', 0)} · unreachable "
                        f"{s.get('unreachable', 0)} · left {s.get('left', 0)} · {s.get('rate', 0)}/s · ETA {eta}")

    figures = Figures()

    def update(s: dict[str, Any]) -> None:
        empty_and_done = s["status"] == "done" and not s["recipients"]
        progress.update(task, completed=1 if empty_and_done else _done(s), id=s["id"], status=s["status"])
        figures.state = s

    task = progress.add_task("broadcast", total=max(int(state["recipients"]), 1), id=state["id"],
                             status=state["status"])
    update(state)
    with Live(Group(progress, figures), console=console, refresh_per_second=4, transient=False):
        while state["status"] not in FINISHED:
            await asyncio.sleep(interval)
            state = await service.status(broadcast_id)
            update(state)
    return state
