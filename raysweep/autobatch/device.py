"""Memory counters of one device behind a small interface, so that the probe logic runs the same on CUDA, on the
CPU (process RSS) and on a fake in tests.

Two kinds of numbers, never mixed:

- *global* numbers (``free_bytes``, ``total_bytes``): what the whole device has free now. CUDA:
  ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` / ``MemTotal`` of ``/proc/meminfo``. The budget comes from
  these, never from process-local counters, because other processes share the device.
- *process* numbers (``current_bytes``, ``peak_bytes``): what this process holds. CUDA: the caching allocator's
  reserved / allocated bytes; CPU: ``VmRSS`` and ``VmHWM`` of ``/proc/self/status`` (the peak is reset through
  ``/proc/self/clear_refs`` where the kernel allows it; the probe also runs every point in a fresh process).

Nothing here touches CUDA at import time; :func:`cpu_device_info` never touches CUDA at all, so a driver may call it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass
from typing import Protocol

# torch is imported inside the functions that measure a device: the driver describes devices without it

KINDS = ("cuda", "cpu")
LABELS = {"cuda": "cuda", "cpu": "cpu-rss"}  # the measurement mode recorded with every model


@dataclass(frozen=True)
class DeviceInfo:
    """What a memory model was measured on; part of the cache key. ``kind`` is ``cuda`` or ``cpu``."""

    kind: str
    name: str
    total_bytes: int
    torch_version: str
    cuda_version: str | None = None

    @property
    def label(self) -> str:
        """``cuda`` (peak reserved memory) or ``cpu-rss`` (peak resident set growth)."""
        return LABELS[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DeviceInfo:
        return cls(**{k: d.get(k) for k in ("kind", "name", "total_bytes", "torch_version", "cuda_version")})


class Counters(Protocol):
    """The device counters the probe reads. Implementations: :class:`CudaCounters`, :class:`CpuRssCounters`."""

    kind: str

    def describe(self) -> DeviceInfo: ...
    def total_bytes(self) -> int: ...
    def free_bytes(self) -> int: ...  # global free memory now
    def current_bytes(self) -> int: ...  # this process: reserved (CUDA) or RSS (CPU) now
    def reset_peak(self) -> None: ...
    def peak_bytes(self) -> tuple[int, int]: ...  # (peak reserved or RSS, peak allocated) since reset_peak


def _torch_version() -> str:
    version = torch_build().get("version")
    if version:
        return version
    import torch  # heavy: only where torch's version file does not read

    return torch.__version__


def torch_build() -> dict[str, str | None]:
    """``{"version", "cuda", "hip"}`` of the installed torch, read from its ``torch/version.py`` without importing
    torch (about 1 s of CPU); ``{}`` when torch is missing or the file does not read as plain assignments."""
    try:
        spec = importlib.util.find_spec("torch")
        folder = (spec.submodule_search_locations or [None])[0] if spec else None
        if folder is None:
            return {}
        with open(os.path.join(folder, "version.py"), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError, ImportError):
        return {}
    values = {}
    for node in tree.body:  # `name = 'literal'` or `name: Optional[str] = None`
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            try:
                values[target.id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    if not isinstance(values.get("__version__"), str):
        return {}
    return {"version": values["__version__"], "cuda": values.get("cuda"), "hip": values.get("hip")}


def read_meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def read_status(pid: str = "self") -> dict[str, int]:
    """The ``Vm*`` / ``Rss*`` lines of ``/proc/<pid>/status`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("Vm", "Rss")):
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0]) * 1024
    return out


def cpu_device_info() -> DeviceInfo:
    """This machine as a CPU device: processor name and total memory. Never touches CUDA."""
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = read_meminfo().get("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceInfo(kind="cpu", name=f"{name} x{os.cpu_count()}", total_bytes=int(total),
                      torch_version=_torch_version())


class CpuRssCounters:
    """Process RSS as the memory counter; ``MemAvailable`` as the global free memory. Linux only."""

    kind = "cpu"

    def __init__(self):
        self._base = 0

    def describe(self) -> DeviceInfo:
        return cpu_device_info()

    def total_bytes(self) -> int:
        return read_meminfo()["MemTotal"]

    def free_bytes(self) -> int:
        return read_meminfo()["MemAvailable"]

    def current_bytes(self) -> int:
        return read_status()["VmRSS"]

    def reset_peak(self) -> None:
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0); a fresh process per point covers the rest
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self._base = self.current_bytes()

    def peak_bytes(self) -> tuple[int, int]:
        """Peak RSS growth since :meth:`reset_peak` (RSS has no reserved/allocated split: both are the same)."""
        grown = max(0, read_status()["VmHWM"] - self._base)
        return grown, grown


class CudaCounters:
    """The current CUDA device. Creating it initialises CUDA in this process: only probe processes do."""

    kind = "cuda"

    def __init__(self, index: int | None = None):
        import torch

        self.torch = torch
        self.index = torch.cuda.current_device() if index is None else index

    def describe(self) -> DeviceInfo:
        props = self.torch.cuda.get_device_properties(self.index)
        return DeviceInfo(kind="cuda", name=props.name, total_bytes=int(props.total_memory),
                          torch_version=self.torch.__version__, cuda_version=self.torch.version.cuda)

    def total_bytes(self) -> int:
        return int(self.torch.cuda.mem_get_info(self.index)[1])

    def free_bytes(self) -> int:
        return int(self.torch.cuda.mem_get_info(self.index)[0])

    def current_bytes(self) -> int:
        return int(self.torch.cuda.memory_reserved(self.index))

    def reset_peak(self) -> None:
        self.torch.cuda.synchronize(self.index)
        self.torch.cuda.reset_peak_memory_stats(self.index)

    def peak_bytes(self) -> tuple[int, int]:
        self.torch.cuda.synchronize(self.index)
        return (int(self.torch.cuda.max_memory_reserved(self.index)),
                int(self.torch.cuda.max_memory_allocated(self.index)))


def counters_for(kind: str) -> Counters:
    """The real counters of ``kind`` (``cuda`` or ``cpu``) in this process."""
    if kind == "cuda":
        return CudaCounters()
    if kind == "cpu":
        return CpuRssCounters()
    raise ValueError(f"device kind must be one of {KINDS}, got {kind!r}")


def context_from_free_delta(free_before: int, free_during: int, reserved_now: int) -> int:
    """Bytes a process holds outside its allocator (CUDA context, kernels, library handles).

    ``free_before`` is the device's global free memory before the process started, ``free_during`` while it runs
    and holds ``reserved_now`` bytes in its caching allocator. Clipped at 0 (other processes may free memory).
    """
    return max(0, int(free_before) - int(free_during) - int(reserved_now))
