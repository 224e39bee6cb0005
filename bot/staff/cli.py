"""`python -m bot staff add NAME --role staff|admin`, `list`, `disable NAME`, `enable NAME`, `passwd NAME`,
`link NAME TELEGRAM_USER_ID` (for the Telegram staff group).

Passwords are read from standard input (one line), never from the command line, where `ps` and shell
history would keep them. Prints nothing secret.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from sqlalchemy.exc import IntegrityError

from bot.config import Settings
from bot.staff.auth import ROLES, StaffAuth, valid_name
from bot.storage import Database
from bot.vault import Vault

MIN_PASSWORD = 10


def _read_password(stdin: TextIO) -> str | None:
    if stdin.isatty():
        import getpass

        return getpass.getpass("password: ")
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def main(argv: list[str], settings: Settings | None = None, stdin: TextIO = sys.stdin) -> int:
    return asyncio.run(run(argv, settings, stdin))


async def run(argv: list[str], settings: Settings | None = None, stdin: TextIO = sys.stdin) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot staff", description="Staff console accounts.")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create an account; the password is read from standard input")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="staff")
    sub.add_parser("list", help="list accounts")
    link = sub.add_parser("link", help="link an account to its Telegram user id, for the staff group (- unlinks)")
    link.add_argument("name")
    link.add_argument("telegram_user_id")
    for action, text in (("disable", "disable an account and end its sessions"), ("enable", "enable an account"),
                         ("passwd", "set a new password, read from standard input; ends its sessions")):
        sub.add_parser(action, help=text).add_argument("name")
    args = parser.parse_args(argv)
    return await _run(args, settings or Settings(), stdin)


async def _run(args: argparse.Namespace, settings: Settings, stdin: TextIO) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    try:
        await db.create_all()
        auth = StaffAuth(db, Vault(settings.resolved_secret()).session_key)
        if args.action == "list":
            for account in await auth.accounts():
                state = "active" if account.active else "disabled"
                last = account.last_login_at.isoformat(timespec="minutes") if account.last_login_at else "-"
                print(f"{account.name}\t{account.role}\t{state}\tlast login {last}")
            return 0
        if args.action == "link":
            raw = args.telegram_user_id
            if raw != "-" and not raw.lstrip("-").isdigit():
                print("TELEGRAM_USER_ID is the numeric id of the staff member's Telegram account (or - to unlink)",
                      file=sys.stderr)
                return 2
            try:
                linked = await auth.link_telegram(args.name, None if raw == "-" else int(raw))
            except IntegrityError:
                print("that Telegram account is linked to another staff account already", file=sys.stderr)
                return 1
            if not linked:
                print(f"no staff account named {args.name!r}", file=sys.stderr)
                return 1
            print(f"{args.name}: " + ("unlinked from Telegram" if raw == "-" else "linked to Telegram"))
            return 0
        if args.action in ("disable", "enable"):
            if not await auth.set_active(args.name, args.action == "enable"):
                print(f"no staff account named {args.name!r}", file=sys.stderr)
                return 1
            print(f"{args.name}: {args.action}d")
            return 0
        if args.action == "add" and not valid_name(args.name):
            print("the name must be 1-64 printable characters without surrounding spaces", file=sys.stderr)
            return 2
        password = _read_password(stdin)
        if password is None or len(password) < MIN_PASSWORD:
            print(f"the password (one line on standard input) must have at least {MIN_PASSWORD} characters",
                  file=sys.stderr)
            return 2
        if args.action == "passwd":
            if not await auth.set_password(args.name, password):
                print(f"no staff account named {args.name!r}", file=sys.stderr)
                return 1
            print(f"{args.name}: password changed; open sessions ended")
            return 0
        try:
            member = await auth.add(args.name, password, args.role)
        except IntegrityError:
            print(f"a staff account named {args.name!r} exists already (use passwd to change its password)",
                  file=sys.stderr)
            return 1
        print(f"{member.name}: {member.role} account created")
        return 0
    finally:
        await db.close()
