"""Where the polling read's time goes: py-spy samples of `sharpmix serve` under wrk load.

Serves the API on a fresh PostgreSQL database (as ``api_load.py`` does), loads
``GET /v1/sweeps/{id}`` with wrk (``-t2 -c50``), records the server process with py-spy at 200 Hz
for the same seconds, and sums the samples of the event loop's thread into the shares of a few
named parts of a request. Needs wrk (``apt-get install wrk``) and py-spy (``pip install
py-spy``, or ``--py-spy PATH``).

Run: .venv/bin/python bench/api_profile.py --out bench/results/api_profile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_load  # the same database seeding and wrk runner

ROOT = Path(__file__).resolve().parents[1]
LOOP = "BaseEventLoop._run_once"
# Named parts of a request: a sample counts for a part when this frame is on its stack.
PARTS = {
    "asyncpg query (fetchrow)": "Connection.fetchrow (asyncpg",
    "socket writes inside the query": "_SelectorSocketTransport.write",
    "response send": "RequestResponseCycle.send (uvicorn",
    "HTTP parsing (h11)": "H11Protocol.data_received",
    "access log": "Logger.info (logging",
    "SweepOut built and serialised": "sweep_out (service/api/schemas.py",
    "JSON serialisation": "BaseModel.model_dump_json",
    "API key check": "BearerKey.__call__ (service/api/deps.py",
}


def shares(raw: Path) -> dict[str, object]:
    """Fractions of the event loop's samples that fall in each part (py-spy ``--format raw``)."""
    total = 0
    counts: Counter[str] = Counter()
    in_query = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if LOOP not in stack:
            continue
        samples = int(n)
        total += samples
        for name, frame in PARTS.items():
            if frame in stack:
                counts[name] += samples
        if "Connection.fetchrow (asyncpg" in stack and "_SelectorSocketTransport.write" in stack:
            in_query += samples
    out = {name: round(counts[name] / total, 3) for name in PARTS}
    out["socket writes inside the query"] = round(in_query / total, 3)
    return {"event_loop_samples": total, "share_of_event_loop_samples": out}


def main() -> int:
    """Serve, load, sample, summarise into one JSON naming the machine."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=api_load.ADMIN_URL)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--py-spy", default=shutil.which("py-spy"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/api_profile_cpu.json")
    args = parser.parse_args()
    if args.py_spy is None or shutil.which("wrk") is None:
        print("needs wrk (apt-get install wrk) and py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    url = api_load.make_database(args.admin_url)
    home = Path(tempfile.mkdtemp(prefix="sharpmix-profile-"))
    raw = home / "profile.txt"
    server = None
    try:
        key, sweep_id = api_load.seed(url, 200)
        env = {
            **os.environ,
            "SHARPMIX_DATABASE_URL": url,
            "SHARPMIX_HOME": str(home),
            "SHARPMIX_ALLOWED_ROOTS": str(home),
        }
        port = api_load.free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "sharpmix.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        api_load.wait_up(f"{base}/healthz")
        target, auth = f"{base}/v1/sweeps/{sweep_id}", {"Authorization": f"Bearer {key}"}
        api_load.wrk(target, clients=50, seconds=2, headers=auth)  # warm up
        sampling = ["-d", str(args.seconds), "-r", "200", "-f", "raw", "-o", str(raw)]
        spy = subprocess.Popen(
            [args.py_spy, "record", "-p", str(server.pid), *sampling],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load = api_load.wrk(target, clients=50, seconds=args.seconds, headers=auth)
        spy.wait()
        record = {
            "what": "py-spy samples of sharpmix serve while wrk -t2 -c50 polls GET /v1/sweeps/{id}",
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_1m": os.getloadavg()[0],
            },
            "wrk_under_sampling": load,
            **shares(raw),
            "note": "sampling at 200 Hz slows the server; the shares, not the rate, are the result",
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        api_load.drop_database(args.admin_url, url)
        shutil.rmtree(home, ignore_errors=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
