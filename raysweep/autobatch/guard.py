"""What a running trial calls: cap its own CUDA memory to its share (or, on a CPU, make its resident memory follow
the probe's measurements), and recognise an out-of-memory error.

Small functions tested on a CPU (STYLE.md point 8).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# torch is imported inside the functions a trial calls: the driver imports this module without it

# Messages of allocation failures that do not come as a typed torch.OutOfMemoryError (cuBLAS / cuDNN handles and
# workspaces, raw CUDA errors, the CPU allocator).
OOM_MESSAGES = (
    "CUDA out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
    "HIP out of memory",
    "out of memory",
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)


def is_oom(exc: BaseException) -> bool:
    """True for an allocation failure: a ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``), a
    ``MemoryError``, or a ``RuntimeError`` whose message holds one of :data:`OOM_MESSAGES`; the exception's
    ``__cause__`` / ``__context__`` chain is followed (Ray and wrappers re-raise). Any other error is False: a
    ``ValueError("out of memory budget")`` is a bug, not an OOM."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_typed_oom(exc) or isinstance(exc, MemoryError):
            return True
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_typed_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to answer "no"
    typed = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return typed is not None and isinstance(exc, typed)


def cap_fraction(share: float, *, total_bytes: int | None = None, usable_bytes: int | None = None,
                 context_bytes: int = 0) -> float:
    """The fraction of total device memory a trial's allocator may reserve.

    By default the share itself: ``share * total`` is at least the bytes the share was sized for
    (``share * usable``, usable <= total), so a correct model never trips the cap while a runaway trial stops at
    its share. Given ``total_bytes`` and ``usable_bytes`` the cap is tight: ``(share * usable - context) / total``.
    Always in (0, 1].
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if total_bytes and usable_bytes:
        share = (share * usable_bytes - context_bytes) / total_bytes
    return min(1.0, max(share, 1e-3))


def apply_memory_cap(share: float | None, device, **tight) -> bool:
    """Cap this process's CUDA caching allocator at :func:`cap_fraction` of the device (``set_per_process_memory_
    fraction``). Returns True when applied, False when there is nothing to cap (no share, a CPU device, or no
    CUDA); record the result with the trial. ``tight`` takes :func:`cap_fraction`'s keywords."""
    if not share:
        return False
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(cap_fraction(share, **tight), device)
    return True


# glibc's M_MMAP_THRESHOLD (mallopt parameter -3). With the default *dynamic* threshold, freeing one large tensor
# raises the threshold (up to 32 MiB), later tensors come from the heap and stay resident after they are freed:
# peak RSS then depends on the order of allocations, not only on their sizes (measured here: a width-16 MLP peaked
# above a width-32 one). A fixed threshold gives every tensor of 64 KiB or more its own mapping, returned on free,
# so peak RSS tracks live bytes and the cpu-rss model holds (held-out errors of a few percent).
MMAP_THRESHOLD_BYTES = 64 * 1024


def apply_malloc_policy() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` in this process (the probe's CPU children do,
    and a CPU trial should, so that its RSS is what the cpu-rss model predicts). True when applied; False off
    glibc. Harmless on CUDA trials. Equivalent to the environment ``MALLOC_MMAP_THRESHOLD_=65536``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
