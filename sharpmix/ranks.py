"""`sharpmix worker` over several devices: one process per device, rank 0 leading the others.

The process `sharpmix worker` starts talks to no database and computes nothing: it starts one
rank per device (`torch.multiprocessing`'s spawn), forwards SIGTERM to rank 0, and watches them.
Rank 0 is the worker loop with a `Leader` (`workers/worker.py`), the others are `Follower`s
(`workers/group.py`). The launcher starts a fresh group when the old one is spent:

- rank 0 exits with `RESTART` after a failed task (the failure is recorded, per `classify`);
- a follower dies or raises: rank 0's next collective fails (gloo sees the closed connection at
  once; NCCL at `SHARPMIX_DIST_TIMEOUT_SECONDS`), it fails its task as transient (retried) and
  exits; if it does not exit within that timeout and a margin, it is killed, and the task's
  lease hands it to the next claim;
- rank 0 dies: the followers have nothing to follow and are ended; its task's lease hands it on.

It stops when rank 0 exits cleanly (SIGTERM: the task handed back at the next checkpoint; or no
work left under ``--exit-when-idle``). A rank whose launcher died exits at once.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path

import torch

from service.config import Settings
from workers.group import Follower, Leader, open_crew
from workers.sweep import default_micro_batch_tokens
from workers.worker import Worker, load_policy

log = logging.getLogger("sharpmix.ranks")

RESTART = 3  # a rank's exit code: its group is spent, start a fresh one
FOLLOWER_GRACE = 10.0  # seconds followers get to leave after rank 0 has gone
MARGIN = 30.0  # seconds past the collective timeout before a silent rank 0 is killed


def rank_devices(settings: Settings) -> list[str]:
    """One device per rank: ``cuda:0`` .. ``cuda:N-1``, or N times ``cpu``."""
    if settings.device == "cpu":
        return ["cpu"] * settings.devices
    return [f"cuda:{r}" for r in range(settings.devices)]


def run_ranks(
    settings: Settings,
    *,
    worker_id: str | None,
    stop: threading.Event,
    exit_when_idle: bool = False,
) -> int:
    """Run the ranks, a fresh group whenever the last one is spent, until rank 0 ends cleanly
    or ``stop`` is set.

    Returns:
        The number of tasks the groups completed.
    """
    devices = rank_devices(settings)
    context = multiprocessing.get_context("spawn")
    done = 0
    groups = 0
    with tempfile.TemporaryDirectory(prefix="sharpmix-ranks-") as scratch:
        while True:
            rendezvous = str(Path(scratch) / f"group{groups}")
            groups += 1
            procs = [
                context.Process(
                    target=_rank,
                    args=(r, devices, settings, worker_id, exit_when_idle, rendezvous),
                    name=f"sharpmix-rank{r}",
                )
                for r in range(len(devices))
            ]
            for proc in procs:
                proc.start()
            log.info(
                "group %d: ranks %s", groups, ", ".join(f"{p.name} pid {p.pid}" for p in procs)
            )
            finished = _watch(procs, stop, settings.dist_timeout_seconds + MARGIN)
            count = Path(f"{rendezvous}.done")  # rank 0's completed tasks, when it got to write
            done += int(count.read_text()) if count.exists() else 0
            if finished or stop.is_set():
                return done
            log.warning("group %d is spent; starting a fresh one", groups)
            if stop.wait(1.0):
                return done


def _watch(procs: list[SpawnProcess], stop: threading.Event, grace: float) -> bool:
    """Wait for rank 0 to end, then for the others; whether rank 0 ended cleanly."""
    leader, followers = procs[0], procs[1:]
    forwarded = False
    follower_died: float | None = None
    while leader.is_alive():
        if stop.is_set() and not forwarded:
            leader.terminate()  # SIGTERM: rank 0 hands its task back
            forwarded = True
        multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
        # A follower that exited 0 was dismissed and left first; any other end is a failure.
        codes = {p.name: p.exitcode for p in followers if p.exitcode not in (None, 0)}
        if follower_died is None and codes:
            follower_died = time.monotonic()
            log.error("a rank ended under rank 0 (%s); waiting for rank 0 to give up", codes)
        if follower_died is not None and time.monotonic() - follower_died > grace:
            log.error("rank 0 did not give up within %.0f s; killing it", grace)
            leader.kill()
            leader.join()
    deadline = time.monotonic() + FOLLOWER_GRACE
    for proc in followers:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
    if leader.exitcode not in (0, RESTART):
        log.error(
            "rank 0 ended with %s; its task goes to the next claim after its lease", leader.exitcode
        )
    return leader.exitcode == 0 and all(p.exitcode == 0 for p in followers)


def _orphaned(launcher: int) -> None:
    """Exit when the launcher is gone (killed): nobody would end this rank otherwise."""
    while os.getppid() == launcher:
        time.sleep(1.0)
    os._exit(RESTART)


def _rank(
    rank: int,
    devices: list[str],
    settings: Settings,
    worker_id: str | None,
    exit_when_idle: bool,
    rendezvous: str,
) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s"
    )
    threading.Thread(target=_orphaned, args=(os.getppid(),), daemon=True).start()
    stop = threading.Event()
    # The launcher forwards SIGTERM to rank 0, which stops every rank at the next checkpoint; a
    # terminal's Ctrl-C reaches every process of the group, and only the launcher acts on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, (lambda *_: stop.set()) if rank == 0 else signal.SIG_IGN)
    try:
        crew = open_crew(
            rank,
            len(devices),
            rendezvous=rendezvous,
            device=devices[rank],
            timeout=datetime.timedelta(seconds=settings.dist_timeout_seconds),
        )
        if rank == 0:
            worker = Worker(settings, worker_id=worker_id, stop=stop, leader=Leader(crew))
            try:
                completed = worker.run(exit_when_idle=exit_when_idle)
            finally:
                worker.close()
            Path(f"{rendezvous}.done").write_text(str(completed))
            spent = worker.spent
        else:
            dtype = torch.float32  # Settings refuses anything else over several devices
            tokens = settings.micro_batch_tokens or default_micro_batch_tokens(devices[rank])
            Follower(crew, load_policy(settings), dtype=dtype, micro_batch_tokens=tokens).run()
            spent = False
    except BaseException:
        log.exception("rank %d failed; its group is spent", rank)
        spent = True
    if spent:
        # No teardown of a spent group: a collective still waiting on another rank would hang it.
        os._exit(RESTART)
