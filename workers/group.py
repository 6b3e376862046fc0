"""The ranks of a worker that shards each model over several devices: rank 0 leads, the rest follow.

Only rank 0 talks to the queue: it is the worker loop (`workers/worker.py`) given a `Leader`. It
claims a task and sends the other ranks an `Order` (the task's kind, sweep, spec, candidate,
and whether the sweep's prepared model is reused); then every rank runs the same `prepare(...,
ranks=)` and `measure_ratio` or `run_trajectory` on its shards (`workers/curvature/
distributed.py`). Whatever those ask their callbacks (the checkpoints between expensive steps,
`on_batch`, `on_measure`) and the candidate Optuna asks for are decided by rank 0 alone, with the
database and the study at hand, and told to the others as they are decided (`Leader.decide`):
a value every rank goes on with, or a stop (shutdown, cancel, lost lease) that every rank raises
as `TaskAbortedError` at the same point. So all ranks run the same forwards in the same order
and FSDP's collectives stay matched.

The orders travel over a gloo group of their own (`Crew.control`), apart from FSDP's group and
the side group the losses use: a follower waits there for the next message, and rank 0 is the
only sender, so a message never meets another kind of collective. While the queue is empty,
rank 0 sends `Idle` on every poll, so a waiting follower hears from it well within the group's
timeout.

Failure: a rank that raises anything but `TaskAbortedError` may have left the others inside a
collective, so the group is spent. Rank 0 records the failure (the worker's `classify`: the
user's error fails the sweep, anything else is retried) and stops leading; a follower exits. The
launcher (`sharpmix/ranks.py`) then ends the rest and starts a fresh group. A rank that dies
makes the others' next collective fail (gloo notices the closed connection at once; otherwise
the group's timeout bounds the wait), and if rank 0 itself died the task's lease hands it on.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from contract.mix import Candidate
from contract.spec import SweepSpec
from contract.states import TaskKind
from workers.curvature.distributed import Ranks, join
from workers.data import LoadPolicy
from workers.sweep import PreparedSweep, TaskAbortedError, prepare
from workers.trajectory import run_trajectory

__all__ = ["Crew", "Follower", "Leader", "Order", "open_crew"]

log = logging.getLogger("sharpmix.group")

T = TypeVar("T")


@dataclass(frozen=True)
class Order:
    """The task rank 0 claimed, as the other ranks need it.

    Attributes:
        task_id: The task's id (for the log).
        sweep_id: Its sweep: a follower keeps the sweep's prepared model like rank 0 does.
        kind: ``measure`` or ``trajectory``.
        spec: The sweep's spec.
        candidate: The trajectory's ratio or mix; None for a measurement (Optuna's ask decides
            it later).
        reuse: Rank 0 reuses the sweep it prepared for an earlier task, so every rank does.
    """

    task_id: int
    sweep_id: str
    kind: TaskKind
    spec: SweepSpec
    candidate: Candidate | None
    reuse: bool


@dataclass(frozen=True)
class _Idle:
    """No work this turn; the next message follows after a poll."""


@dataclass(frozen=True)
class _Dismiss:
    """Rank 0 stops (shutdown, or nothing left with ``--exit-when-idle``): every rank exits."""


@dataclass(frozen=True)
class _Go:
    """A decision: every rank goes on with ``value``."""

    value: object


@dataclass(frozen=True)
class _Stop:
    """A decision: every rank stops the task here (``TaskAbortedError(reason)``)."""

    reason: str


_Message = Order | _Idle | _Dismiss | _Go | _Stop


@dataclass(frozen=True)
class Crew:
    """One rank's view of its worker's group.

    Attributes:
        ranks: FSDP's group and the losses' side group (`workers.curvature.distributed`).
        control: A gloo group for the orders and decisions; rank 0 is its only sender.
        device: This rank's device (``cuda:<rank>`` or ``cpu``).
    """

    ranks: Ranks
    control: dist.ProcessGroup
    device: str

    def send(self, message: _Message) -> None:
        """Rank 0: tell every other rank."""
        dist.broadcast_object_list([message], src=0, group=self.control)

    def receive(self) -> _Message:
        """Another rank: wait for rank 0's next message (at most the group's timeout)."""
        box: list[object] = [None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        message = box[0]
        if not isinstance(message, Order | _Idle | _Dismiss | _Go | _Stop):
            raise RuntimeError(f"rank {self.ranks.rank} got {message!r} from rank 0")
        return message

    def leave(self) -> None:
        """Leave together after a dismissal (a rank tearing gloo down under another can abort)."""
        dist.barrier(group=self.control)
        dist.destroy_process_group()


def open_crew(
    rank: int, world: int, *, rendezvous: str, device: str, timeout: datetime.timedelta
) -> Crew:
    """Join the group of ``world`` ranks that meet at ``rendezvous`` (a file that does not exist
    yet); NCCL when ``device`` is a GPU, gloo on the CPU. Every collective, the orders' included,
    fails after ``timeout`` without the other ranks."""
    backend = "gloo" if device == "cpu" else "nccl"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=timeout
    )
    ranks = join(timeout=timeout)
    control = dist.new_group(list(range(world)), timeout=timeout, backend="gloo")
    assert control is not None
    return Crew(ranks, control, device)


class Leader:
    """Rank 0's side: the worker loop sends orders and decisions through it.

    Args:
        crew: Rank 0's view of the group.
    """

    def __init__(self, crew: Crew) -> None:
        self.crew = crew

    @property
    def ranks(self) -> Ranks:
        """The ranks the sweep's model is sharded over (`prepare(..., ranks=)`)."""
        return self.crew.ranks

    def assign(self, order: Order) -> None:
        """Tell every rank the task just claimed."""
        self.crew.send(order)

    def idle(self) -> None:
        """Tell every rank there was no work this turn (they wait with a timeout)."""
        self.crew.send(_Idle())

    def dismiss(self) -> None:
        """Tell every rank to exit, and leave the group with them."""
        self.crew.send(_Dismiss())
        self.crew.leave()

    def decide(self, decision: Callable[[], T]) -> T:
        """Take a decision here and tell it to every rank.

        Args:
            decision: Run on rank 0 only (it may read and write the database, or ask Optuna);
                its value must pickle. When it raises, every rank stops the task there.

        Returns:
            The decision's value, which every other rank's `Follower` step returns too.
        """
        try:
            value = decision()
        except TaskAbortedError as stop:
            self.crew.send(_Stop(str(stop)))
            raise
        except BaseException:
            # Rank 0 fails the task; the others stop alike, then exit with the spent group.
            self.crew.send(_Stop("error"))
            raise
        self.crew.send(_Go(value))
        return value


class Follower:
    """Any other rank: run what rank 0 orders, with rank 0's decisions, until dismissed.

    Args:
        crew: This rank's view of the group.
        policy: The loading policy (roots, cache, offline), the same as rank 0's.
        dtype: Model weights dtype (float32: a sharded sweep keeps float32 master weights).
        micro_batch_tokens: Tokens per forward or backward micro-batch, as on rank 0.
    """

    def __init__(
        self, crew: Crew, policy: LoadPolicy, *, dtype: torch.dtype, micro_batch_tokens: int
    ) -> None:
        self.crew = crew
        self.policy = policy
        self.dtype = dtype
        self.micro_batch_tokens = micro_batch_tokens
        self._prepared: tuple[str, PreparedSweep] | None = None

    def run(self) -> int:
        """Follow orders until rank 0 dismisses the group.

        Returns:
            The number of tasks this rank saw through (aborted ones left out).

        Raises:
            Exception: Whatever the computation raised (the group is spent then), or the
                control group's error when rank 0 died or fell silent past the timeout.
        """
        followed = 0
        while True:
            message = self.crew.receive()
            if isinstance(message, _Dismiss):
                self.crew.leave()
                return followed
            if isinstance(message, _Idle):
                continue
            if not isinstance(message, Order):
                raise RuntimeError(f"rank {self.crew.ranks.rank} expected an order, got {message}")
            try:
                self._follow(message)
            except TaskAbortedError as stop:
                log.info(
                    "rank %d: task %d stopped (%s)", self.crew.ranks.rank, message.task_id, stop
                )
                continue
            followed += 1

    def _next(self) -> object:
        """Rank 0's next decision; a stop raises here, where it raised on rank 0."""
        message = self.crew.receive()
        if isinstance(message, _Stop):
            raise TaskAbortedError(message.reason)
        if not isinstance(message, _Go):
            raise RuntimeError(f"rank {self.crew.ranks.rank} expected a decision, got {message}")
        return message.value

    def _checkpoint(self) -> None:
        self._next()

    def _follow(self, order: Order) -> None:
        prepared = self._prepare(order)
        if order.kind == TaskKind.measure:
            candidate = self._next()  # what Optuna asked rank 0 for
            assert isinstance(candidate, Candidate)
            prepared.measure_ratio(candidate, lambda _step: bool(self._next()))
            return
        assert order.candidate is not None  # trajectory tasks are created with their candidate
        self._checkpoint()  # rank 0 started the trial and the trajectory's row
        run_trajectory(
            prepared,
            order.candidate,
            on_measure=lambda _step, _points: bool(self._next()),
            checkpoint=self._checkpoint,
        )

    def _prepare(self, order: Order) -> PreparedSweep:
        if order.reuse:
            if self._prepared is None or self._prepared[0] != order.sweep_id:
                raise RuntimeError(f"rank {self.crew.ranks.rank} has no prepared sweep to reuse")
            return self._prepared[1]
        self._prepared = None  # one sweep's model and gradients in memory at a time, as rank 0
        prepared = prepare(
            order.spec,
            self.policy,
            device=self.crew.device,
            dtype=self.dtype,
            micro_batch_tokens=self.micro_batch_tokens,
            checkpoint=self._checkpoint,
            gradients=order.kind == TaskKind.measure,
            ranks=self.crew.ranks,
        )
        self._prepared = (order.sweep_id, prepared)
        return prepared
