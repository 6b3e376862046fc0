"""The ``sharpmix`` command: parse, build, run, clean up. Each subcommand is a short function.

Exit codes (also in ``sharpmix --help`` and the README):

- 0: done (a waited-for sweep succeeded);
- 1: the sweep ended failed or cancelled;
- 2: a usage error, or the server refused the request (bad key, unknown sweep, invalid spec);
- 3: the server could not be reached, or answered with a server error;
- 4: ``--timeout`` ran out while waiting;
- 5: not available yet (the recommendation of an unfinished sweep, a plot before any measurement);
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.config import Settings, get_settings
from service.errors import InvalidRequestError, SharpmixError
from sharpmix import cli_reuse

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from contract.wire import SweepOut
    from service.client import SharpmixClient

Command = Callable[[argparse.Namespace, Settings], int]

EXIT_OK, EXIT_SWEEP_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_NOT_READY = range(6)
EXIT_INTERRUPTED = 130
EXIT_CODES = """exit codes:
  0  done (a waited-for sweep succeeded)      1  the sweep failed or was cancelled
  2  usage error, or the server refused        3  server unreachable or a server error
  4  --timeout ran out while waiting           5  not available yet (e.g. unfinished sweep)
  130 interrupted"""


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import migrate

    url = settings.resolved_database_url
    _sqlite_directory(url)
    if args.action == "revision":
        migrate.new_revision(url, args.revision or "schema change")
        return 0
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
    current, head = migrate.current_revision(url), migrate.head_revision()
    if getattr(args, "json", False):
        _print_json({"database": _redacted(url), "revision": current, "head": head})
    else:
        print(f"database {_redacted(url)} at revision {current} (head {head})")
    return 0


def _sqlite_directory(url: str) -> None:
    # SQLite creates the file but not its directory: a fresh SHARPMIX_HOME would fail to open.
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


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
    database = _redacted(settings.resolved_database_url)
    if args.json:
        _print_json({"tenant": tenant.name, "key_id": row.key_id, "database": database, "key": key})
        return 0
    print(
        f"tenant {tenant.name}: new key {row.key_id} in database {database} "
        f"(revoke: sharpmix keys revoke {row.key_id})"
    )
    print(
        "the key is shown once; only its hash is stored. It works on servers using this database "
        "(same SHARPMIX_DATABASE_URL, or SHARPMIX_HOME for the embedded SQLite):",
        file=sys.stderr,
    )
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from service.db import tenants

    with _session(settings) as session:
        row = tenants.revoke_api_key(session, args.key_id)
    if args.json:
        _print_json({"revoked": row.key_id})
    else:
        print(f"revoked key {row.key_id}")
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    import json

    import yaml

    from service.client import ClientError

    try:
        body = yaml.safe_load(args.spec.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read the sweep spec {args.spec}: {exc}") from exc
    if not isinstance(body, dict):
        raise ClientError(f"{args.spec} must hold a mapping (model, pretraining, ...)")
    with _client(args, settings) as client:
        sweep = client.submit(body, idempotency_key=args.idempotency_key)
        if args.wait:
            sweep = client.wait(sweep.id, timeout=args.timeout, on_progress=_progress(args))
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
        return EXIT_SWEEP_FAILED
    return EXIT_OK


def _client(args: argparse.Namespace, settings: Settings) -> SharpmixClient:
    from service.client import ClientError, SharpmixClient

    api_key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else "")
    if not api_key:
        raise ClientError(
            "no API key: pass --api-key or set SHARPMIX_API_KEY (create one with "
            "`sharpmix keys create --tenant NAME` against the server's database)",
            status_code=401,
        )
    return SharpmixClient(args.url or settings.url, api_key)


def _progress(args: argparse.Namespace) -> Callable[[SweepOut], None] | None:
    if getattr(args, "quiet", False):
        return None
    return ProgressBar().show


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """A bar on stderr for a sweep being waited on: ratios done of the total, forward passes,
    time spent and the server's estimate of the time left (``eta_seconds``).

    Drawn once per state seen; a final state (succeeded, failed, cancelled) draws the last line
    once and closes the bar, so a failed sweep's bar is not printed twice.
    """

    _FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} ratios [{elapsed}{postfix}]"

    def __init__(self) -> None:
        self._bar: Any = None
        self._closed = False

    def show(self, sweep: SweepOut) -> None:
        """Draw ``sweep``'s progress (the client's ``on_progress`` callback)."""
        from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

        if self._closed:
            return
        progress = sweep.progress
        final = sweep.state.is_final
        left = 0.0 if final else progress.eta_seconds
        postfix = f"{sweep.state.value}, {progress.forwards} forwards, left {_clock(left)}"
        if self._bar is None and final:
            # Finished before the first look: one line, no bar to open and close.
            line = tqdm.format_meter(
                progress.tasks_done,
                progress.tasks_total,
                0.0,
                prefix=f"sweep {sweep.id}",
                bar_format=self._FORMAT,
                postfix=postfix,
            )
            print(line, file=sys.stderr)
            self._closed = True
            return
        if self._bar is None:
            self._bar = tqdm(
                total=progress.tasks_total,
                initial=progress.tasks_done,
                desc=f"sweep {sweep.id}",
                file=sys.stderr,
                bar_format=self._FORMAT,
                dynamic_ncols=True,
                postfix=postfix,
            )
        self._bar.n = progress.tasks_done
        self._bar.set_postfix_str(postfix, refresh=False)
        if final:
            self._closed = True
            self._bar.close()  # draws the final line once
        else:
            self._bar.refresh()


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="create a key (the tenant too, if new)", parents=[_json_flag()]
    )
    create.add_argument("--tenant", required=True, help="team name; created on first use")
    create.set_defaults(run=_keys_create)
    revoke = actions.add_parser(
        "revoke", help="revoke a key by its id (smx_<KEY_ID>_...)", parents=[_json_flag()]
    )
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    submit = sub.add_parser(
        "submit",
        help="submit a sweep spec (YAML or JSON) to a server; prints JSON",
        parents=[_server_options(), _json_flag()],
    )
    submit.add_argument("spec", type=Path, help="sweep.yaml").complete = _file_completion()  # type: ignore[attr-defined]
    submit.add_argument("--wait", action="store_true", help="wait for the result, with progress")
    submit.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to --wait")
    submit.add_argument("--idempotency-key", help="makes retrying this command safe")
    submit.set_defaults(run=_submit)
    _add_sweeps_commands(sub)


# ---------------------------------------------------------------------------- sharpmix sweeps
# One verb per function; each prints a table for people, or JSON with --json.


def _file_completion() -> object:
    import shtab

    return shtab.FILE  # per shell: complete this argument with file names


def _json_flag() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def _server_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", help="server URL (default SHARPMIX_URL or http://127.0.0.1:8000)")
    parent.add_argument("--api-key", help="API key (default SHARPMIX_API_KEY)")
    return parent


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as a plain text table, columns padded to their widest cell."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _sweep_row(sweep: SweepOut, answer: str) -> list[object]:
    p = sweep.progress
    left = "-" if sweep.state.is_final else _clock(p.eta_seconds)
    created = sweep.created_at.strftime("%Y-%m-%d %H:%M")
    return [sweep.id, sweep.state.value, created, f"{p.tasks_done}/{p.tasks_total}", answer, left]


def _answer(client: SharpmixClient, sweep: SweepOut) -> str:
    if sweep.state != "succeeded":
        return "-"
    ratio = client.recommendation(sweep.id).ratio
    return "none" if ratio is None else f"{ratio:g}"


def _sweeps_list(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        items: list[SweepOut] = []
        cursor: str | None = None
        while True:
            page = client.list_sweeps(limit=min(args.limit - len(items), 100), cursor=cursor)
            items += page.items
            cursor = page.next_cursor
            if cursor is None or len(items) >= args.limit:
                break
        if args.json:
            _print_json(
                {"items": [s.model_dump(mode="json") for s in items], "next_cursor": cursor}
            )
            return EXIT_OK
        rows = [_sweep_row(s, _answer(client, s)) for s in items]
    headers = ["id", "state", "created (UTC)", "ratios", "answer", "time left"]
    print(table(headers, rows) if rows else "no sweeps yet (sharpmix submit sweep.yaml)")
    if cursor is not None:
        print(f"(more: --limit {args.limit * 2})", file=sys.stderr)
    return EXIT_OK


def _print_sweep(sweep: SweepOut) -> None:
    p = sweep.progress
    facts = [
        ("sweep", sweep.id),
        ("state", sweep.state.value + (" (cancel requested)" if sweep.cancel_requested else "")),
        ("progress", f"{p.tasks_done}/{p.tasks_total} ratios"),
        ("time left", "-" if sweep.state.is_final else _clock(p.eta_seconds)),
        ("cost", f"{p.forwards} forwards, {p.backwards} backwards, {p.compute_seconds:.0f} s"),
        ("model", sweep.spec.model.path or sweep.spec.model.hub_id or "-"),
        ("learning rate", f"{sweep.spec.learning_rate:g}"),
        ("objective", sweep.spec.objective),
        ("created", sweep.created_at.isoformat()),
        ("finished", sweep.finished_at.isoformat() if sweep.finished_at else "-"),
        ("optuna study", sweep.study_name),
    ]
    if sweep.error:
        facts.append(("error", sweep.error))
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        print(f"{name:<{width}}  {value}")


def _final_code(sweep: SweepOut) -> int:
    if sweep.state in ("failed", "cancelled"):
        print(f"sharpmix: sweep {sweep.id} {sweep.state}: {sweep.error or ''}", file=sys.stderr)
        return EXIT_SWEEP_FAILED
    return EXIT_OK


def _sweeps_show(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        sweep = client.get(args.sweep_id)
    if args.json:
        _print_json(sweep.model_dump(mode="json"))
    else:
        _print_sweep(sweep)
    return EXIT_OK


def _sweeps_wait(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        sweep = client.wait(args.sweep_id, timeout=args.timeout, on_progress=_progress(args))
    if args.json:
        _print_json(sweep.model_dump(mode="json"))
    else:
        _print_sweep(sweep)
    return _final_code(sweep)


def _sweeps_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        sweep = client.cancel(args.sweep_id)
    if args.json:
        _print_json(sweep.model_dump(mode="json"))
    else:
        print(f"sweep {sweep.id}: {sweep.state.value}, cancel requested")
    return EXIT_OK


def _sweeps_trials(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        trials = client.trials(args.sweep_id)
    if args.json:
        _print_json([t.model_dump(mode="json") for t in trials])
        return EXIT_OK
    headers = [
        "ratio",
        "set",
        "role",
        "status",
        "eta_c",
        "95% interval",
        "lambda_c",
        "loss",
        "dL at lr",
        "fwd",
    ]
    rows = [
        [
            _ratio_or_mix(t.ratio, t.weights),
            t.eval_set,
            t.role,
            t.status,
            _num(t.eta_c),
            f"[{_num(t.eta_c_low)}, {_num(t.eta_c_high)}]",
            _num(t.sharpness),
            _num(t.loss),
            _num(t.loss_change),
            t.forwards,
        ]
        for t in trials
    ]
    print(table(headers, rows) if rows else "nothing measured yet")
    return EXIT_OK


def _ratio_or_mix(ratio: float, weights: dict[str, float] | None) -> str:
    """A ratio, with its mix's shares when more than two sets make it (k-domain mixes)."""
    if weights is None or len(weights) <= 2:
        return f"{ratio:g}"
    return f"{ratio:g} (" + ", ".join(f"{n} {w:.3g}" for n, w in weights.items()) + ")"


def _sweeps_recommendation(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        rec = client.recommendation(args.sweep_id)
    if args.json:
        _print_json(rec.model_dump(mode="json"))
        return EXIT_OK
    answer = "none qualifies" if rec.ratio is None else f"{rec.ratio:g}"
    print(
        f"recommended pre-training ratio: {answer} (objective {rec.objective}, "
        f"confidence {rec.confidence})"
    )
    if rec.weights is not None and len(rec.weights) > 2:
        print(f"  recommended mix: {_ratio_or_mix(rec.ratio or 0.0, rec.weights)}")
    print(f"  {rec.reason}")
    print(
        f"  flat rule {_num(rec.flat_ratio)}, balanced {_num(rec.balanced_ratio)}, loss-change "
        f"rule {_num(rec.least_forgetting_ratio)}, max stable lr {_num(rec.max_stable_lr)}"
    )
    cli_reuse.print_rate_region(rec)
    for warning in rec.warnings:
        print(f"  warning: {warning}")
    return EXIT_OK


def _sweeps_plot(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        png = client.plot(args.sweep_id)
    output: Path = args.output or Path(f"plot-{args.sweep_id}.png")
    output.write_bytes(png)
    if args.json:
        _print_json({"path": str(output), "bytes": len(png)})
    else:
        print(output)
    return EXIT_OK


def _sweeps_export(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        text = client.export(args.sweep_id, args.format, args.ratio)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    args.output.write_text(text)
    if args.json:
        _print_json({"path": str(args.output), "format": args.format, "bytes": len(text)})
    else:
        print(args.output)
    return EXIT_OK


def _add_sweeps_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweeps = sub.add_parser("sweeps", help="list, follow, cancel and read sweeps on a server")
    verbs = sweeps.add_subparsers(dest="verb", required=True, metavar="VERB")
    common = [_server_options(), _json_flag()]

    listing = verbs.add_parser("list", help="your sweeps, newest first", parents=common)
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    listing.set_defaults(run=_sweeps_list)
    for name, run, text in (
        ("show", _sweeps_show, "a sweep's state, progress and cost"),
        ("wait", _sweeps_wait, "wait until the sweep has finished, with a progress bar"),
        ("cancel", _sweeps_cancel, "cancel a queued or running sweep"),
        ("trials", _sweeps_trials, "its measurements: one row per ratio and evaluation set"),
        ("recommendation", _sweeps_recommendation, "the answer of a succeeded sweep"),
        ("plot", _sweeps_plot, "save the critical-sharpness plot as a PNG"),
        ("export", _sweeps_export, "the recommended mix as a training stack's configuration"),
    ):
        verb = verbs.add_parser(name, help=text, description=text, parents=common)
        verb.add_argument("sweep_id", metavar="SWEEP_ID")
        verb.set_defaults(run=run)
        if name == "wait":
            verb.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds")
            verb.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "plot":
            verb.add_argument("-o", "--output", type=Path, help="file (default plot-ID.png)")
        if name == "export":
            from service.export import FORMATS

            verb.add_argument(
                "--format", choices=FORMATS, default="json", help="which stack (default json)"
            )
            verb.add_argument(
                "--ratio", type=float, help="export this pre-training ratio, not the answer"
            )
            verb.add_argument("-o", "--output", type=Path, help="file (default: standard output)")
    # Issue 11, part 5: add-ratios and compare (sharpmix/cli_reuse.py).
    cli_reuse.add_commands(verbs, common, _client, table)


def _completion(args: argparse.Namespace, settings: Settings) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.embedded:
        from sharpmix.embedded import EmbeddedServer

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

    if settings.devices > 1:
        _check_gpus(settings)
    if settings.is_embedded:
        upgrade(settings.resolved_database_url)
    stop = threading.Event()
    # SIGTERM: finish the current batch, hand the task back, exit. A second signal is not needed.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if settings.devices > 1:
        from sharpmix.ranks import run_ranks

        done = run_ranks(settings, worker_id=args.id, stop=stop, exit_when_idle=args.exit_when_idle)
        print(
            f"sharpmix: worker over {settings.devices} devices completed {done} task(s)",
            file=sys.stderr,
        )
        return 0
    worker = Worker(settings, worker_id=args.id, stop=stop)
    try:
        done = worker.run(exit_when_idle=args.exit_when_idle)
    finally:
        worker.close()
    print(f"sharpmix: worker {worker.worker_id} completed {done} task(s)", file=sys.stderr)
    return 0


def _check_gpus(settings: Settings) -> None:
    """Refuse more GPU ranks than this host has, before touching the database."""
    import torch

    if settings.device == "cpu":  # CPU ranks over gloo: tests and debugging
        return
    if settings.devices > torch.cuda.device_count():
        raise InvalidRequestError(
            "SHARPMIX_DEVICES",
            f"{settings.devices} GPUs asked for, {torch.cuda.device_count()} visible; lower "
            "SHARPMIX_DEVICES or make more GPUs visible (CUDA_VISIBLE_DEVICES), or set "
            "SHARPMIX_DEVICE=cpu for CPU processes",
            location="environment",
        )


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from sharpmix.demo import run_demo

    return run_demo(settings, rebuild=args.rebuild)


def _demo_assets(args: argparse.Namespace, settings: Settings) -> int:
    from sharpmix.assets.demo import build_demo_assets

    assets = build_demo_assets(settings.home, force=args.force)
    paths = {
        "model": assets.model_dir,
        "general corpus (pre-training)": assets.general_path,
        "math corpus (fine-tuning)": assets.math_path,
        "general held-out": assets.general_eval_path,
        "math held-out": assets.math_eval_path,
    }
    if args.json:
        _print_json({"paths": {k: str(v) for k, v in paths.items()}, "manifest": assets.manifest()})
        return 0
    print(json.dumps(assets.manifest(), indent=2, default=str))
    for name, path in paths.items():
        print(f"{name + ':':<31} {path}")
    print("a ready spec for them: examples/demo.yaml (paths relative to SHARPMIX_HOME)")
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

    assets = sub.add_parser(
        "demo-assets", help="build the demo corpora and tiny model", parents=[_json_flag()]
    )
    assets.add_argument("--force", action="store_true", help="rebuild even when present")
    assets.set_defaults(run=_demo_assets)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sharpmix",
        description="Recommend a pre-training mix ratio from relative critical sharpness.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sharpmix {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="apply or inspect database migrations", parents=[_json_flag()])
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "revision"])
    db.add_argument(
        "revision",
        nargs="?",
        help="target revision (upgrade: head, downgrade: base); for 'revision', its message",
    )
    db.set_defaults(run=_db)
    _add_client_commands(sub)
    _add_process_commands(sub)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="bash: sharpmix completion bash > ~/.local/share/bash-completion/completions/"
        "sharpmix; zsh: sharpmix completion zsh > ~/.zfunc/_sharpmix",
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(run=_completion)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sharpmix")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def exit_code(error: SharpmixError) -> int:
    """The documented exit code of an error (see the module docstring)."""
    from service.client import ClientError, WaitTimeoutError

    if isinstance(error, WaitTimeoutError):
        return EXIT_TIMEOUT
    if isinstance(error, ClientError):
        if error.status_code is None or error.status_code >= 500:
            return EXIT_UNREACHABLE
        if error.status_code == 409:
            return EXIT_NOT_READY
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    # Before torch is first imported (commands import it lazily): torch's OpenMP threads spin
    # a short while, then sleep, when they wait for work. Spinning long starves the working
    # threads on a CPU shared with anything else; not spinning at all costs an idle one
    # (bench/omp_wait.py). An operator's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")
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
        return exit_code(exc)
    except KeyboardInterrupt:
        print("sharpmix: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
