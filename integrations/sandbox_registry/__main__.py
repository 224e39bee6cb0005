"""Serves the sandbox registry on its own: `python -m integrations.sandbox_registry --port 8090 --token T`.

Standalone, it always asks callers for a bearer token (`--token` or SANDBOX_REGISTRY_TOKEN; the bot sends it
as REGISTRY_TOKEN): its API answers holder checks and files unbind requests for anyone who can reach it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from integrations.sandbox_registry.app import MaskingAccessLogger, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m integrations.sandbox_registry", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--db", default="data/sandbox-registry.sqlite3", help="SQLite file; built on first start")
    parser.add_argument("--seed", type=int, default=20211101)
    parser.add_argument("--token", default=os.environ.get("SANDBOX_REGISTRY_TOKEN", ""),
                        help="bearer token every API call must carry (default: SANDBOX_REGISTRY_TOKEN)")
    parser.add_argument("--callback-host", action="append", dest="callback_hosts", metavar="HOST",
                        help="allow status callbacks only to this host (repeatable); default: any host")
    parser.add_argument("--processing-after", type=float, default=60.0, metavar="SECONDS",
                        help="seconds until a new unbind request is processing (default 60)")
    parser.add_argument("--done-after", type=float, default=300.0, metavar="SECONDS",
                        help="seconds until an unbind request is done or rejected (default 300)")
    args = parser.parse_args(argv)
    if len(args.token) < 16:
        sys.exit("The standalone sandbox registry needs a bearer token of 16+ characters: pass --token or set "
                 "SANDBOX_REGISTRY_TOKEN, and give the bot the same value as REGISTRY_TOKEN.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.db, seed=args.seed, callback_hosts=args.callback_hosts, api_token=args.token,
                     processing_after=args.processing_after, done_after=args.done_after)
    web.run_app(app, host=args.host, port=args.port, access_log_class=MaskingAccessLogger)


if __name__ == "__main__":
    main()
