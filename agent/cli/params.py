"""Values on the command line: durations (read by tools.timespec), job ids and array tasks, GPU indices,
job states (Slurm's short names too), and ``--export``."""

from __future__ import annotations

from typing import Any, Callable

import click

from tools import timespec


class Parsed(click.ParamType):
    """A value read by ``parse``; its ValueError is the message of the usage error."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a job id (a number, as `herd queue` shows)") from None
    if value < 1:
        raise ValueError("job ids start at 1")
    return value


def _job_ref(text: str) -> str:
    """``12`` (a job, or a whole array where an array is meant) or ``12_3`` (task 3 of array 12)."""
    array, sep, index = text.strip().partition("_")
    _job_id(array)
    if sep and not index.isdigit():
        raise ValueError(f"{text!r} is not an array task; write e.g. 12_3 (task 3 of array 12)")
    return text.strip()


def _gpu_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a list of GPU indices; write e.g. 0,1") from None


DURATION = Parsed("duration", timespec.parse_duration)  # 2h, 90m, 1h30m, 2:00:00, 1-12:00:00, 120 (minutes)
JOB = Parsed("job", _job_id)
JOB_REF = Parsed("job", _job_ref)  # 12, or 12_3 for a task of array 12
JOBS = Parsed("job[,job]", lambda text: [_job_id(part) for part in text.split(",")])
GPU_IDS = Parsed("0,1", _gpu_ids)



# Job states as Slurm's squeue and sacct write them, and as gpuherd does.
STATE_NAMES = {"queued": "queued", "pending": "queued", "pd": "queued", "scheduled": "scheduled",
               "running": "running", "r": "running", "completed": "completed", "cd": "completed",
               "failed": "failed", "f": "failed", "cancelled": "cancelled", "canceled": "cancelled", "ca": "cancelled",
               "timeout": "timeout", "to": "timeout"}


def _states(text: str) -> list[str]:
    found = []
    for part in text.split(","):
        name = STATE_NAMES.get(part.strip().lower())
        if name is None:
            raise ValueError(f"{part.strip()!r} is not a state; write e.g. queued (PD), running (R), completed, "
                             "failed, cancelled, timeout, or several with commas")
        found.append(name)
    return list(dict.fromkeys(found))


STATES = Parsed("state[,state]", _states)


def _columns(choices: tuple[str, ...]) -> Parsed:
    def parse(text: str) -> list[str]:
        names = [part.strip().lower() for part in text.split(",") if part.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise ValueError(f"{', '.join(unknown) or 'nothing'}: choose columns from {','.join(choices)}")
        return names
    return Parsed("col,col,...", parse)


COLUMNS = _columns
