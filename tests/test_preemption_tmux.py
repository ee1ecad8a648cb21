"""Preemption end to end with real processes: the orchestrator on a real clock drives a TmuxExecutor on a
private tmux server. A preemptible low-priority job holds the only GPU; a high-priority job arrives; the
victim gets SIGTERM at once and SIGKILL only after the preemption grace (unless it exits first), is
requeued under its own id, and runs again, to completion, once the high-priority job is done."""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from uuid import uuid4

import pytest

from policies.rules import Rules
from tools.clock import RealClock
from tools.models import JobSpec, JobStatus, StopReason
from tools.orchestrator import Orchestrator
from tools.store import SqliteStore
from tools.tmux_executor import TmuxExecutor

from tests.cores import make_core
from tests.helpers import wait_until

pytestmark = [pytest.mark.tmux, pytest.mark.slow]

GRACE_S = 2.0

# The victim's first run installs a SIGTERM trap that stamps the time into ``term``, says it is ready,
# then keeps beating (a timestamp every 50 ms, written whole: SIGKILL may land mid-write) until it dies.
# ``$EPOCHREALTIME`` is the epoch time,
# as ``time.time()`` reads it. A later run finds the stamp and ends at once: it "resumed".
VICTIM = r"""
dir={dir}
if [ -e "$dir/term" ]; then echo "resumed after preemption"; exit 0; fi
trap 'echo "$EPOCHREALTIME" >> "$dir/term"{on_term}' TERM
echo "$EPOCHREALTIME" > "$dir/ready"
while :; do echo "$EPOCHREALTIME" > "$dir/beat.tmp" && mv -f "$dir/beat.tmp" "$dir/beat"; sleep 0.05; done
"""
IGNORES_SIGTERM = ""  # the trap only stamps: SIGKILL is needed
EXITS_ON_SIGTERM = "; exit 143"  # a job that checkpoints and leaves


@pytest.fixture
def orchestrator(tmp_path: Path):
    """An orchestrator on one declared node with one GPU, a real clock and a private tmux server."""
    executor = TmuxExecutor(tmp_path / "work", socket_name=f"herd-test-{uuid4().hex[:8]}")
    store = SqliteStore(tmp_path / "herd.db")
    orch = make_core(nodes={"local": 1}, store=store, executor=executor, clock=RealClock(), policy="priority",
                     rules=Rules(preempt_priority_gap=2, preempt_min_runtime_s=0), preempt_grace_s=GRACE_S).orchestrator
    yield orch
    executor.shutdown_server()
    store.close()


def tick_until(orch: Orchestrator, condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Tick as the service does (waking when a job ends) until ``condition`` holds."""

    def ticked() -> bool:
        orch.tick()
        return condition()

    # short pauses: the SIGKILL is sent by the first poll past its deadline
    wait_until(ticked, timeout_s, 0.05, what=what, pause=orch.executor.wait)


def event_time(orch: Orchestrator, job_id: int, kind: str, nth: int = 1) -> float:
    times = [e.time for e in orch.queue.store.events(job_id=job_id) if e.kind == kind]
    assert len(times) >= nth, f"job {job_id} has {len(times)} {kind!r} event(s), expected {nth}"
    return times[nth - 1]


@pytest.mark.parametrize("on_term", [IGNORES_SIGTERM, EXITS_ON_SIGTERM], ids=["ignores-sigterm", "exits-on-sigterm"])
def test_a_preempted_job_is_requeued_and_runs_again_after_the_urgent_one(orchestrator, tmp_path, on_term):
    orch = orchestrator
    state = tmp_path / "victim"
    state.mkdir()
    victim = orch.submit(JobSpec(user="lo", command=VICTIM.format(dir=state, on_term=on_term), gpu_count=1, priority=1,
                                 preemptible=True, max_retries=0))
    tick_until(orch, lambda: (state / "ready").exists(), "the victim to start and install its trap")
    assert orch.queue.get(victim.id).status == JobStatus.RUNNING

    urgent = orch.submit(JobSpec(user="hi", command="sleep 0.3; echo urgent on GPU $CUDA_VISIBLE_DEVICES",
                                 gpu_count=1, priority=10, max_retries=0))
    orch.tick()
    stopping = orch.queue.get(victim.id)
    assert (stopping.status, stopping.stop_reason) == (JobStatus.RUNNING, StopReason.PREEMPT)
    assert orch.queue.get(urgent.id).status == JobStatus.QUEUED  # its GPU is not free yet
    preempted_at = event_time(orch, victim.id, "preempting")

    tick_until(orch, lambda: orch.queue.get(victim.id).status != JobStatus.RUNNING, "the victim to end")
    requeued = orch.queue.get(victim.id)
    requeued_at = event_time(orch, victim.id, "queued")
    term_at = float((state / "term").read_text().split()[0])
    last_beat = float((state / "beat").read_text() or "0")

    # Requeued under its own id, the preempted attempt counted but no retry used (it has none).
    assert requeued.id == victim.id
    assert (requeued.status, requeued.attempts, requeued.preemptions) == (JobStatus.QUEUED, 1, 1)
    assert requeued.stop_reason is None and requeued.pending_reason is not None
    assert len(orch.queue.store.list_jobs()) == 2
    # SIGTERM came at once.
    assert preempted_at <= term_at < preempted_at + 1.0
    if on_term == IGNORES_SIGTERM:
        # It kept running through the whole grace, and only SIGKILL ended it.
        assert requeued.exit_code == 137
        assert last_beat >= preempted_at + GRACE_S - 0.5
        assert preempted_at + GRACE_S <= requeued_at < preempted_at + GRACE_S + 2.0
    else:
        # It left on SIGTERM: requeued well before the SIGKILL would have come.
        assert requeued.exit_code == 143
        assert requeued_at < preempted_at + GRACE_S - 0.5

    tick_until(orch, lambda: orch.queue.get(victim.id).status in (JobStatus.COMPLETED, JobStatus.FAILED),
               "the urgent job to run and the victim to run again")
    urgent_done, victim_done = orch.queue.get(urgent.id), orch.queue.get(victim.id)
    assert (urgent_done.status, urgent_done.exit_code, urgent_done.attempts) == (JobStatus.COMPLETED, 0, 1)
    assert (victim_done.status, victim_done.exit_code) == (JobStatus.COMPLETED, 0)
    assert (victim_done.attempts, victim_done.preemptions) == (2, 1)
    # One GPU: the urgent job ran only once the victim was gone, and the victim only after it.
    assert event_time(orch, urgent.id, "running") >= requeued_at
    assert event_time(orch, victim.id, "running", nth=2) >= urgent_done.end_time
    assert Path(urgent_done.log_path).read_text() == "urgent on GPU 0\n"
    assert Path(victim_done.log_path).read_text().splitlines()[-1] == "resumed after preemption"
