"""Nothing lost, nothing run twice: the executor and the orchestrator under faults.

- the tmux server is killed under a job that ignores SIGTERM: never two copies of it, no retry used,
  and it is requeued only once its old processes are gone (also across a restart of the service);
- a job completed by hand keeps its GPUs until its processes are gone;
- a store write that fails when a job ends loses nothing: the job stays running with its GPUs, the
  executor keeps the end, and the next pass records it (the pass says so until then);
- deadlines are kept on the monotonic clock: a step of the wall clock moves none of them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable
from uuid import uuid4

import pytest

from tools.clock import RealClock, SimClock
from tools.models import JobSpec, JobStatus, StopReason
from tools.orchestrator import Orchestrator, UnrecordedEnds
from tools.sim_executor import SimExecutor
from tools.store import SqliteStore
from tools.tmux_executor import TmuxExecutor

from tests.builders import spec
from tests.cores import make_core
from tests.helpers import wait_until

S = JobStatus


# -- helpers ----------------------------------------------------------------------------------------
def processes_named(marker: str) -> list[int]:
    """Pids of live processes whose argv[0] is ``marker`` (zombies do not count)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0", 1)[0]
            state = Path(entry.path, "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv0 == marker.encode() and state != b"Z":
            found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


class Sampler:
    """Counts, every 5 ms in a thread, the processes ``count()`` finds; keeps the most seen and each
    change of the count with its time."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count, self.most, self.history = count, 0, []
        self.last_alive = float("-inf")  # the last time a sample found any process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            n = self.count()
            if n:
                self.last_alive = time.time()
            self.most = max(self.most, n)
            if n != last:
                self.history.append((time.time(), n))
                last = n
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def kill_all(marker: str) -> None:
    """End the processes this test started (found by their marker), by pid."""
    for pid in processes_named(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tick_until(orch: Orchestrator, condition: Callable[[], object], what: str, timeout_s: float = 15.0):
    def ticked():
        orch.tick()
        return condition()

    return wait_until(ticked, timeout_s, 0.05, what=what, pause=orch.executor.wait)


class FlakyStore:
    """A store whose write recording a job's end (leaving ``running``) fails ``failures`` times, as a
    full disk or a locked database makes it fail; everything else goes to the real store."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.failures = 0
        self.failed = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def save_job(self, job, event) -> None:
        old = self._inner.get_job(job.id)
        if self.failures and old is not None and old.status == S.RUNNING and job.status != S.RUNNING:
            self.failures -= 1
            self.failed += 1
            raise sqlite3.OperationalError("disk I/O error")
        self._inner.save_job(job, event)


@pytest.fixture
def tmux_core(tmp_path: Path):
    """``make(**executor_kw)``: an orchestrator on one node with one GPU, a real clock, a SQLite store and
    a TmuxExecutor on a private server (killed at the end)."""
    socket = f"herd-test-{uuid4().hex[:8]}"
    made = []

    def make(store=None, grace_s: float = 1.0, **kw) -> Orchestrator:
        executor = TmuxExecutor(tmp_path / "work", socket_name=socket, window_check_s=0.1, lost_grace_s=1.0, **kw)
        store = store if store is not None else SqliteStore(tmp_path / "herd.db")
        orch = make_core(nodes={"local": 1}, store=store, executor=executor, clock=RealClock(), policy="priority",
                         grace_s=grace_s).orchestrator
        made.append(executor)
        return orch

    yield make
    for executor in made:
        executor.close()
    if made:
        made[-1].shutdown_server()


# -- the tmux server is killed under a job that ignores SIGTERM ---------------------------------------
@pytest.mark.tmux
@pytest.mark.slow
def test_killing_tmux_never_runs_a_job_twice_and_uses_no_retry(tmux_core):
    orch = tmux_core()
    marker = f"herdmark-{uuid4().hex[:8]}"
    sampler, old = Sampler(lambda: len(processes_named(marker))), None
    try:
        job = orch.submit(JobSpec(user="ana", command=f'trap "" TERM HUP; exec -a {marker} sleep 120', gpu_count=1,
                                  max_retries=0))
        tick_until(orch, lambda: processes_named(marker), "the job to run")
        first = processes_named(marker)
        old = Sampler(lambda: len([p for p in processes_named(marker) if p in first]))

        killed_at = time.time()
        subprocess.run(["tmux", "-L", orch.executor.socket_name, "kill-server"], capture_output=True, timeout=10)
        # Its window is gone, its process lives on (it ignores SIGTERM and SIGHUP): the job is not ended.
        orch.tick()
        time.sleep(0.3)
        orch.tick()
        assert orch.queue.get(job.id).status == S.RUNNING and processes_named(marker) == first

        again = tick_until(orch, lambda: [p for p in processes_named(marker) if p not in first], "the job to run again")
        requeued = orch.queue.get(job.id)
        assert requeued.status == S.RUNNING and requeued.max_retries == 0  # no retry was left, none was used
        events = orch.queue.store.events(job_id=job.id)
        lost = [e for e in events if e.kind == "queued"]
        assert len(lost) == 1 and "lost by the executor" in lost[0].message and "no retry used" in lost[0].message
        assert sampler.most == 1, f"two copies of the job ran at once: {sampler.history}"
        old.stop()
        assert lost[0].time >= old.last_alive, "requeued while its old process still ran"
        print(f"\ntmux killed -> old process last seen {old.last_alive - killed_at:.2f} s later (lost grace 1 s) -> "
              f"requeued {(lost[0].time - old.last_alive) * 1000:.0f} ms after that -> running again as pid {again[0]}")
    finally:
        sampler.stop()
        if old is not None:
            old.stop()
        kill_all(marker)


@pytest.mark.tmux
@pytest.mark.slow
def test_a_job_lost_while_the_service_was_down_is_requeued_once_its_processes_are_gone(tmux_core, tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    orch = tmux_core(store=store)
    marker = f"herdmark-{uuid4().hex[:8]}"
    sampler = Sampler(lambda: len(processes_named(marker)))
    try:
        job = orch.submit(JobSpec(user="ana", command=f'trap "" TERM HUP; exec -a {marker} sleep 120', gpu_count=1,
                                  max_retries=0))
        tick_until(orch, lambda: processes_named(marker), "the job to run")
        orch.executor.close()  # the service goes away...
        subprocess.run(["tmux", "-L", orch.executor.socket_name, "kill-server"], capture_output=True, timeout=10)
        time.sleep(0.2)  # ...and so does tmux, while the job runs on

        orch2 = tmux_core(store=store)
        orch2.reconcile()  # its window is gone but its process lives: not ended yet
        assert orch2.queue.get(job.id).status == S.RUNNING and len(processes_named(marker)) == 1
        tick_until(orch2, lambda: [e.kind for e in orch2.queue.store.events(job_id=job.id)][-3:] == ["queued", "scheduled", "running"],
                   lambda: f"the job to run again: {[e.message for e in orch2.queue.store.events(job_id=job.id)]}")
        assert sampler.most == 1, f"two copies of the job ran at once: {sampler.history}"
    finally:
        sampler.stop()
        kill_all(marker)


@pytest.mark.tmux
def test_a_killed_window_is_an_end_that_uses_no_retry(tmux_core):
    orch = tmux_core()
    job = orch.submit(JobSpec(user="ana", command="sleep 30", gpu_count=1, max_retries=0))
    tick_until(orch, lambda: (orch.executor.job_dir(job.id) / "pgid").exists(), "the job to start")
    ex = orch.executor
    ex._tmux("kill-window", "-t", f"={ex.session_name}:={ex.window_name(job.id)}")
    # It ends with 143 (its wrapper passes the hangup on as SIGTERM), but that is not its failure.
    tick_until(orch, lambda: any(e.kind == "queued" for e in orch.queue.store.events(job_id=job.id)), "the requeue")
    assert orch.queue.get(job.id).status in (S.QUEUED, S.RUNNING)
    orch.cancel(job.id)


# -- complete by hand: the GPUs follow the processes ------------------------------------------------
TRAPS_TERM = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.05; done"


def written(path: Path) -> bool:
    """Whether the wrapper's one newline-ended write of ``path`` is complete."""
    try:
        return path.read_text().endswith("\n")
    except FileNotFoundError:
        return False


@pytest.mark.tmux
@pytest.mark.slow
def test_complete_keeps_the_gpus_until_the_processes_are_gone(tmux_core):
    orch = tmux_core(grace_s=1.5)
    a = orch.submit(JobSpec(user="ana", command=TRAPS_TERM, gpu_count=1, priority=9))
    tick_until(orch, lambda: orch.queue.get(a.id).status == S.RUNNING and "ready" in Path(orch.queue.get(a.id).log_path).read_text()
               and written(orch.executor.job_dir(a.id) / "pgid"), "job a to run")
    b = orch.submit(JobSpec(user="bo", command="sleep 30", gpu_count=1, priority=1))
    pgid = int((orch.executor.job_dir(a.id) / "pgid").read_text().split()[0])

    sampler = Sampler(lambda: len(group_members(pgid)))
    try:
        asked = time.time()
        answer = orch.complete(a.id, exit_code=0)
        assert (answer.status, answer.stop_reason) == (S.RUNNING, StopReason.COMPLETE)
        while orch.queue.get(b.id).status == S.QUEUED:
            assert time.time() - asked < 10, "job b never started"
            orch.tick()
            if orch.queue.get(b.id).status != S.QUEUED:
                assert not group_members(pgid), "job b started while job a's processes still ran"
            orch.executor.wait(0.02)
    finally:
        sampler.stop()
    done = orch.queue.get(a.id)
    assert (done.status, done.exit_code, done.stop_reason) == (S.COMPLETED, 0, None)
    # Samples are 5 ms apart: the last one that found a process of job a bounds its death from below.
    last_alive, started = sampler.last_alive, orch.queue.get(b.id).start_time
    assert started >= last_alive >= asked + 1.4  # it ignored SIGTERM: alive until the SIGKILL after the grace (1.5 s)
    print(f"\ncomplete -> processes last seen {last_alive - asked:.2f} s later (grace 1.5 s) -> GPU to job b "
          f"{(started - last_alive) * 1000:.0f} ms after that")
    assert "got TERM" in Path(done.log_path).read_text()
    orch.cancel(b.id)


def test_complete_records_the_exit_code_asked_for_once_the_job_ends():
    sim = SimExecutor()
    sim.stop = lambda job_id, now, grace_s: None  # the process takes its time to end
    core = make_core(nodes={"n1": 1}, executor=sim)
    orch, clock = core.orchestrator, core.clock
    a, b = orch.submit(spec()), orch.submit(spec())
    orch.tick()
    job = orch.complete(a.id, exit_code=3)
    assert (job.status, job.stop_reason, job.exit_code) == (S.RUNNING, StopReason.COMPLETE, 3)
    clock.advance(5)
    assert orch.tick().started == ()  # its GPU is still held
    assert orch.queue.get(b.id).status == S.QUEUED
    sim.finish(a.id, 143, clock.now())  # the process ends (SIGTERM)
    report = orch.tick()
    assert report.finished == (a.id,) and report.started == (b.id,)
    job = orch.queue.get(a.id)
    assert (job.status, job.exit_code, job.stop_reason) == (S.FAILED, 3, None)


# -- a failed store write at a job's end ----------------------------------------------------------
def test_a_failed_end_write_keeps_the_job_running_and_is_recorded_on_the_next_pass(tmp_path):
    store = FlakyStore(SqliteStore(tmp_path / "herd.db"))
    sim = SimExecutor(duration_of=lambda job: 10.0 if job.id == 1 else None, exit_code_of=lambda job: 0)
    core = make_core(nodes={"n1": 1}, store=store, executor=sim)
    orch, clock = core.orchestrator, core.clock
    a, b = orch.submit(spec()), orch.submit(spec())
    orch.tick()
    store.failures = 2
    clock.advance(10)
    for attempt in (1, 2):
        with pytest.raises(UnrecordedEnds, match="disk I/O error") as raised:
            orch.tick()
        assert raised.value.report.unrecorded == (a.id,) and orch.last_tick.unrecorded == (a.id,)
        assert orch.queue.get(a.id).status == S.RUNNING  # still recorded as running...
        assert orch.snapshot().holders == {("n1", 0): a.id}  # ...with its GPU
        assert orch.queue.get(b.id).status == S.QUEUED
        assert [e.job_id for e in sim.poll(clock.now())] == [a.id]  # the executor has not forgotten it
        clock.advance(1)
    report = orch.tick()  # the disk is back
    assert report.finished == (a.id,) and report.started == (b.id,) and report.unrecorded == ()
    job = orch.queue.get(a.id)
    assert (job.status, job.exit_code, job.end_time) == (S.COMPLETED, 0, 10.0)  # when it really ended
    assert sim.poll(clock.now()) == []
    assert store.get_usage()["alice"][0] == pytest.approx(10.0)  # charged once


@pytest.mark.slow
def test_the_service_keeps_its_last_error_while_an_end_is_unrecorded(make_api):
    api = make_api(durations={1: 5}, run_loop=True)
    queue = api.service.queue
    flaky = FlakyStore(queue.store)
    queue.store = flaky
    job_id = api.submit_ok()
    wait_until(lambda: api.job(job_id)["status"] == "running", 5, what="the job to start")
    flaky.failures = 2
    api.clock.advance(5)
    api.service.wake()
    wait_until(lambda: flaky.failed >= 1 and api.service.last_error, 5, what="the failed write")
    assert "UnrecordedEnds" in api.service.last_error and f"job(s) {job_id}" in api.service.last_error
    assert api.job(job_id)["status"] == "running"
    wait_until(lambda: api.job(job_id)["status"] == "completed", 10, what="the end to be recorded")
    wait_until(lambda: api.service.last_error is None, 5, what="the error to clear")


@pytest.mark.tmux
def test_a_failed_end_write_with_real_processes(tmux_core, tmp_path):
    store = FlakyStore(SqliteStore(tmp_path / "herd.db"))
    orch = tmux_core(store=store)
    job = orch.submit(JobSpec(user="ana", command="exit 3", gpu_count=1, max_retries=0))
    store.failures = 1
    with pytest.raises(UnrecordedEnds):
        tick_until(orch, lambda: False, "the end", timeout_s=10)
    assert orch.queue.get(job.id).status == S.RUNNING
    assert [e.exit_code for e in orch.executor.poll(time.time())] == [3]
    orch.tick()
    assert (orch.queue.get(job.id).status, orch.queue.get(job.id).exit_code) == (S.FAILED, 3)
    assert orch.executor.poll(time.time()) == []


# -- deadlines on the monotonic clock ---------------------------------------------------------------
@pytest.mark.parametrize("step", [-1000.0, +1000.0], ids=["wall-clock-back", "wall-clock-forward"])
def test_a_step_of_the_wall_clock_moves_no_time_limit(step):
    clock = SimClock(1_000_000.0)
    core = make_core(nodes={"n1": 1}, clock=clock)
    orch = core.orchestrator
    job = orch.submit(spec(time_limit_s=30))
    orch.tick()
    clock.advance(20)
    clock.step_wall(step)
    orch.tick()
    assert orch.queue.get(job.id).stop_reason is None  # 20 s ran, whatever the wall clock says
    clock.advance(9)
    orch.tick()
    assert orch.queue.get(job.id).stop_reason is None
    clock.advance(1)
    orch.tick()  # 30 s ran: stopped
    assert orch.queue.get(job.id).stop_reason == StopReason.TIME_LIMIT
    orch.tick()
    assert (orch.queue.get(job.id).status, orch.queue.get(job.id).exit_code) == (S.FAILED, 143)


def test_an_adopted_job_keeps_its_time_limit_from_its_start(tmp_path):
    clock = SimClock(1_000_000.0)
    store = SqliteStore(tmp_path / "herd.db")
    sim = SimExecutor()
    orch = make_core(nodes={"n1": 1}, clock=clock, store=store, executor=sim).orchestrator
    job = orch.submit(spec(time_limit_s=30))
    orch.tick()
    clock.advance(25)  # the service restarts 25 s into the job
    orch2 = make_core(nodes={"n1": 1}, clock=clock, store=store, executor=sim).orchestrator
    orch2.reconcile()
    orch2.tick()
    clock.step_wall(-3600)
    clock.advance(5)
    orch2.tick()
    assert orch2.queue.get(job.id).stop_reason == StopReason.TIME_LIMIT


@pytest.mark.tmux
def test_the_kill_after_a_stop_waits_on_the_monotonic_clock(tmp_path):
    clock = SimClock(1_000_000.0)
    ex = TmuxExecutor(tmp_path / "work", socket_name=f"herd-test-{uuid4().hex[:8]}", clock=clock)
    from tools.models import Allocation, Job
    try:
        ex.start(Job(id=1, user="u", command="trap '' TERM; echo ready; sleep 30", gpu_count=1, submit_time=0.0),
                 Allocation(node="local", gpus=(0,)), clock.now())
        # Its trap is set once it says so (a TERM before that would end it at once).
        wait_until(lambda: ex.log_path(1).exists() and "ready" in ex.log_path(1).read_text(), 5,
                   what="the job to ignore SIGTERM")
        ex.stop(1, clock.now(), grace_s=5.0)
        clock.step_wall(+3600)  # a step of the wall clock sends no SIGKILL
        time.sleep(0.5)
        assert ex.poll(clock.now()) == []
        clock.advance(5)
        e = wait_until(lambda: ex.poll(clock.now()), 5, 0.05, what="the SIGKILL")
        assert e[0].exit_code == 137
    finally:
        ex.shutdown_server()
