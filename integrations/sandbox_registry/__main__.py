"""Serves the sandbox registry on its own: `python -m integrations.sandbox_registry --port 8090`."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from integrations.sandbox_registry.app import MaskingAccessLogger, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m integrations.sandbox_registry", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--db", default="data/sandbox-registry.sqlite3", help="SQLite file; built on first start")
    parser.add_argument("--seed", type=int, default=20211101)
    parser.add_argument("--callback-host", action="append", dest="callback_hosts", metavar="HOST",
                        help="allow status callbacks only to this host (repeatable); default: any host")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.db, seed=args.seed, callback_hosts=args.callback_hosts)
    web.run_app(app, host=args.host, port=args.port, access_log_class=MaskingAccessLogger)


if __name__ == "__main__":
    main()
