"""The executor interface: how the orchestrator starts, stops and watches jobs.

Adapters with twins: ``TmuxExecutor`` runs real processes on one node, ``SimExecutor`` replays
durations for tests and evals. The orchestrator never knows which one it has.
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


class Executor(Protocol):
    def start(self, job: Job, allocation: Allocation, now: float) -> str:
        """Start ``job`` on ``allocation``; return its log path. Raise ``StartError`` on failure."""
        ...

    def stop(self, job_id: int, now: float, grace_s: float) -> None:
        """Ask a job to end: SIGTERM to its process group now, SIGKILL at ``now + grace_s``.

        Returns at once; the kill is sent by a later ``poll`` and the end is reported by ``poll``.
        """
        ...

    def poll(self, now: float) -> list[JobExit]:
        """Jobs that ended since the last call (each reported once); sends SIGKILLs that are due."""
        ...

    def recover(self, job_ids: Iterable[int], now: float) -> list[JobExit]:
        """After a restart: adopt the listed jobs that still run, report the ones that ended."""
        ...

    def wait(self, timeout_s: float) -> None:
        """Block until a job may have ended or ``timeout_s`` passed (returns at once if simulated)."""
        ...

    def close(self) -> None:
        """Release the executor's own resources; running jobs keep running."""
        ...
