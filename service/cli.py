"""The ``sharpmix`` command: parse, build, run, clean up. Each subcommand is a short function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import Settings, get_settings
from service.errors import SharpmixError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.api.schemas import SweepOut

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


@contextmanager
def _session(settings: Settings) -> Iterator[Session]:
    # On the embedded default every command creates and migrates the database on first use.
    from service.db import migrate
    from service.db.engine import make_engine, make_session_factory

    url = settings.resolved_database_url
    engine = make_engine(url)  # creates the SQLite file's directory
    try:
        if settings.is_embedded:
            migrate.upgrade(url)
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import tenants

    with _session(settings) as session:
        tenant = tenants.create_tenant(session, args.tenant)
        row, key = tenants.create_api_key(session, tenant.id)
    print(f"tenant {tenant.name}: new key {row.key_id} (revoke: sharpmix keys revoke {row.key_id})")
    print("the key is shown once; only its hash is stored:", file=sys.stderr)
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import tenants

    with _session(settings) as session:
        row = tenants.revoke_api_key(session, args.key_id)
    print(f"revoked key {row.key_id}")
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    import json

    import yaml

    from service.client import ClientError, SharpmixClient

    api_key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else "")
    if not api_key:
        raise ClientError("no API key: pass --api-key or set SHARPMIX_API_KEY")
    try:
        body = yaml.safe_load(args.spec.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read the sweep spec {args.spec}: {exc}") from exc
    if not isinstance(body, dict):
        raise ClientError(f"{args.spec} must hold a mapping (model, pretraining, ...)")
    with SharpmixClient(args.url or settings.url, api_key) as client:
        sweep = client.submit(body, idempotency_key=args.idempotency_key)
        if args.wait:
            sweep = client.wait(sweep.id, timeout=args.timeout, on_progress=_progress_bar())
        recommendation = None
        if sweep.state == "succeeded":
            recommendation = client.recommendation(sweep.id).model_dump(mode="json")
        trajectories = None
        if sweep.spec.trajectory is not None:
            trajectories = client.trajectories(sweep.id).model_dump(mode="json")["ratios"]
    result = {
        "sweep": sweep.model_dump(mode="json"),
        "recommendation": recommendation,
        "trajectories": trajectories,
    }
    print(json.dumps(result, indent=2))
    if sweep.state in ("failed", "cancelled"):
        print(f"sharpmix: sweep {sweep.id} {sweep.state}: {sweep.error or ''}", file=sys.stderr)
        return 1
    return 0


def _progress_bar() -> Callable[[SweepOut], None]:
    from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

    bar: list[Any] = []  # made on the first state seen, once the task count is known

    def show(sweep: SweepOut) -> None:
        if not bar:
            bar.append(tqdm(total=sweep.progress.tasks_total, unit="ratio", file=sys.stderr))
        bar[0].n = sweep.progress.tasks_done
        bar[0].set_postfix(state=sweep.state, forwards=sweep.progress.forwards, refresh=True)
        if sweep.state.is_final:
            bar[0].close()

    return show


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key (the tenant too, if new)")
    create.add_argument("--tenant", required=True, help="team name; created on first use")
    create.set_defaults(run=_keys_create)
    revoke = actions.add_parser("revoke", help="revoke a key by its id (smx_<KEY_ID>_...)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    submit = sub.add_parser("submit", help="submit a sweep spec (YAML or JSON) to a server")
    submit.add_argument("spec", type=Path, help="sweep.yaml")
    submit.add_argument("--url", help="server URL (default SHARPMIX_URL or http://127.0.0.1:8000)")
    submit.add_argument("--api-key", help="API key (default SHARPMIX_API_KEY)")
    submit.add_argument("--wait", action="store_true", help="wait for the result, with progress")
    submit.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to --wait")
    submit.add_argument("--idempotency-key", help="makes retrying this command safe")
    submit.set_defaults(run=_submit)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.embedded:
        from service.embedded import EmbeddedServer

        server = EmbeddedServer(settings, host=args.host, port=args.port)
        print(f"sharpmix: serving on http://{args.host}:{args.port} with an in-process worker")
        server.serve_forever()
        return 0
    import uvicorn

    from service.api.main import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, proxy_headers=True)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from service.db.migrate import upgrade
    from workers.worker import Worker

    if settings.is_embedded:
        upgrade(settings.resolved_database_url)
    stop = threading.Event()
    # SIGTERM: finish the current batch, hand the task back, exit. A second signal is not needed.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = Worker(settings, worker_id=args.id, stop=stop)
    try:
        done = worker.run(exit_when_idle=args.exit_when_idle)
    finally:
        worker.close()
    print(f"sharpmix: worker {worker.worker_id} completed {done} task(s)", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from service.demo import run_demo

    return run_demo(settings, rebuild=args.rebuild)


def _demo_assets(args: argparse.Namespace, settings: Settings) -> int:
    from workers.data.demo import build_demo_assets

    assets = build_demo_assets(settings.home, force=args.force)
    print(json.dumps(assets.manifest(), indent=2, default=str))
    print(assets.model_dir)
    return 0


def _add_process_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--embedded", action="store_true", help="run a worker in the same process (one host)"
    )
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="claim and run sweep tasks (one process per GPU)")
    worker.add_argument("--id", default=None, help="worker name (default host:pid:random)")
    worker.add_argument(
        "--exit-when-idle", action="store_true", help="exit once no task is left (batch jobs)"
    )
    worker.set_defaults(run=_worker)

    demo = sub.add_parser("demo", help="run a real sweep on the demo assets over HTTP")
    demo.add_argument("--rebuild", action="store_true", help="rebuild the demo assets first")
    demo.set_defaults(run=_demo)

    assets = sub.add_parser("demo-assets", help="build the demo corpora and tiny model")
    assets.add_argument("--force", action="store_true", help="rebuild even when present")
    assets.set_defaults(run=_demo_assets)


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
    _add_client_commands(sub)
    _add_process_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("alembic", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    run: Command = args.run
    try:
        return run(args, get_settings())
    except SharpmixError as exc:
        print(f"sharpmix: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
