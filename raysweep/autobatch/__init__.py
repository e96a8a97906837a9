"""Autobatch: a fitted memory model per model shape, ``batch_size: auto``, and the GPU share (or CPU memory) of
every trial, so that 1,000 configs are sized without touching a GPU.

The stage, in data-flow order:

1. :func:`probe_and_fit` (driver): builds a :class:`ProbeRequest` from the spec's shapes (never a user model),
   looks up the cache in the storage folder, else runs real steps in a probe actor / subprocess on the target
   device, one fresh process per (width, depth, batch) point, and fits a :class:`MemoryModel` with a margin from
   its held-out error. CPU-only machines get the same model from process RSS, labelled ``cpu-rss``.
2. :func:`plan_resources` (driver, pure): Ray resources per bundle or config (``{"gpu": share, "cpu": c}`` or
   ``{"cpu": c, "memory": bytes}``), resolves ``batch_size: "auto"``, and lists what cannot fit even alone;
   :func:`raise_if_infeasible` refuses those before launch (``infeasible: refuse``).
3. :func:`apply_memory_cap` and :func:`is_oom` (inside each trial): cap the process to its share; recognise OOMs.
   CPU trials call :func:`apply_malloc_policy` so that their RSS behaves as the probe measured it.

A model factory's sweep (``experiment.model: {factory: ...}``) has no memory model: the launcher measures the real
training step of each bundle shape instead (:mod:`raysweep.autobatch.factory`), with the same resources, splits,
``auto`` resolution and infeasible handling.

Outside a sweep, :func:`find_batch_size` (:mod:`raysweep.autobatch.module`) finds the largest batch size of any
PyTorch module by measuring its real steps with the same search, margin and errors.

``python -m raysweep.autobatch SPACE.yaml`` is the standalone analysis of a space, ``python -m raysweep.autobatch
--model package.module:function`` that of one module (see ``__main__``).
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it; imported on first use (PEP 562), so that importing one submodule (e.g.
# raysweep.space reads autobatch.config) does not import them all
_HOMES = {
    "ModelCache": "cache", "cache_key": "cache",
    "AutobatchConfig": "config", "ModeSettings": "config",
    "DeviceInfo": "device", "cpu_device_info": "device",
    "apply_malloc_policy": "guard", "apply_memory_cap": "guard", "cap_fraction": "guard", "is_oom": "guard",
    "probe_and_fit": "host",
    "BatchSizeResult": "module", "find_batch_size": "module",
    "MIN_MARGIN": "memory", "MemoryModel": "memory", "ModeFit": "memory", "static_bytes": "memory",
    "ProbeRequest": "probe",
    "Grid": "search", "SearchResult": "search", "largest_fitting": "search", "largest_under_budget": "search",
    "next_batch_size": "search",
    "auto_batch_size": "sizing", "data_bytes": "sizing", "gpu_share": "sizing", "max_concurrent_per_gpu": "sizing",
    "plan_resources": "sizing", "raise_if_infeasible": "sizing", "request_from_spec": "sizing",
    "trial_need": "sizing",
}  # fmt: skip

__all__ = [
    "MIN_MARGIN", "AutobatchConfig", "BatchSizeResult", "DeviceInfo", "Grid", "MemoryModel", "ModeFit", "ModeSettings", "ModelCache",
    "ProbeRequest", "SearchResult", "apply_malloc_policy", "apply_memory_cap", "auto_batch_size", "cache_key",
    "cap_fraction", "cpu_device_info", "data_bytes", "find_batch_size", "gpu_share", "is_oom", "largest_fitting", "largest_under_budget",
    "max_concurrent_per_gpu", "next_batch_size", "plan_resources", "probe_and_fit", "raise_if_infeasible",
    "request_from_spec", "static_bytes", "trial_need",
]  # fmt: skip


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"raysweep.autobatch.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'raysweep.autobatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
