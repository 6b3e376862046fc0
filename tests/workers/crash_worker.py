"""A real worker process that SIGKILLs itself at one named point of its task, for the tests of
the crash windows (run as ``python -m tests.workers.crash_worker POINT``; settings from the
environment, like ``sharpmix worker``).

Points: ``after_ask`` (the Optuna trial exists, its number is not recorded yet) and
``after_last_complete`` (the sweep's last task is committed, its trial not told, the sweep not
finalized).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from service.config import Settings
from service.db import queue
from workers.worker import Worker


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(point: str) -> None:
    """Arm the crash point, then work until there is nothing left (or the process dies)."""
    if point == "after_ask":

        def record_trial(*_args: Any, **_kwargs: Any) -> bool:
            _die()
            return False

        queue.record_trial = record_trial
    elif point == "after_last_complete":
        complete = queue.complete_task

        def complete_then_die(*args: Any, **kwargs: Any) -> bool:
            owned = complete(*args, **kwargs)
            if queue.sweeps_to_finish(args[0]):
                _die()
            return owned

        queue.complete_task = complete_then_die
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    Worker(Settings(), worker_id=f"crash-{point}").run(exit_when_idle=True)


if __name__ == "__main__":
    main(sys.argv[1])
