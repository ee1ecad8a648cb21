"""The GPU resource manager: NvmlProbe against the NVML twin, and ResourceManager's inventory rules."""

from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pynvml
import pytest

from tests.fake_nvml import FIELDS, FakeGpu, FakeNvml, FakeProcess, h100s
from tools.inventory import DEFAULT_GPUS, DEFAULT_NODE, InventoryConflict, NodeDeclaration, ResourceManager, UnknownGpu
from tools.nvml import NvmlProbe, ProbeUnavailable
from tools.models import Gpu, GpuMetrics, GpuProcess, InventorySource
from tools.store import MemoryStore, SqliteStore

# -- builders ------------------------------------------------------------------------------------


def fake_proc(root: Path, pid: int, comm: str) -> None:
    """A /proc entry in a throwaway proc root, so process names are deterministic."""
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "comm").write_text(comm + "\n")


def probe(nvml: FakeNvml, tmp_path: Path, node: str = "gpu01") -> NvmlProbe:
    return NvmlProbe(node, nvml, proc_root=tmp_path)


def decl(name: str, gpus: int, model: str | None = None) -> NodeDeclaration:
    return NodeDeclaration(name=name, gpus=gpus, model=model)


class ScriptedProbe:
    """A GpuProbe that returns what it is told, or raises ProbeUnavailable."""

    def __init__(self, gpus: list[Gpu] | None = None, metrics: dict[int, GpuMetrics] | None = None) -> None:
        self.gpus = gpus
        self.readings = metrics or {}
        self.metrics_error: str | None = None

    def discover(self) -> list[Gpu]:
        if self.gpus is None:
            raise ProbeUnavailable("no driver here")
        return list(self.gpus)

    def metrics(self) -> dict[int, GpuMetrics]:
        if self.metrics_error is not None:
            raise ProbeUnavailable(self.metrics_error)
        return dict(self.readings)


def detected(count: int, node: str = "gpu01") -> list[Gpu]:
    return [Gpu(node=node, index=i, uuid=f"GPU-real-{node}-{i}", model="H100") for i in range(count)]


def kinds(store) -> list[str]:
    return [e.kind for e in store.events()]


# -- NvmlProbe -----------------------------------------------------------------------------------


def test_probe_reads_everything(tmp_path: Path) -> None:
    fake_proc(tmp_path, 4242, "python3")
    gpu = FakeGpu(
        uuid="GPU-aaaa",
        name="NVIDIA H100 80GB HBM3",
        memory_total_mib=81559,
        memory_used_mib=2048,
        utilization_pct=87,
        temperature_c=61,
        power_mw=312_500,
        processes=[FakeProcess(4242, used_mib=2000)],
    )
    nvml = FakeNvml([gpu, FakeGpu(uuid="GPU-bbbb")])
    p = probe(nvml, tmp_path)

    assert p.discover() == [
        Gpu(node="gpu01", index=0, uuid="GPU-aaaa", model="NVIDIA H100 80GB HBM3", memory_total_mib=81559),
        Gpu(node="gpu01", index=1, uuid="GPU-bbbb", model="NVIDIA H100 80GB HBM3", memory_total_mib=81559),
    ]
    got = p.metrics()
    assert got[0] == GpuMetrics(
        memory_used_mib=2048,
        utilization_pct=87,
        temperature_c=61,
        power_w=312.5,
        ecc_uncorrected=0,
        processes=(GpuProcess(pid=4242, used_memory_mib=2000, name="python3"),),
    )
    assert set(got) == {0, 1}
    assert nvml.init_calls == 1  # once, however many reads


@pytest.mark.parametrize(
    "missing, want_field, want_value",
    [
        ("memory", "memory_used_mib", None),
        ("utilization", "utilization_pct", None),
        ("temperature", "temperature_c", None),
        ("power", "power_w", None),
        ("processes", "processes", ()),
    ],
    ids=["memory", "utilization", "temperature", "power", "processes"],
)
def test_probe_unsupported_field_is_none_and_the_rest_still_reads(
    tmp_path: Path, missing: str, want_field: str, want_value: object
) -> None:
    fake_proc(tmp_path, 7, "train")
    gpu = FakeGpu(
        uuid="GPU-x",
        memory_used_mib=100,
        utilization_pct=50,
        temperature_c=40,
        power_mw=100_000,
        processes=[FakeProcess(7)],
        unsupported={missing},
    )
    full = GpuMetrics(
        memory_used_mib=100,
        utilization_pct=50,
        temperature_c=40,
        power_w=100.0,
        ecc_uncorrected=0,
        processes=(GpuProcess(pid=7, used_memory_mib=1024, name="train"),),
    )
    want = full.model_copy(update={want_field: want_value})
    assert probe(FakeNvml([gpu]), tmp_path).metrics() == {0: want}


@pytest.mark.parametrize("missing", ["name", "memory"], ids=["name", "memory"])
def test_probe_discover_survives_unsupported_name_or_memory(tmp_path: Path, missing: str) -> None:
    (gpu,) = probe(FakeNvml([FakeGpu(uuid="GPU-x", unsupported={missing})]), tmp_path).discover()
    assert gpu.uuid == "GPU-x" and gpu.healthy
    assert (gpu.model is None) == (missing == "name")
    assert (gpu.memory_total_mib is None) == (missing == "memory")


def test_probe_vanished_process_gets_no_name(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, "alive")
    gpu = FakeGpu(uuid="GPU-x", processes=[FakeProcess(10), FakeProcess(99999, used_mib=None)])
    procs = probe(FakeNvml([gpu]), tmp_path).metrics()[0].processes
    assert [(p.pid, p.name, p.used_memory_mib) for p in procs] == [(10, "alive", 1024), (99999, None, None)]


def test_probe_reads_real_proc_by_default() -> None:
    me = os.getpid()
    p = NvmlProbe("n", FakeNvml([FakeGpu(uuid="GPU-x", processes=[FakeProcess(me)])]))
    want = Path(f"/proc/{me}/comm").read_text().strip() if Path("/proc/self").exists() else None
    assert p.metrics()[0].processes[0].name == want


def test_probe_decodes_bytes_from_old_pynvml(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-x", name="Tesla V100")], bytes_strings=True)
    (gpu,) = probe(nvml, tmp_path).discover()
    assert (gpu.uuid, gpu.model) == ("GPU-x", "Tesla V100")
    assert isinstance(gpu.uuid, str) and isinstance(gpu.model, str)


@pytest.mark.parametrize(
    "code, want_in_message",
    [
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "kernel driver is not loaded"),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "reboot"),
        (pynvml.NVML_ERROR_UNKNOWN, "Unknown Error"),
    ],
    ids=["driver-not-loaded", "library-not-found", "version-mismatch", "unknown"],
)
def test_probe_init_failure_is_probe_unavailable(tmp_path: Path, code: int, want_in_message: str) -> None:
    with pytest.raises(ProbeUnavailable, match="cannot read GPUs through NVML on gpu01") as err:
        probe(FakeNvml(h100s(2), init_error=code), tmp_path)
    assert want_in_message in str(err.value)
    assert isinstance(err.value.__cause__, pynvml.NVMLError)


def test_probe_lost_gpu(tmp_path: Path) -> None:
    gpus = h100s(3)
    gpus[1].lost = True
    p = probe(FakeNvml(gpus), tmp_path)
    found = p.discover()
    assert [(g.index, g.healthy) for g in found] == [(0, True), (1, False), (2, True)]
    assert found[1].uuid == "GPU-unreadable-gpu01-1"
    assert set(p.metrics()) == {0, 2}


def test_probe_gpu_answering_nothing_is_left_out_of_metrics(tmp_path: Path) -> None:
    gpus = h100s(2)
    gpus[0].unsupported = set(FIELDS)
    assert set(probe(FakeNvml(gpus), tmp_path).metrics()) == {1}


def test_probe_driver_gone_at_runtime_and_close(tmp_path: Path) -> None:
    nvml = FakeNvml(h100s(1))
    p = probe(nvml, tmp_path)
    nvml.count_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(ProbeUnavailable, match="Driver Not Loaded"):
        p.metrics()
    nvml.count_error = None
    p.close()
    p.close()
    assert nvml.shutdown_calls == 1
    with pytest.raises(ProbeUnavailable, match="closed"):
        p.discover()


def test_real_pynvml_without_driver_is_probe_unavailable() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present on this machine")
    with pytest.raises(ProbeUnavailable, match="cannot read GPUs through NVML"):
        NvmlProbe("here", pynvml)


# -- NodeDeclaration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "", "gpus": 1},
        {"name": "a b", "gpus": 1},
        {"name": "../x", "gpus": 1},
        {"name": "a", "gpus": 0},
        {"name": "a", "gpus": 65},
        {"name": "a", "gpus": 1, "extra": 1},
    ],
    ids=["empty-name", "space", "path", "zero-gpus", "too-many-gpus", "unknown-field"],
)
def test_node_declaration_rejects(fields: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        NodeDeclaration(**fields)


# -- ResourceManager: start-up -------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe_gpus, declared, stored, want_source, want_nodes, want_notice",
    [
        (detected(2), [decl("a", 4)], [decl("old", 3)], InventorySource.NVML, {"gpu01": 2}, "Detected"),
        (None, [decl("a", 4)], [decl("old", 3)], InventorySource.DECLARED, {"a": 4}, "declared inventory"),
        ([], [decl("a", 4)], None, InventorySource.DECLARED, {"a": 4}, "reports no GPUs"),
        (None, None, [decl("old", 3)], InventorySource.DECLARED, {"old": 3}, "saved before"),
        (None, None, None, InventorySource.DECLARED, {DEFAULT_NODE: DEFAULT_GPUS}, "declared, not detected"),
    ],
    ids=["nvml-wins", "declared-over-stored", "nvml-empty-falls-back", "stored", "default-8"],
)
def test_initialize_precedence(probe_gpus, declared, stored, want_source, want_nodes, want_notice) -> None:
    store = MemoryStore()
    if stored is not None:
        ResourceManager(store, None).initialize(0.0, stored)
    rm = ResourceManager(store, ScriptedProbe(probe_gpus))
    notice = rm.initialize(1.0, declared)

    assert want_notice in notice and "\n" not in notice
    assert rm.source == want_source
    assert {n.name: len(n.gpus) for n in rm.nodes()} == want_nodes
    assert all(n.source == want_source for n in rm.nodes())
    assert [(n.name, len(n.gpus)) for n in store.load_inventory()] == list(want_nodes.items())
    assert store.events()[-1].kind == "inventory" and store.events()[-1].message == notice


def test_default_notice_says_why_not_detected() -> None:
    notice = ResourceManager(MemoryStore(), ScriptedProbe(None)).initialize(0.0)
    assert "no driver here" in notice and "8 GPUs" in notice and "'local'" in notice


def test_declared_gpus_are_marked() -> None:
    rm = ResourceManager(MemoryStore(), None)
    rm.initialize(0.0, [decl("a", 2, "A100"), decl("b", 1)])
    assert [(g.node, g.index, g.uuid, g.model) for n in rm.nodes() for g in n.gpus] == [
        ("a", 0, "GPU-declared-a-0", "A100"),
        ("a", 1, "GPU-declared-a-1", "A100"),
        ("b", 0, "GPU-declared-b-0", None),
    ]
    assert {n.source for n in rm.nodes()} == {InventorySource.DECLARED}


def test_declaring_a_node_twice_is_refused() -> None:
    rm = ResourceManager(MemoryStore(), None)
    rm.initialize(0.0)
    with pytest.raises(ValueError, match="declared twice"):
        rm.declare([decl("a", 1), decl("a", 2)], now=1.0, held=set())


# -- ResourceManager: drains ---------------------------------------------------------------------


def test_drain_persists_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "herd.db"
    store = SqliteStore(path)
    rm = ResourceManager(store, None)
    rm.initialize(0.0, [decl("a", 4)])
    rm.drain("a", 2, now=1.0, reason="fan noise")
    rm.drain("a", 2, now=2.0)  # idempotent: no second event
    rm.drain("a", 3, now=3.0)
    rm.undrain("a", 3, now=4.0)
    rm.undrain("a", 3, now=5.0)
    assert kinds(store)[-3:] == ["gpu_drained", "gpu_drained", "gpu_undrained"]
    assert "fan noise" in store.events()[-3].message
    store.close()

    again = ResourceManager(SqliteStore(path), None)
    notice = again.initialize(10.0)
    assert "saved before" in notice
    assert [g.drained for g in again.nodes()[0].gpus] == [False, False, True, False]
    assert again.gpu("a", 2).drained


def test_drain_survives_redetect_for_gpus_that_still_exist(tmp_path: Path) -> None:
    path = tmp_path / "herd.db"
    rm = ResourceManager(SqliteStore(path), ScriptedProbe(detected(4)))
    rm.initialize(0.0)
    rm.drain("gpu01", 1, now=1.0)
    rm.drain("gpu01", 3, now=1.0)

    # Restart: GPU 3 was pulled, the others are the same cards.
    again = ResourceManager(SqliteStore(path), ScriptedProbe(detected(3)))
    again.initialize(5.0)
    assert [g.drained for g in again.nodes()[0].gpus] == [False, True, False]


def test_drain_unknown_gpu() -> None:
    rm = ResourceManager(MemoryStore(), None)
    rm.initialize(0.0, [decl("a", 2)])
    with pytest.raises(UnknownGpu, match="node a has no GPU 5"):
        rm.drain("a", 5, now=1.0)
    with pytest.raises(KeyError, match="no node named 'zz'"):
        rm.gpu("zz", 0)


@pytest.mark.parametrize(
    "drained, want",
    [
        ([], 8),
        ([("a", 0), ("a", 1)], 6),
        ([("a", 0), ("a", 1), ("a", 2)], 5),  # a tie with b
        ([("a", i) for i in range(8)], 5),
        ([("a", i) for i in range(8)] + [("b", i) for i in range(5)], 0),
    ],
    ids=["none", "two-drained", "tie", "a-all-drained", "everything-drained"],
)
def test_largest_node_gpus_counts_undrained(drained, want) -> None:
    rm = ResourceManager(MemoryStore(), None)
    rm.initialize(0.0, [decl("a", 8), decl("b", 5)])
    for node, index in drained:
        rm.drain(node, index, now=1.0)
    assert rm.largest_node_gpus() == want


# -- ResourceManager: replacing the inventory ----------------------------------------------------


@pytest.mark.parametrize(
    "new, held, want_conflict",
    [
        ([decl("a", 2)], {("a", 3)}, "a:3"),
        ([decl("b", 8)], {("a", 0), ("a", 1)}, "a:0, a:1"),
        ([decl("a", 4)], {("a", 3)}, None),
        ([decl("a", 2), decl("b", 2)], {("a", 1)}, None),
    ],
    ids=["shrink-under-job", "rename-under-job", "same-shape", "grow"],
)
def test_declare_refuses_to_drop_held_gpus(new, held, want_conflict) -> None:
    store = MemoryStore()
    rm = ResourceManager(store, None)
    rm.initialize(0.0, [decl("a", 4)])
    rm.drain("a", 0, now=1.0)
    before, events_before = rm.nodes(), store.events()

    if want_conflict:
        with pytest.raises(InventoryConflict, match="running jobs hold") as err:
            rm.declare(new, now=2.0, held=held)
        assert want_conflict in str(err.value)
        assert rm.nodes() == before and store.load_inventory() == list(before)
        assert store.events() == events_before
    else:
        rm.declare(new, now=2.0, held=held)
        assert {n.name: len(n.gpus) for n in rm.nodes()} == {d.name: d.gpus for d in new}
        assert rm.gpu("a", 0).drained  # same declared GPU, drain kept
        assert store.events()[-1].kind == "inventory"
        assert store.load_inventory() == list(rm.nodes())


def test_detect_switches_to_nvml_and_checks_held() -> None:
    probe_ = ScriptedProbe(detected(2))
    rm = ResourceManager(MemoryStore(), probe_)
    rm.initialize(0.0, None)
    rm.declare([decl("gpu01", 4)], now=1.0, held=set())
    assert rm.source == InventorySource.DECLARED

    with pytest.raises(InventoryConflict, match="gpu01:3"):
        rm.detect(now=2.0, held={("gpu01", 3)})
    assert rm.source == InventorySource.DECLARED

    rm.detect(now=3.0, held={("gpu01", 1)})
    assert rm.source == InventorySource.NVML and len(rm.nodes()[0].gpus) == 2


@pytest.mark.parametrize(
    "probe_, want",
    [(None, "no GPU probe"), (ScriptedProbe(None), "no driver here"), (ScriptedProbe([]), "reports no GPUs")],
    ids=["no-probe", "unavailable", "no-gpus"],
)
def test_detect_failure_propagates_and_changes_nothing(probe_, want) -> None:
    rm = ResourceManager(MemoryStore(), probe_)
    rm.initialize(0.0, [decl("a", 2)])
    before = rm.nodes()
    with pytest.raises(ProbeUnavailable, match=want):
        rm.detect(now=1.0, held=set())
    assert rm.nodes() == before


# -- ResourceManager: metrics and health ---------------------------------------------------------


def test_refresh_metrics_with_nvml_twin(tmp_path: Path) -> None:
    gpus = h100s(2, utilization_pct=30)
    nvml = FakeNvml(gpus)
    store = MemoryStore()
    rm = ResourceManager(store, probe(nvml, tmp_path))
    rm.initialize(0.0)
    rm.refresh_metrics(1.0)
    assert [g.metrics.utilization_pct for g in rm.nodes()[0].gpus] == [30, 30]
    assert all(g.metrics is None for n in store.load_inventory() for g in n.gpus)  # never persisted

    gpus[1].lost = True
    rm.refresh_metrics(2.0)
    assert [(g.healthy, g.metrics is None) for g in rm.nodes()[0].gpus] == [(True, False), (False, True)]
    assert rm.largest_node_gpus() == 1
    assert kinds(store)[-1] == "gpu_unhealthy"
    assert not store.load_inventory()[0].gpus[1].healthy

    gpus[1].lost = False
    rm.refresh_metrics(3.0)
    assert rm.gpu("gpu01", 1).healthy and kinds(store)[-1] == "gpu_healthy"
    rm.refresh_metrics(4.0)
    assert kinds(store).count("gpu_healthy") == 1  # only changes are events


def test_refresh_metrics_with_failing_probe_keeps_running() -> None:
    p = ScriptedProbe(detected(2), {0: GpuMetrics(utilization_pct=5), 1: GpuMetrics(utilization_pct=6)})
    store = MemoryStore()
    rm = ResourceManager(store, p)
    rm.initialize(0.0)
    rm.refresh_metrics(1.0)
    assert rm.gpu("gpu01", 0).metrics == GpuMetrics(utilization_pct=5)

    p.metrics_error = "NVML cannot count the GPUs of gpu01: Driver Not Loaded"
    events_before = store.events()
    rm.refresh_metrics(2.0)
    assert [(g.metrics, g.healthy) for g in rm.nodes()[0].gpus] == [(None, True), (None, True)]
    assert rm.metrics_error == p.metrics_error
    assert store.events() == events_before

    p.metrics_error = None
    rm.refresh_metrics(3.0)
    assert rm.metrics_error is None and rm.gpu("gpu01", 1).metrics == GpuMetrics(utilization_pct=6)


def test_refresh_metrics_skips_declared_inventory() -> None:
    p = ScriptedProbe(None, {0: GpuMetrics(utilization_pct=5)})
    rm = ResourceManager(MemoryStore(), p)
    rm.initialize(0.0, [decl("a", 1)])
    rm.refresh_metrics(1.0)
    assert rm.gpu("a", 0).metrics is None and rm.gpu("a", 0).healthy


def test_twin_raises_real_nvml_errors() -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-x", unsupported={"power"})])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()  # like NVML: nothing works before nvmlInit
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPowerUsage(handle)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(1)
    nvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
