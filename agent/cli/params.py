"""Values on the command line: durations (read by tools.timespec), job ids, GPU indices, the user."""

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


def _gpu_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a list of GPU indices; write e.g. 0,1") from None


DURATION = Parsed("duration", timespec.parse_duration)  # 2h, 90m, 1h30m: a unit is required
JOB = Parsed("job", _job_id)
JOBS = Parsed("job[,job]", lambda text: [_job_id(part) for part in text.split(",")])
GPU_IDS = Parsed("0,1", _gpu_ids)


