"""The ``sharpmix`` command: parse, build, run, clean up. Each subcommand is a short function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from service.config import Settings, get_settings
from service.errors import SharpmixError

Command = Callable[[argparse.Namespace, Settings], int]


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import migrate

    url = settings.resolved_database_url
    if args.action == "revision":
        migrate.new_revision(url, args.revision or "schema change")
        return 0
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
    print(f"database at revision {migrate.current_revision(url)} (head {migrate.head_revision()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sharpmix",
        description="Recommend a pre-training mix ratio from relative critical sharpness.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="apply or inspect database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "revision"])
    db.add_argument(
        "revision",
        nargs="?",
        help="target revision (upgrade: head, downgrade: base); for 'revision', its message",
    )
    db.set_defaults(run=_db)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        return run(args, get_settings())
    except SharpmixError as exc:
        print(f"sharpmix: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
