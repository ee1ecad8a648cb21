"""Reading GPUs through the NVIDIA driver (NVML), behind the narrow ``GpuProbe`` interface.

``NvmlProbe`` reads the GPUs of this node: discovery (index, UUID, model, memory) and live readings
(utilization, memory used, temperature, power, uncorrectable ECC errors, XID errors, processes). Fields
the driver does not support read as None; a process that vanished between NVML's listing and our look-up
keeps its pid without a name or owner. Where NVML cannot be used at all, ``local_probe`` gives a probe
that says why at every attempt.

XIDs come from an NVML event set registered once for critical XID events: each event is read once, so
a reading carries the XIDs since the previous one. A board that cannot register (NotSupported on some
consumer and virtual GPUs) reports none. Each process's owner, process group, session and ancestors are
read from ``/proc`` (its root injectable), so that ``attribute`` can tell a job's processes from others.
"""

from __future__ import annotations

import pwd
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol, TypeVar

import pynvml

from tools.models import Gpu, GpuMetrics, GpuProcess

_MIB = 1024 * 1024

T = TypeVar("T")

class ProbeUnavailable(RuntimeError):
    """The GPUs cannot be read at all here (no driver, no library, driver gone); the message says why."""




class GpuProbe(Protocol):
    """The GPUs of one node, as some outside system reports them."""

    def discover(self) -> list[Gpu]:
        """The node's GPUs (no metrics). Raise ``ProbeUnavailable`` when they cannot be read at all."""
        ...

    def metrics(self) -> dict[int, GpuMetrics]:
        """Live readings by GPU index. A GPU that answered nothing is left out; that is how a lost GPU
        shows. Raise ``ProbeUnavailable`` when nothing can be read."""
        ...


# -- NVML ------------------------------------------------------------------------------------------

# Why nvmlInit failed, in words a person can act on.
_INIT_HINTS = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: "libnvidia-ml.so.1 was not found: is the NVIDIA driver installed?",
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded (try nvidia-smi)",
    pynvml.NVML_ERROR_NO_PERMISSION: "no permission to open the NVIDIA devices",
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: "the driver library and kernel module versions differ; "
    "reload the driver or reboot",
}


def _text(value: str | bytes) -> str:
    # nvidia-ml-py before 11.5 returns C strings as bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _proc_name(proc_root: Path, pid: int) -> str | None:
    """The command name of ``pid``, or None when it cannot be known.

    NVML lists processes it saw a moment ago: the process may have ended since, and inside a container
    NVML reports host pids that do not exist in our ``/proc`` at all. Neither is an error.
    """
    try:
        return (proc_root / str(pid) / "comm").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


MAX_ANCESTORS = 64  # a parent chain longer than this is cut (a loop in a half-read /proc)


def _proc_stat(proc_root: Path, pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, session) of ``pid`` from ``/proc/<pid>/stat``; None if it is gone."""
    try:
        data = (proc_root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[-1].split()  # after "pid (comm) ": comm may hold spaces and parentheses
    try:
        return int(fields[1]), int(fields[2]), int(fields[3])
    except (IndexError, ValueError):
        return None


def _proc_uid(proc_root: Path, pid: int) -> int | None:
    """The real uid of ``pid`` (``Uid:`` of ``/proc/<pid>/status``), or None."""
    try:
        for line in (proc_root / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        pass
    return None


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a container's)
        return str(uid)


def lineage(proc_root: Path, pid: int) -> tuple[int, ...]:
    """``pid``, its process group, its session and its ancestors' pids: a job owns the process when one
    of them is the job's process group or its wrapper (a child that made a group or session of its own
    keeps its parent chain; one reparented to init keeps its session). Empty when it cannot be read."""
    stat = _proc_stat(proc_root, pid)
    if stat is None:
        return ()
    ids = [pid, stat[1], stat[2]]
    parent = stat[0]
    while parent > 1 and len(ids) < MAX_ANCESTORS and parent not in ids[3:]:
        ids.append(parent)
        above = _proc_stat(proc_root, parent)
        if above is None:
            break
        parent = above[0]
    return tuple(ids)


def owning_job(process: GpuProcess, groups: Mapping[int, frozenset[int]]) -> int | None:
    """The job whose process ids (``groups``: job id -> its process group and wrapper pid) meet the
    process's lineage; None when no job's do."""
    ids = set(process.lineage)
    for job_id, job_ids in groups.items():
        if not ids.isdisjoint(job_ids):
            return job_id
    return None


def attribute(readings: Mapping[int, GpuMetrics], groups: Mapping[int, frozenset[int]]) -> dict[int, GpuMetrics]:
    """The readings with each process told as a job's (``job_id``) or foreign, by where it sits in the
    process tree. Only the node that runs the jobs can say this: its executor gives ``groups``. A process
    whose lineage could not be read (a pid of another namespace, or gone since NVML listed it) is foreign:
    no job of ours explains it, and a vanished one is gone from the next reading."""
    told = {}
    for index, metrics in readings.items():
        processes = []
        for p in metrics.processes:
            job = owning_job(p, groups)
            processes.append(p.model_copy(update={"job_id": job, "foreign": job is None}))
        told[index] = metrics.model_copy(update={"processes": tuple(processes)})
    return told


class NvmlProbe:
    """``GpuProbe`` over NVML. The nvml module is injected so that tests can pass ``FakeNvml``.

    NVML is initialised once, here; a node without a usable driver fails at construction with
    ``ProbeUnavailable``, so a caller learns at start-up, not on the first tick.
    """

    def __init__(
        self, node: str, nvml: ModuleType | Any = pynvml, *, proc_root: Path = Path("/proc")
    ) -> None:
        self.node = node
        self._nvml = nvml
        self._proc_root = proc_root
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            hint = _INIT_HINTS.get(getattr(exc, "value", None), "")
            raise ProbeUnavailable(
                f"cannot read GPUs through NVML on {node}: {exc}" + (f" ({hint})" if hint else "")
            ) from exc
        self._open = True
        self._events = self._read(nvml.nvmlEventSetCreate)
        self._registered: set[int] = set()  # GPUs whose XIDs the event set receives
        self._unregistrable: set[int] = set()  # GPUs that refused (NotSupported): no XIDs from them

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                if self._events is not None:
                    self._nvml.nvmlEventSetFree(self._events)
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # the driver went away under us; there is nothing left to shut down

    def _handles(self) -> list[tuple[int, Any]]:
        """(index, handle or None) for every GPU the driver counts; None where the GPU is lost."""
        if not self._open:
            raise ProbeUnavailable(f"the NVML probe of {self.node} is closed")
        try:
            count = self._nvml.nvmlDeviceGetCount()
        except self._nvml.NVMLError as exc:
            raise ProbeUnavailable(f"NVML cannot count the GPUs of {self.node}: {exc}") from exc
        return [(i, self._read(self._nvml.nvmlDeviceGetHandleByIndex, i)) for i in range(count)]

    def _read(self, fn: Callable[..., T], *args: Any) -> T | None:
        """One NVML call; any NVML error (NotSupported on this board, GPU lost, ...) becomes None."""
        try:
            return fn(*args)
        except self._nvml.NVMLError:
            return None

    def discover(self) -> list[Gpu]:
        nvml = self._nvml
        gpus = []
        for index, handle in self._handles():
            uuid = self._read(nvml.nvmlDeviceGetUUID, handle) if handle is not None else None
            if uuid is None:
                # Keep the card in the inventory, so people see it and the indices do not shift, but
                # never schedule on it.
                unreadable = f"GPU-unreadable-{self.node}-{index}"
                gpus.append(Gpu(node=self.node, index=index, uuid=unreadable, healthy=False))
                continue
            name = self._read(nvml.nvmlDeviceGetName, handle)
            memory = self._read(nvml.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(
                Gpu(
                    node=self.node,
                    index=index,
                    uuid=_text(uuid),
                    model=_text(name) if name is not None else None,
                    memory_total_mib=memory.total // _MIB if memory is not None else None,
                )
            )
        return gpus

    def metrics(self) -> dict[int, GpuMetrics]:
        handles = self._handles()
        self._register(handles)
        xids = self._xids()
        readings = {}
        for index, handle in handles:
            if handle is not None:
                reading = self._reading(handle)
                if reading is not None:
                    readings[index] = reading.model_copy(update={"xids": tuple(xids.get(index, ()))})
        return readings

    def _register(self, handles: list[tuple[int, Any]]) -> None:
        """Ask for each GPU's critical XID events once (a GPU lost at start-up is asked again later)."""
        if self._events is None:
            return
        for index, handle in handles:
            if handle is None or index in self._registered or index in self._unregistrable:
                continue
            try:
                self._nvml.nvmlDeviceRegisterEvents(handle, self._nvml.nvmlEventTypeXidCriticalError, self._events)
                self._registered.add(index)
            except self._nvml.NVMLError as exc:
                if getattr(exc, "value", None) == self._nvml.NVML_ERROR_NOT_SUPPORTED:
                    self._unregistrable.add(index)

    def _xids(self) -> dict[int, list[int]]:
        """The XID events waiting in the set, by GPU index; reading them takes them out."""
        nvml, found = self._nvml, {}
        if not self._registered:
            return found
        for _ in range(1000):  # a storm of events is read over several readings
            try:
                event = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:  # Timeout: none left (or the set broke: nothing more to read now)
                break
            index = self._read(nvml.nvmlDeviceGetIndex, event.device)
            if index is not None and event.eventType == nvml.nvmlEventTypeXidCriticalError:
                found.setdefault(index, []).append(int(event.eventData))
        return found

    def _reading(self, handle: Any) -> GpuMetrics | None:
        """Each field is read on its own, so that one unsupported sensor hides nothing else.

        None when every read failed: the GPU is not answering (memory is readable on every board).
        """
        nvml = self._nvml
        memory = self._read(nvml.nvmlDeviceGetMemoryInfo, handle)
        util = self._read(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = self._read(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power_mw = self._read(nvml.nvmlDeviceGetPowerUsage, handle)
        procs = self._read(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if memory is None and util is None and temperature is None and power_mw is None and procs is None:
            return None
        ecc = self._read(nvml.nvmlDeviceGetTotalEccErrors, handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                         nvml.NVML_VOLATILE_ECC)
        return GpuMetrics(
            memory_used_mib=memory.used // _MIB if memory is not None else None,
            utilization_pct=util.gpu if util is not None else None,
            temperature_c=temperature,
            power_w=power_mw / 1000 if power_mw is not None else None,
            ecc_uncorrected=ecc,
            processes=tuple(self._process(p) for p in procs or ()),
        )

    def _process(self, p: Any) -> GpuProcess:
        uid = _proc_uid(self._proc_root, p.pid)
        return GpuProcess(
            pid=p.pid,
            # None where NVML cannot attribute memory (it reports "not available")
            used_memory_mib=p.usedGpuMemory // _MIB if p.usedGpuMemory is not None else None,
            name=_proc_name(self._proc_root, p.pid),
            uid=uid,
            user=_user_name(uid),
            lineage=lineage(self._proc_root, p.pid),
        )


class AttributedProbe:
    """A probe whose readings tell each process as a job's or foreign (``attribute``), with the process
    ids of the jobs that ``groups()`` gives (the executor's ``process_groups``) when they are read."""

    def __init__(self, probe: GpuProbe, groups: Callable[[], Mapping[int, frozenset[int]]]) -> None:
        self.probe = probe
        self._groups = groups

    def discover(self) -> list[Gpu]:
        return self.probe.discover()

    def metrics(self) -> dict[int, GpuMetrics]:
        groups = self._groups()  # before the readings: a job started in between has no process on a GPU yet
        return attribute(self.probe.metrics(), groups)

    def close(self) -> None:
        close = getattr(self.probe, "close", None)
        if close is not None:
            close()


class UnavailableProbe:
    """Stands in for NVML where it cannot be used, so that every attempt to detect says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def discover(self) -> list[Gpu]:
        raise ProbeUnavailable(self.reason)

    def metrics(self) -> dict[int, GpuMetrics]:
        raise ProbeUnavailable(self.reason)


def local_probe(node: str) -> GpuProbe:
    """NVML where the driver works; elsewhere a probe that explains why nothing can be detected."""
    try:
        return NvmlProbe(node)
    except ProbeUnavailable as exc:
        return UnavailableProbe(str(exc))
