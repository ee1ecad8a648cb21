"""Verdicts on what the GPU samples show, each a pure function of readings and a little state:

- ``idle_step``: whether a job has held its GPUs idle long enough to say so (once per idle spell);
- ``health_problem``: whether a GPU's XIDs or uncorrectable ECC errors mean it should take no more jobs;
- ``describe_foreign``: who uses a GPU outside gpuherd, in the words a pending job's reason shows.

The sampler (``tools.door.watch``) feeds them and carries out what they decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tools.models import GpuMetrics, GpuProcess

# XIDs that say the GPU itself is failing (NVIDIA's XID catalogue and DCGM's health checks): memory
# errors (48 double-bit ECC, 63/64 row remapping, 92 high single-bit rate, 94/95 contained and
# uncontained ECC), 61/62 internal micro-controller faults, 74 NVLink, 79 fallen off the bus,
# 119/120 GSP faults. Others (13 graphics exception, 31 MMU fault, 43 stopped channel, 45 preemptive
# cleanup) are usually a program's own fault and leave the GPU usable.
FAILING_XIDS = frozenset({48, 61, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120})


@dataclass(frozen=True)
class IdleSpell:
    """A job's GPUs under the idle threshold since ``since``: the mean of its samples so far, and
    whether the spell was already reported."""

    since: float
    util_sum: float = 0.0
    samples: int = 0
    reported: bool = False

    @property
    def mean_pct(self) -> float:
        return self.util_sum / self.samples if self.samples else 0.0


def idle_step(spell: IdleSpell | None, time: float, utilization_pct: float | None, *, threshold_pct: float,
              after_s: float) -> tuple[IdleSpell | None, bool]:
    """The job's spell after a sample of its mean utilization at ``time``, and whether to report it now.

    A sample at or above ``threshold_pct`` ends the spell; an unmeasured one (None) changes nothing, so a
    GPU that cannot be read is never called idle. A spell is reported once, when it has lasted
    ``after_s``; the next one begins after the job is busy again."""
    if utilization_pct is None:
        return spell, False
    if utilization_pct >= threshold_pct:
        return None, False
    if spell is None:
        spell = IdleSpell(since=time)
    spell = IdleSpell(spell.since, spell.util_sum + utilization_pct, spell.samples + 1, spell.reported)
    if not spell.reported and time - spell.since >= after_s:
        return IdleSpell(spell.since, spell.util_sum, spell.samples, True), True
    return spell, False


def health_problem(metrics: GpuMetrics, ecc_before: int | None) -> str | None:
    """Why a GPU that answered should take no more jobs, or None: a failing XID in this reading, or more
    uncorrectable ECC errors than ``ecc_before`` (the count when it was last judged; None: never)."""
    failing = sorted({x for x in metrics.xids if x in FAILING_XIDS})
    if failing:
        return f"XID {', '.join(map(str, failing))} reported by the driver"
    ecc = metrics.ecc_uncorrected
    if ecc is not None and ecc > (ecc_before or 0):
        return f"{ecc} uncorrectable ECC error(s) since the driver loaded"
    return None


def describe_process(p: GpuProcess) -> str:
    who = p.user or (f"uid {p.uid}" if p.uid is not None else "an unknown user")
    return f"{who} ({p.name or 'process'} {p.pid})"


def describe_foreign(gpus: Iterable[tuple[str, int, tuple[GpuProcess, ...]]]) -> str:
    """``GPU a:3 is used outside gpuherd by alice (python 4242)`` for each (node, index, processes)."""
    parts = [f"GPU {node}:{index} is used outside gpuherd by {', '.join(map(describe_process, procs))}"
             for node, index, procs in gpus]
    return "; ".join(parts)
