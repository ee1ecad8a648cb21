"""The executor interface: how the orchestrator starts, stops and watches jobs.

Adapters with twins: ``TmuxExecutor`` runs real processes on one node, ``SimExecutor`` replays
durations for tests and evals. The orchestrator never knows which one it has.

An end is handed over, not thrown over: ``poll`` reports a job's end on every call until the
orchestrator has stored it and says so with ``forget``. A store write that fails (disk full, a
read-only directory, a locked database) therefore loses nothing: the same end comes back on the next
pass and is recorded then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from tools.models import Allocation, Job


class StartError(RuntimeError):
    """The executor could not start a job; the orchestrator releases its GPUs and requeues it."""


@dataclass(frozen=True)
class JobExit:
    job_id: int
    exit_code: int | None  # None: the job vanished without leaving an exit code
    end_time: float
    # The executor lost the job (its tmux window or server went away, its wrapper was killed), so
    # the end is the infrastructure's failure, not the job's: whatever the exit code says (143 or
    # 129 from the hangup), it is requeued without using a retry unless it exited 0 or was being
    # stopped. Reported only once none of the job's processes is left.
    lost: bool = False
    # Why it was lost, in words for its events ("node gpu02 left the Ray cluster"); None: nothing to add.
    why: str | None = None


class Executor(Protocol):
    """An executor may also have ``start_many(starts, now)``: ``start`` of each (job, allocation), in
    order, giving each one's log path or the ``StartError`` that kept it from starting; the orchestrator
    then starts a pass's jobs together (the tmux executor opens their windows back to back)."""

    def start(self, job: Job, allocation: Allocation, now: float) -> str:
        """Start ``job`` on ``allocation``; return its log path. Raise ``StartError`` on failure."""
        ...

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        """Ask a job to end: SIGTERM to its process group now, SIGKILL ``grace_s`` later (measured on
        a monotonic clock). Returns at once; the kill is sent by a later ``poll``, which also reports
        the end once the job's processes are gone."""
        ...

    def poll(self, now: float) -> list[JobExit]:
        """Every job that has ended and is not yet forgotten (so an end is reported again and again
        until ``forget``); sends SIGKILLs that are due."""
        ...

    def forget(self, job_id: int) -> None:
        """The orchestrator has stored the end of ``job_id`` (or no longer needs it): stop reporting it."""
        ...

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        """After a restart: adopt the listed jobs that still run, report the ones that ended (kept,
        like ``poll``'s, until forgotten)."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Block until a job may have ended or ``timeout_s`` passed (returns at once if simulated)."""
        ...

    def close(self) -> None:
        """Release the executor's own resources; running jobs keep running."""
        ...


# An executor that runs jobs on several nodes (``tools.ray_executor.RayExecutor``) also has:
#   nodes() -> tuple[Node, ...] | None     the nodes (and GPUs) it can reach now, as their agents report
#                                          them; the orchestrator makes them the inventory after each
#                                          collect, so a node that left has handed over its jobs' ends first
#   read_log(job, *, tail, offset, length, rank) -> LogChunk
#                                          a job's log, read where the job ran (rank: a gang job's part)
# and a job larger than one node (``Allocation.more``) is a gang: one part per node, ended together.
