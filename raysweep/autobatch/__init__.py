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

``python -m raysweep.autobatch SPACE.yaml`` is the standalone analysis (see ``__main__``).
"""

from raysweep.autobatch.cache import ModelCache, cache_key
from raysweep.autobatch.config import AutobatchConfig, ModeSettings
from raysweep.autobatch.device import DeviceInfo, cpu_device_info
from raysweep.autobatch.guard import apply_malloc_policy, apply_memory_cap, cap_fraction, is_oom
from raysweep.autobatch.host import probe_and_fit
from raysweep.autobatch.memory import MIN_MARGIN, MemoryModel, ModeFit, static_bytes
from raysweep.autobatch.probe import ProbeRequest
from raysweep.autobatch.search import Grid, SearchResult, largest_fitting, largest_under_budget, next_batch_size
from raysweep.autobatch.sizing import (
    auto_batch_size,
    data_bytes,
    gpu_share,
    max_concurrent_per_gpu,
    plan_resources,
    raise_if_infeasible,
    request_from_spec,
    trial_need,
)

__all__ = [
    "MIN_MARGIN", "AutobatchConfig", "DeviceInfo", "Grid", "MemoryModel", "ModeFit", "ModeSettings", "ModelCache",
    "ProbeRequest", "SearchResult", "apply_malloc_policy", "apply_memory_cap", "auto_batch_size", "cache_key",
    "cap_fraction", "cpu_device_info", "data_bytes", "gpu_share", "is_oom", "largest_fitting", "largest_under_budget",
    "max_concurrent_per_gpu", "next_batch_size", "plan_resources", "probe_and_fit", "raise_if_infeasible",
    "request_from_spec", "static_bytes", "trial_need",
]  # fmt: skip
