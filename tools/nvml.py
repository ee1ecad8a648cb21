"""Reading GPUs through the NVIDIA driver (NVML), behind the narrow ``GpuProbe`` interface.

``NvmlProbe`` reads the GPUs of this node: discovery (index, UUID, model, memory) and live readings
(utilization, memory used, temperature, power, processes). Fields the driver does not support read as
None; a process that vanished between NVML's listing and our look-up keeps its pid without a name.
Where NVML cannot be used at all, ``local_probe`` gives a probe that says why at every attempt.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol, TypeVar

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

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
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
        readings = {}
        for index, handle in self._handles():
            if handle is not None:
                reading = self._reading(handle)
                if reading is not None:
                    readings[index] = reading
        return readings

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
        return GpuMetrics(
            memory_used_mib=memory.used // _MIB if memory is not None else None,
            utilization_pct=util.gpu if util is not None else None,
            temperature_c=temperature,
            power_w=power_mw / 1000 if power_mw is not None else None,
            processes=tuple(
                GpuProcess(
                    pid=p.pid,
                    # None where NVML cannot attribute memory (it reports "not available")
                    used_memory_mib=p.usedGpuMemory // _MIB if p.usedGpuMemory is not None else None,
                    name=_proc_name(self._proc_root, p.pid),
                )
                for p in procs or ()
            ),
        )


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
