"""An in-memory twin of the part of the ``pynvml`` module that ``NvmlProbe`` uses.

Same function names and arguments, and the real ``pynvml`` error classes and codes, so code that works
against the twin works against the driver. It reproduces what real boards and drivers do:

- a sensor a board does not have raises ``NVMLError_NotSupported`` (power on some consumer and MIG
  setups, temperature on some virtual GPUs) while the other reads still work;
- NVML lists a process that has ended by the time we look it up (or a host pid invisible in a container);
- nvidia-ml-py before 11.5 returns names and UUIDs as ``bytes``;
- ``nvmlInit`` fails with ``DriverNotLoaded`` / ``LibraryNotFound`` on a machine without a working driver;
- every call before ``nvmlInit`` (or after the last ``nvmlShutdown``) raises ``Uninitialized``;
- a GPU that fell off the bus raises ``GpuIsLost`` for its handle and for every read through one;
- ECC counts raise ``NotSupported`` on boards without ECC (consumer cards) or with ECC turned off;
- XIDs arrive as events in an event set: ``nvmlDeviceRegisterEvents`` raises ``NotSupported`` where a
  board cannot deliver them, ``nvmlEventSetWait_v2`` hands out each event once and raises ``Timeout``
  when none is waiting; events of a GPU registered with no set are dropped, as the driver drops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

_MIB = 1024 * 1024

# Names of the reads that ``FakeGpu.unsupported`` can switch off.
FIELDS = ("name", "uuid", "memory", "utilization", "temperature", "power", "processes", "ecc", "events")


@dataclass
class FakeProcess:
    pid: int
    used_mib: int | None = 1024  # None: NVML reports "not available" (pynvml turns that into None)


@dataclass
class FakeGpu:
    """One GPU's state; change the attributes between calls to simulate a changing card."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total_mib: int = 81559
    memory_used_mib: int = 0
    utilization_pct: int = 0
    temperature_c: int = 35
    power_mw: int = 70_000
    processes: list[FakeProcess] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # of FIELDS
    lost: bool = False
    ecc_uncorrected: int = 0  # volatile: since the driver loaded


@dataclass
class _EventSet:
    gpus: set[int] = field(default_factory=set)  # indices registered for XID events
    waiting: list[SimpleNamespace] = field(default_factory=list)
    freed: bool = False


@dataclass(frozen=True)
class _Handle:
    index: int


def h100s(count: int, **kw: Any) -> list[FakeGpu]:
    return [FakeGpu(uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000", **kw) for i in range(count)]


class FakeNvml:
    """Use as ``NvmlProbe(node, FakeNvml(gpus))``.

    ``init_error``: an NVML error code that ``nvmlInit`` fails with (e.g. ``NVML_ERROR_DRIVER_NOT_LOADED``).
    ``bytes_strings``: behave like nvidia-ml-py < 11.5 and return names and UUIDs as bytes.
    """

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(
        self, gpus: list[FakeGpu] | None = None, *, init_error: int | None = None, bytes_strings: bool = False
    ) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.bytes_strings = bytes_strings
        self.count_error: int | None = None  # set to make nvmlDeviceGetCount fail (driver gone at runtime)
        self.init_calls = 0
        self.shutdown_calls = 0
        self._refcount = 0  # like NVML: each nvmlInit needs its own nvmlShutdown
        self.event_sets: list[_EventSet] = []

    # -- library ---------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self._refcount += 1

    def nvmlShutdown(self) -> None:
        self._check_init()
        self.shutdown_calls += 1
        self._refcount -= 1

    def _check_init(self) -> None:
        if self._refcount <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    # -- devices ---------------------------------------------------------------------------------
    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        if self.count_error is not None:
            raise pynvml.NVMLError(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return _Handle(index)

    def _gpu(self, handle: _Handle, what: str) -> FakeGpu:
        self._check_init()
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if what in gpu.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu

    def _str(self, value: str) -> str | bytes:
        return value.encode() if self.bytes_strings else value

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        return self._str(self._gpu(handle, "name").name)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        return self._str(self._gpu(handle, "uuid").uuid)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> SimpleNamespace:
        gpu = self._gpu(handle, "memory")
        total, used = gpu.memory_total_mib * _MIB, gpu.memory_used_mib * _MIB
        return SimpleNamespace(total=total, used=used, free=total - used)  # bytes, like c_nvmlMemory_t

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle, "utilization").utilization_pct, memory=0)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle, "temperature").temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu(handle, "power").power_mw  # milliwatts

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[SimpleNamespace]:
        gpu = self._gpu(handle, "processes")
        return [
            SimpleNamespace(pid=p.pid, usedGpuMemory=None if p.used_mib is None else p.used_mib * _MIB)
            for p in gpu.processes
        ]

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._check_init()
        return handle.index

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter_type: int) -> int:
        if (error_type, counter_type) != (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpu(handle, "ecc").ecc_uncorrected

    # -- events (XIDs) ---------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> _EventSet:
        self._check_init()
        event_set = _EventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        self._check_init()
        event_set.freed = True

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, event_set: _EventSet) -> None:
        self._gpu(handle, "events")
        if event_set.freed:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if event_types & pynvml.nvmlEventTypeXidCriticalError:
            event_set.gpus.add(handle.index)

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
        self._check_init()
        if event_set.freed:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not event_set.waiting:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        return event_set.waiting.pop(0)

    def xid(self, index: int, code: int) -> None:
        """The driver reports XID ``code`` on GPU ``index`` (to every set registered for it)."""
        for event_set in self.event_sets:
            if index in event_set.gpus and not event_set.freed:
                event_set.waiting.append(SimpleNamespace(
                    device=_Handle(index), eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=code,
                    gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF))
