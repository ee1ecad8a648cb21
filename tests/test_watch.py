"""The GPU watch against the NVML twin and a fake /proc: readings (ECC, XIDs, processes and who owns
them), each GPU's series, a job's usage, idle jobs, GPUs used outside gpuherd, failing GPUs."""

from __future__ import annotations

import re
from pathlib import Path

import pynvml
import pytest

from policies.watch import IdleSpell, health_problem, idle_step
from tests.cores import make_core
from tests.fake_nvml import FakeGpu, FakeNvml, FakeProcess, h100s
from tools.clock import SimClock
from tools.door import accounting, jobs, observe
from tools.door.cluster import GetClusterState, GpuState, get_cluster_state
from tools.door.context import OPERATOR, ToolContext
from tools.door.samples import GpuPoint, GpuSeries
from tools.door.watch import GetGpuSamples, IdleRules, gpu_samples, watch
from tools.inventory import NO_READING
from tools.models import GpuMetrics, JobRequest, JobStatus, PendingReason
from tools.nvml import AttributedProbe, NvmlProbe, attribute, lineage
from tools.store import SqliteStore

MIN = 60.0


def fake_proc(root: Path, pid: int, comm: str, *, ppid: int = 1, pgid: int | None = None, sid: int | None = None,
              uid: int = 1000) -> None:
    """A /proc entry: comm, stat (ppid, pgid, session) and status (Uid), as the kernel writes them."""
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pgid or pid} {sid or pid} 0 -1 4194560 0 0 0 0\n")
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


# -- the pure verdicts ------------------------------------------------------------------------------
def test_an_idle_spell_is_reported_once_and_a_busy_sample_ends_it():
    spell, told = None, []
    for minute, util in enumerate([1, 0, 2, None, 0, 1, 0, 50, 0, 0, 0]):
        spell, now = idle_step(spell, minute * MIN, util, threshold_pct=5, after_s=3 * MIN)
        told.append(now)
    # idle from minute 0; minute 3 unmeasured (no verdict), reported at 4 (not again at 5-6), busy at 7; a new
    # spell from minute 8
    assert told == [False, False, False, False, True, False, False, False, False, False, False]
    assert spell == IdleSpell(since=8 * MIN, util_sum=0, samples=3, reported=False)
    spell, now = idle_step(spell, 11 * MIN, 0, threshold_pct=5, after_s=3 * MIN)
    assert now and spell.reported and spell.mean_pct == 0


def test_an_unmeasured_sample_never_makes_a_job_idle():
    assert idle_step(None, 10_000.0, None, threshold_pct=5, after_s=0) == (None, False)


def test_failing_xids_and_new_ecc_errors_are_problems_a_programs_own_xid_is_not():
    assert health_problem(GpuMetrics(xids=(13, 31)), None) is None  # a program's fault: the GPU is fine
    assert health_problem(GpuMetrics(xids=(13, 79)), None) == "XID 79 reported by the driver"
    assert health_problem(GpuMetrics(ecc_uncorrected=2), 2) is None  # already judged
    assert health_problem(GpuMetrics(ecc_uncorrected=3), 2) == "3 uncorrectable ECC error(s) since the driver loaded"
    assert health_problem(GpuMetrics(ecc_uncorrected=None), None) is None  # no ECC on this board


# -- the probe ----------------------------------------------------------------------------------------
def test_probe_reads_ecc_and_says_none_where_the_board_has_no_ecc(tmp_path):
    nvml = FakeNvml([FakeGpu(uuid="GPU-a", ecc_uncorrected=2), FakeGpu(uuid="GPU-b", unsupported={"ecc"})])
    got = NvmlProbe("n", nvml, proc_root=tmp_path).metrics()
    assert (got[0].ecc_uncorrected, got[1].ecc_uncorrected) == (2, None)
    assert got[1].utilization_pct == 0  # the rest of the board still reads


def test_probe_reads_each_xid_once_and_a_board_without_events_reports_none(tmp_path):
    nvml = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", unsupported={"events"}), FakeGpu(uuid="GPU-c")])
    p = NvmlProbe("n", nvml, proc_root=tmp_path)
    assert all(m.xids == () for m in p.metrics().values())  # registers for events on the first reading
    nvml.xid(0, 79)
    nvml.xid(0, 13)
    nvml.xid(1, 48)  # GPU b cannot deliver events: the driver drops it
    nvml.xid(2, 94)
    got = p.metrics()
    assert (got[0].xids, got[1].xids, got[2].xids) == ((79, 13), (), (94,))
    assert p.metrics()[0].xids == ()  # read once
    p.close()
    assert nvml.event_sets[0].freed and nvml.shutdown_calls == 1


def test_a_lost_gpu_gives_no_reading_and_registers_when_it_is_back(tmp_path):
    nvml = FakeNvml(h100s(2))
    nvml.gpus[1].lost = True
    p = NvmlProbe("n", nvml, proc_root=tmp_path)
    assert set(p.metrics()) == {0}
    nvml.gpus[1].lost = False
    p.metrics()
    nvml.xid(1, 79)
    assert p.metrics()[1].xids == (79,)


def test_lineage_reads_group_session_and_ancestors(tmp_path):
    fake_proc(tmp_path, 100, "bash")  # a job's wrapper: the session leader
    fake_proc(tmp_path, 200, "bash", ppid=100, pgid=200, sid=100)  # the job's process group leader
    fake_proc(tmp_path, 300, "python", ppid=200, pgid=300, sid=300)  # its child, in a session of its own
    assert lineage(tmp_path, 300) == (300, 300, 300, 200, 100)
    assert lineage(tmp_path, 999) == ()  # gone, or a pid of another namespace


def test_attribute_tells_a_jobs_processes_from_foreign_ones(tmp_path):
    fake_proc(tmp_path, 100, "bash")
    fake_proc(tmp_path, 200, "bash", ppid=100, pgid=200, sid=100)
    fake_proc(tmp_path, 300, "python", ppid=200, pgid=300, sid=300)  # made its own session: still the job's
    fake_proc(tmp_path, 400, "python", ppid=1, pgid=400, sid=100)  # reparented to init: its session says whose
    fake_proc(tmp_path, 500, "jupyter", ppid=1, uid=0)  # somebody else's notebook
    nvml = FakeNvml([FakeGpu(uuid="GPU-a", processes=[FakeProcess(300), FakeProcess(400), FakeProcess(500),
                                                      FakeProcess(600)])])
    probe = AttributedProbe(NvmlProbe("n", nvml, proc_root=tmp_path), lambda: {7: frozenset({200, 100})})
    procs = probe.metrics()[0].processes
    assert [(p.pid, p.job_id, p.foreign) for p in procs] == [(300, 7, False), (400, 7, False), (500, None, True),
                                                              (600, None, True)]
    assert (procs[2].uid, procs[2].user, procs[2].name) == (0, "root", "jupyter")
    assert "lineage" not in procs[0].model_dump()  # used where it was read, never sent on
    assert attribute({}, {}) == {}


# -- the series ---------------------------------------------------------------------------------------
def test_a_gpu_series_keeps_recent_readings_whole_and_older_ones_as_means_up_to_its_retention():
    series = GpuSeries(full_s=60, coarse_s=30, keep_s=300)
    for t in range(0, 400, 10):
        series.add(GpuPoint(float(t), float(t % 100), 1.0, 30.0, None))
    points = series.points()
    whole = [p for p in points if p.span_s == 0]
    assert [p.time for p in whole] == [330.0 + 10 * i for i in range(7)]  # the last minute as taken
    means = [p for p in points if p.span_s]
    assert [p.time for p in means] == [90.0 + 30 * i for i in range(8)]  # 30 s spans, 300 s back
    assert means[0].utilization_pct == pytest.approx((90 + 0 + 10) / 3, abs=0.1)  # 90, 100 % 100, 110 % 100
    assert means[0].power_w is None  # never measured stays unmeasured
    assert len(series.fine) + len(series.coarse) <= 60 / 10 + 1 + 300 / 30 + 1


# -- the watch on a core ---------------------------------------------------------------------------------
def watched_core(tmp_path, gpus=4, *, store=None, groups=lambda: {}, **settings):
    nvml = FakeNvml(h100s(gpus))
    probe = AttributedProbe(NvmlProbe("local", nvml, proc_root=tmp_path / "proc"), groups)
    (tmp_path / "proc").mkdir(exist_ok=True)
    core = make_core(clock=SimClock(1_000_000.0), probe=probe, store=store, workdir=tmp_path / "w", **settings)
    return core, nvml


def sample(core, rules=IdleRules()):
    core.resources.refresh_metrics(core.clock.now())
    observe.sample(ToolContext(core, OPERATOR))
    return watch(ToolContext(core, OPERATOR), rules)


def submit(core, gpus=1, **kw):
    job_id = jobs.submit_job(ToolContext(core, OPERATOR), JobRequest(command="train", gpu_count=gpus, **kw),
                             user="alice").job_id
    core.orchestrator.tick()
    return core.store.get_job(job_id)


def test_a_gpu_used_outside_gherd_takes_no_job_and_the_pending_reason_says_who(tmp_path):
    core, nvml = watched_core(tmp_path)
    fake_proc(tmp_path / "proc", 4242, "jupyter", uid=0)
    nvml.gpus[2].processes = [FakeProcess(4242, used_mib=3000)]
    sample(core)
    state = get_cluster_state(ToolContext(core, OPERATOR), GetClusterState())
    gpu2 = state.nodes[0].gpus[2]
    assert gpu2.state == GpuState.FOREIGN and gpu2.in_use_by == ["root (jupyter 4242)"]
    small = submit(core, 3)
    assert small.status == JobStatus.RUNNING and 2 not in small.allocation.gpus
    big = submit(core, 4)
    assert big.status == JobStatus.QUEUED
    assert big.pending_reason == PendingReason.INFEASIBLE
    assert "GPU local:2 is used outside gpuherd by root (jupyter 4242)" in big.pending_message
    core.orchestrator.cancel(small.id)
    core.orchestrator.tick()
    waiting = core.store.get_job(big.id)
    assert waiting.status == JobStatus.QUEUED and "root (jupyter 4242)" in waiting.pending_message
    nvml.gpus[2].processes = []  # the notebook ended
    sample(core)
    core.orchestrator.tick()
    assert core.store.get_job(big.id).status == JobStatus.RUNNING


def test_a_job_waiting_for_gpus_names_the_foreign_use_among_what_it_waits_for(tmp_path):
    core, nvml = watched_core(tmp_path)
    fake_proc(tmp_path / "proc", 77, "python", uid=0)
    nvml.gpus[0].processes = [FakeProcess(77)]
    sample(core)
    submit(core, 2)
    waiting = submit(core, 2)
    assert waiting.pending_reason == PendingReason.RESOURCES
    assert waiting.pending_message.endswith("; GPU local:0 is used outside gpuherd by root (python 77), so it takes "
                                            "no job until it is free")


def test_usage_of_a_job_is_its_gpus_mean_and_peak_and_outlives_a_restart(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    core, nvml = watched_core(tmp_path, store=store)
    job = submit(core, 2)
    a, b = job.allocation.gpus
    for util_a, util_b, mem in [(80, 60, 1000), (100, 100, 3000), (0, 20, 2000)]:
        nvml.gpus[a].utilization_pct, nvml.gpus[b].utilization_pct = util_a, util_b
        nvml.gpus[a].memory_used_mib = nvml.gpus[b].memory_used_mib = mem
        sample(core)
        core.clock.advance(10)
    shown = jobs.get_job(ToolContext(core, OPERATOR), jobs.GetJob(job_id=job.id)).gpu_usage
    assert (shown.samples, shown.utilization_mean_pct, shown.utilization_peak_pct) == (3, 60.0, 100.0)
    assert (shown.memory_mean_mib, shown.memory_peak_mib) == (4000.0, 6000)  # both GPUs' memory together
    dumped = jobs.get_job(ToolContext(core, OPERATOR), jobs.GetJob(job_id=job.id)).model_dump(mode="json")
    assert dumped["gpu_usage"]["utilization_mean_pct"] == 60.0
    report = accounting.usage_report(ToolContext(core, OPERATOR), accounting.Report(since="1h"))
    assert (report.total.mean_utilization_pct, report.total.peak_memory_mib) == (60.0, 6000)
    # a new server on the same database goes on from what was stored
    core2, nvml2 = watched_core(tmp_path, store=SqliteStore(tmp_path / "herd.db"))
    core2.clock.advance(100)
    core2.orchestrator.reconcile()
    again = core2.store.job_usage([job.id])[job.id]
    assert again == shown


def test_an_idle_job_raises_one_event_per_spell_and_one_that_may_idle_is_left_alone(tmp_path):
    core, nvml = watched_core(tmp_path)
    idle = submit(core, 1)
    allowed = submit(core, 1, allow_idle=True)
    rules = IdleRules(threshold_pct=5, after_s=30 * MIN, action="notify")
    for _ in range(40):  # 40 minutes at 0 %
        sample(core, rules)
        core.clock.advance(MIN)
    events = [e for e in core.store.events(job_id=idle.id) if e.kind == "idle"]
    assert len(events) == 1
    assert events[0].data == {"gpus": [f"local:{idle.allocation.gpus[0]}"], "utilization_pct": 0.0,
                              "idle_for_s": 1800.0, "action": "notify"}
    assert not [e for e in core.store.events(job_id=allowed.id) if e.kind == "idle"]
    assert core.store.get_job(idle.id).status == JobStatus.RUNNING  # notify only
    nvml.gpus[idle.allocation.gpus[0]].utilization_pct = 90  # busy again: the spell ends
    sample(core, rules)
    nvml.gpus[idle.allocation.gpus[0]].utilization_pct = 1
    for _ in range(31):
        core.clock.advance(MIN)
        sample(core, rules)
    assert len([e for e in core.store.events(job_id=idle.id) if e.kind == "idle"]) == 2


@pytest.mark.parametrize("action, status", [("requeue", JobStatus.QUEUED), ("stop", JobStatus.CANCELLED)])
def test_idle_action_requeues_without_a_retry_or_stops(tmp_path, action, status):
    core, nvml = watched_core(tmp_path)
    job = submit(core, 1, max_retries=0)
    rules = IdleRules(threshold_pct=5, after_s=10 * MIN, action=action)
    for _ in range(11):
        sample(core, rules)
        core.clock.advance(MIN)
    core.orchestrator.tick()  # the end of the stopped job is recorded
    after = core.store.get_job(job.id)
    assert after.status in (status, JobStatus.RUNNING)  # a requeued job may start again at once
    kinds = [e.kind for e in core.store.events(job_id=job.id)]
    assert "idle" in kinds
    if action == "requeue":
        assert "requeueing" in kinds and after.status != JobStatus.FAILED and after.preemptions == 1
    else:
        assert after.status == JobStatus.CANCELLED


def test_a_failing_xid_drains_the_gpu_with_the_reason_and_requeues_its_job_without_a_retry(tmp_path):
    core, nvml = watched_core(tmp_path)
    job = submit(core, 1, max_retries=0)
    gpu = job.allocation.gpus[0]
    sample(core)
    nvml.xid(gpu, 79)
    report = sample(core)
    assert report.drained == [("local", gpu, "XID 79 reported by the driver")] and report.requeued == [job.id]
    g = core.resources.gpu("local", gpu)
    assert g.drained and g.reason == "XID 79 reported by the driver"
    core.orchestrator.tick()
    after = core.store.get_job(job.id)
    assert after.status == JobStatus.RUNNING and after.allocation.gpus[0] != gpu  # started again elsewhere
    assert after.max_retries == 0 and after.preemptions == 1
    drained = next(e for e in core.store.events() if e.kind == "gpu_drained")
    assert drained.data["reason"] == "XID 79 reported by the driver"
    view = get_cluster_state(ToolContext(core, OPERATOR), GetClusterState()).nodes[0].gpus[gpu]
    assert (view.state, view.reason) == (GpuState.DRAINED, "XID 79 reported by the driver")
    sample(core)  # judged once: no second drain, no second requeue
    assert [e.kind for e in core.store.events()].count("gpu_drained") == 1


def test_new_uncorrectable_ecc_errors_drain_but_old_ones_once_judged_do_not_again(tmp_path):
    core, nvml = watched_core(tmp_path)
    nvml.gpus[1].ecc_uncorrected = 1  # errors since the driver loaded: judged at the first sample
    assert sample(core).drained == [("local", 1, "1 uncorrectable ECC error(s) since the driver loaded")]
    core.resources.undrain("local", 1, now=core.clock.now(), reason="checked: row remapped")
    assert sample(core).drained == []
    nvml.gpus[1].ecc_uncorrected = 2
    assert sample(core).drained == [("local", 1, "2 uncorrectable ECC error(s) since the driver loaded")]


def test_a_gpu_nvml_can_no_longer_read_is_drained_and_its_job_requeued(tmp_path):
    core, nvml = watched_core(tmp_path)
    job = submit(core, 1)
    gpu = job.allocation.gpus[0]
    nvml.gpus[gpu].lost = True
    report = sample(core)
    assert report.drained == [("local", gpu, NO_READING)] and report.requeued == [job.id]
    g = core.resources.gpu("local", gpu)
    assert (g.healthy, g.drained, g.reason) == (False, True, NO_READING)
    nvml.gpus[gpu].lost = False
    sample(core)
    assert core.resources.gpu("local", gpu).drained  # back, but a person decides when it takes jobs again


def test_gpu_samples_door_gives_the_series_and_who_uses_the_gpu(tmp_path):
    core, nvml = watched_core(tmp_path, 2)
    fake_proc(tmp_path / "proc", 9, "python", uid=0)
    nvml.gpus[1].processes = [FakeProcess(9)]
    for util in (10, 20, 30):
        nvml.gpus[1].utilization_pct = util
        sample(core)
        core.clock.advance(10)
    got = gpu_samples(ToolContext(core, OPERATOR), GetGpuSamples(node="local", index=1))
    assert [s.utilization_pct for s in got.samples] == [10, 20, 30] and got.in_use_by == ["root (python 9)"]
    since = got.samples[1].time
    assert len(gpu_samples(ToolContext(core, OPERATOR), GetGpuSamples(node="local", index=1, since=since)).samples) == 2


def test_sampling_with_a_probe_that_reads_nothing_changes_nobodys_health(tmp_path):
    core, nvml = watched_core(tmp_path)
    submit(core, 1)
    nvml.count_error = pynvml.NVML_ERROR_UNKNOWN
    report = sample(core)
    assert (report.drained, report.requeued) == ([], [])


# -- through REST -----------------------------------------------------------------------------------
def test_rest_gpu_samples_metrics_and_job_usage(make_api, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    fake_proc(tmp_path, 31, "python", uid=0)
    gpus = h100s(2)
    gpus[1].processes = [FakeProcess(31)]
    gpus[0].ecc_uncorrected = 0
    api = make_api(gpus=None, probe=NvmlProbe("gpu01", FakeNvml(gpus), proc_root=tmp_path))
    service = api.service
    job_id = api.submit_ok(user="ana", gpu_count=1)
    api.tick()
    gpus[0].utilization_pct, gpus[0].memory_used_mib = 70, 9000
    service.resources.refresh_metrics(api.clock.now())
    watch(service.tools(), IdleRules())

    samples = api.http.get("/gpu/gpu01/0/samples")
    assert samples.status_code == 200
    assert [(s["utilization_pct"], s["memory_used_mib"]) for s in samples.json()["samples"]] == [(70, 9000)]
    assert api.http.get("/gpu/gpu01/9/samples").status_code == 404
    assert api.http.get("/gpu/gpu01/x/samples").status_code == 422

    usage = api.job(job_id)["gpu_usage"]
    assert (usage["utilization_mean_pct"], usage["memory_peak_mib"], usage["samples"]) == (70.0, 9000, 1)

    status = api.http.get("/gpu/status").json()["nodes"][0]["gpus"]
    # The test server's executor is the simulator: it knows no process trees, so nothing is called foreign.
    assert status[1]["state"] == "free" and status[1]["processes"][0]["foreign"] is None

    found = {f.name: list(f.samples) for f in text_string_to_metric_families(api.http.get("/metrics").text)}
    ecc = [s for s in found["gpuherd_gpu_ecc_uncorrected_errors"] if s.labels["gpu"] == "0"]
    assert [s.value for s in ecc] == [0]
    procs = {(s.labels["gpu"], s.labels["owner"]): s.value for s in found["gpuherd_gpu_processes"]}
    assert procs[("1", "foreign")] == 0 and procs[("1", "job")] == 0  # told by no executor: neither


def test_an_administrator_undrains_a_failing_gpu_once_looked_at_and_nobody_else_may(make_api, tmp_path):
    from tools.door.context import Actor
    from tools.door.watch import SetDrained, set_drained
    from tools.door.context import PermissionDenied

    nvml = FakeNvml(h100s(2))
    api = make_api(gpus=None, probe=NvmlProbe("gpu01", nvml, proc_root=tmp_path))
    service = api.service
    nvml.xid(0, 79)  # not registered yet: dropped, as the driver drops it
    service.resources.refresh_metrics(api.clock.now())
    nvml.xid(1, 79)
    service.resources.refresh_metrics(api.clock.now())
    watch(service.tools(), IdleRules())
    assert service.resources.gpu("gpu01", 1).drained and not service.resources.gpu("gpu01", 0).drained
    status = api.http.get("/gpu/status").json()["nodes"][0]["gpus"][1]
    assert (status["state"], status["reason"]) == ("drained", "XID 79 reported by the driver")

    with pytest.raises(PermissionDenied):
        set_drained(ToolContext(service.core, Actor(user="bob")), SetDrained(node="gpu01", index=1, drained=False))
    answer = api.http.post("/gpu/gpu01/1/undrain", json={"reason": "reseated"})
    assert answer.status_code == 200 and answer.json()["reason"] is None
    assert not service.resources.gpu("gpu01", 1).drained
    assert api.http.post("/gpu/gpu01/7/drain").status_code == 404
    assert api.http.post("/gpu/gpu01/0/drain", json={"reason": "fan"}).json()["reason"] == "fan"
    assert api.http.post("/gpu/gpu01/0/drain", json={"why": "x"}).status_code == 422


def test_an_idle_terminal_session_is_stopped_where_the_rule_requeues(tmp_path):
    core, nvml = watched_core(tmp_path)
    job = submit(core, 1, interactive=True)
    rules = IdleRules(threshold_pct=5, after_s=5 * MIN, action="requeue")
    for _ in range(6):
        sample(core, rules)
        core.clock.advance(MIN)
    core.orchestrator.tick()
    (event,) = [e for e in core.store.events(job_id=job.id) if e.kind == "idle"]
    assert event.data["action"] == "stop" and core.store.get_job(job.id).status == JobStatus.CANCELLED


def test_a_drain_and_its_reason_outlive_a_node_agents_next_report(tmp_path):
    from tools.models import Gpu, InventorySource, Node
    from tools.inventory import ResourceManager
    from tools.store import MemoryStore

    resources = ResourceManager(MemoryStore(), None)
    report = (Node(name="n1", source=InventorySource.NVML, gpus=(Gpu(node="n1", index=0, uuid="GPU-0"),)),)
    resources.follow(report, now=0.0)
    resources.drain("n1", 0, now=1.0, reason="XID 79 reported by the driver")
    again = (Node(name="n1", source=InventorySource.NVML, gpus=(Gpu(node="n1", index=0, uuid="GPU-0"),)),)
    resources.follow(again, now=2.0)
    gpu = resources.gpu("n1", 0)
    assert (gpu.drained, gpu.reason) == (True, "XID 79 reported by the driver")


def test_the_cli_submits_allow_idle_and_shows_gpu_use_gpus_and_the_report(make_api, tmp_path, monkeypatch, capsys):
    from agent import cli
    from agent.cli import client as cli_client
    from tests.test_one_door import _Through

    fake_proc(tmp_path, 55, "python", uid=0)
    gpus = h100s(2)
    api = make_api(gpus=None, probe=NvmlProbe("gpu01", FakeNvml(gpus), proc_root=tmp_path))
    monkeypatch.setattr(cli_client.httpx, "Client", lambda **kwargs: _Through(api.http))
    assert cli.main(["submit", "--user", "alice", "--allow-idle", "--", "python", "nb.py"]) == 0
    job_id = max(j["id"] for j in api.all_jobs())
    assert api.job(job_id)["allow_idle"] is True
    api.tick()
    api.clock.advance(600)
    held = api.job(job_id)["allocation"]["gpus"][0]
    gpus[held].utilization_pct, gpus[held].memory_used_mib = 40, 2048
    gpus[1 - held].processes = [FakeProcess(55)]
    api.service.resources.refresh_metrics(api.clock.now())
    watch(api.service.tools(), IdleRules())
    capsys.readouterr()

    assert cli.main(["show", str(job_id)]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"^gpu use +utilization 40% mean, 40% peak; memory 2,048 MiB mean, 2,048 MiB peak \(1 samples\)$",
                     shown, re.M), shown
    assert cli.main(["report", "--since", "1h", "--csv"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.endswith(",gpu_util,peak_mem") and rows[-1].endswith(",40.0,2048")
    assert cli.main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "NOTE" in out.splitlines()[0]
