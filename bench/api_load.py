"""API throughput and latency under 50 concurrent clients, against a trivial FastAPI app.

What it measures: ``GET /v1/sweeps/{id}`` (authenticated, a sweep stored in PostgreSQL) of a
sweep that does not change while polled and of one that another connection changes twice a
second (each change announced to the API, which then reads that sweep again),
``GET /healthz`` and ``GET /metrics`` of a real ``sharpmix serve`` process, and ``GET /ping`` of a
minimal FastAPI app with that one route, served the same way (``uvicorn.run(app, host, port,
proxy_headers=True)``, one process, default loop and HTTP parser, access log on and sent to
/dev/null for both). The load generator is wrk (C, its own process; ``apt-get install wrk``),
``-t2 -c50``. The targets take turns, one at a time, for several rounds; each round's ratios are
against the trivial app's figure of the same round, and the result is the median over rounds.

Run (PostgreSQL at 127.0.0.1:5432, trust auth, as in CONTRIBUTING):

    .venv/bin/python bench/api_load.py --out bench/results/api_load_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CHANGE_PERIOD_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_trivial(port: int) -> None:
    """The baseline: FastAPI with one trivial GET, served like ``sharpmix serve``."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, proxy_headers=True)


def make_database(admin_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"sharpmix_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def seed(url: str, sweeps: int) -> tuple[str, list[str]]:
    """Tenant, key and ``sweeps`` queued sweeps of three tasks; returns (key, their ids)."""
    from contract.spec import SweepSpec
    from service.db import sweeps as sweep_store
    from service.db import tenants
    from service.db.engine import make_engine, make_session_factory
    from service.db.migrate import upgrade

    upgrade(url)
    spec = SweepSpec.model_validate(
        {
            "model": {"path": "model"},
            "pretraining": {"name": "web", "path": "web.jsonl"},
            "finetuning": [{"name": "code", "path": "code.jsonl"}],
            "retention": [{"name": "wiki", "path": "wiki.jsonl"}],
            "ratios": [0.0, 0.25, 0.5],
            "learning_rate": 1e-3,
        }
    )
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        tenant = tenants.create_tenant(session, "bench")
        _, key = tenants.create_api_key(session, tenant.id)
        ids = []
        for _ in range(sweeps):
            sweep, _created = sweep_store.create_sweep(session, tenant.id, spec, None)
            ids.append(sweep.id)
    engine.dispose()
    return key, ids


class Changer:
    """Changes one sweep row every ``period`` seconds from another connection, as a worker's
    progress writes would (each change announced to the API by migration 0005's trigger)."""

    def __init__(self, url: str, sweep_id: str, period: float) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.sweep_id = sweep_id
        self.period = period
        self.changes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            while not self.stop.wait(self.period):
                connection.execute(
                    text("UPDATE sweeps SET forwards = forwards + 1 WHERE id = :id"),
                    {"id": self.sweep_id},
                )
                self.changes += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.engine.dispose()


def wait_up(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, *, clients: int, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles in ms, non-2xx count."""
    args = ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result: dict[str, float] = {"rps": rps}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m is not None, out
        result[f"p{pct}_ms"] = float(m.group(1)) * _UNIT[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    result["non_2xx"] = float(bad.group(1)) if bad else 0.0
    result["socket_errors"] = 0.0 if errors is None else 1.0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=ADMIN_URL, help="PostgreSQL to create a db on")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=8, help="per target and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=200, help="sweeps in the database")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--serve-trivial", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial is not None:
        serve_trivial(args.serve_trivial)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    load_before = os.getloadavg()[0]
    url = make_database(args.admin_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        key, ids = seed(url, args.sweeps)
        sweep_id, changing_id = ids[-1], ids[0]
        changer = Changer(url, changing_id, CHANGE_PERIOD_S)
        home = Path(tempfile.mkdtemp(prefix="sharpmix-bench-"))
        env = {
            **os.environ,
            "SHARPMIX_DATABASE_URL": url,
            "SHARPMIX_HOME": str(home),
            "SHARPMIX_ALLOWED_ROOTS": str(home),
        }
        ours, trivial = free_port(), free_port()
        quiet = subprocess.DEVNULL
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sharpmix.cli", "serve", "--port", str(ours)],
                env=env,
                cwd=ROOT,
                stdout=quiet,
                stderr=quiet,
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--serve-trivial", str(trivial)],
                env=env,
                cwd=ROOT,
                stdout=quiet,
                stderr=quiet,
            )
        )
        base = f"http://127.0.0.1:{ours}"
        wait_up(f"{base}/healthz")
        wait_up(f"http://127.0.0.1:{trivial}/ping")
        auth = {"Authorization": f"Bearer {key}"}
        targets: dict[str, tuple[str, dict[str, str]]] = {
            "trivial_ping": (f"http://127.0.0.1:{trivial}/ping", {}),
            "get_sweep": (f"{base}/v1/sweeps/{sweep_id}", auth),
            "get_sweep_changing": (f"{base}/v1/sweeps/{changing_id}", auth),
            "healthz": (f"{base}/healthz", {}),
            "metrics": (f"{base}/metrics", {}),
        }
        for target, headers in targets.values():  # warm up every path once
            wrk(target, clients=args.clients, seconds=2, headers=headers)
        rounds: list[dict[str, dict[str, float]]] = []
        for _ in range(args.rounds):
            one = {
                name: wrk(target, clients=args.clients, seconds=args.seconds, headers=headers)
                for name, (target, headers) in targets.items()
            }
            rounds.append(one)
            print(json.dumps(one), flush=True)
    finally:
        if "changer" in locals():
            changer.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        drop_database(args.admin_url, url)

    names = [n for n in targets if n != "trivial_ping"]
    summary: dict[str, Any] = {}
    for name in ["trivial_ping", *names]:
        runs = [r[name] for r in rounds]
        entry: dict[str, Any] = {
            "rps_median": statistics.median(r["rps"] for r in runs),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            "p99_ms_worst": max(r["p99_ms"] for r in runs),
            "non_2xx_total": sum(r["non_2xx"] for r in runs),
        }
        if name != "trivial_ping":
            entry["ratio_to_trivial_median"] = statistics.median(
                r[name]["rps"] / r["trivial_ping"]["rps"] for r in rounds
            )
        summary[name] = entry
    result = {
        "benchmark": "api_load",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "note": "shared 2-core development VM",
        },
        "load_generator": f"wrk -t2 -c{args.clients} -d{args.seconds}s --latency",
        "database": "PostgreSQL at 127.0.0.1:5432, fresh database, "
        f"{args.sweeps} sweeps of 3 tasks",
        "targets": {
            "get_sweep": "a sweep that does not change while polled (read once, then kept)",
            "get_sweep_changing": f"a sweep changed every {CHANGE_PERIOD_S:g} s by another "
            "connection (read again after each change)",
        },
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "load_average_1m_before": load_before,
        "rounds": args.rounds,
        "summary": summary,
        "raw": rounds,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
