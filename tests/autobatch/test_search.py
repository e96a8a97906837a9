"""Autobatch decisions as small pure functions: the batch-size search, the share, the OOM test, the memory cap and
the knobs. No device, no Ray."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raysweep.autobatch import (
    AutobatchConfig,
    Grid,
    apply_memory_cap,
    cap_fraction,
    gpu_share,
    is_oom,
    largest_fitting,
    largest_under_budget,
    max_concurrent_per_gpu,
    next_batch_size,
)
from raysweep.autobatch.search import GRIDS
from raysweep.errors import NothingFitsError, SpecError


def expected_answer(lo: int, hi: int, limit: int, grid: str) -> int | None:
    """The largest grid value in [lo, hi] that is <= limit, by enumeration-free arithmetic."""
    top = min(hi, limit)
    if top < 1:
        return None
    best = 1 << (top.bit_length() - 1) if grid == "pow2" else 8 * (top // 8)
    return best if best >= lo and best >= 1 else None


@settings(max_examples=250, deadline=None)
@given(
    lo=st.integers(1, 5000),
    span=st.integers(0, 2**21),
    limit=st.integers(0, 2**22),
    grid=st.sampled_from(GRIDS),
)
def test_search_terminates_and_finds_the_largest_fitting_size(lo, span, limit, grid):
    hi = lo + span
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit

    n = len(Grid(lo, hi, grid))
    want = expected_answer(lo, hi, limit, grid)
    if want is None:
        with pytest.raises(NothingFitsError) as err:
            largest_fitting(fits, lo, hi, grid)
        assert err.value.evidence["sizes_tried"] == calls
        assert all(not f for f in err.value.evidence["fitted"])
    else:
        result = largest_fitting(fits, lo, hi, grid)
        assert result.batch_size == want
        assert result.tried == calls
        assert result.fitted == [b <= limit for b in calls]
    # terminates within the bound, never repeats a size, only tries grid sizes in range
    assert len(calls) <= 2 + math.ceil(math.log2(max(n, 1)))
    assert len(set(calls)) == len(calls)
    grid_ok = (lambda b: b & (b - 1) == 0) if grid == "pow2" else (lambda b: b % 8 == 0)
    assert all(lo <= b <= hi and grid_ok(b) for b in calls)


def test_search_exact_sequence_hand_worked():
    # pow2 grid 1..1024 (indices 0..10), fits up to 100: max 1024 no; min 1 yes; mid 5 -> 32 yes; (5+10)//2 = 7 ->
    # 128 no; (5+7)//2 = 6 -> 64 yes; hi - lo = 1: answer 64.
    result = largest_fitting(lambda b: b <= 100, 1, 1024, "pow2")
    assert result.tried == [1024, 1, 32, 128, 64]
    assert result.fitted == [False, True, True, False, True]
    assert result.batch_size == 64


def test_search_multiple_of_8_sequence():
    # candidates 8, 16, ..., 80 (indices 0..9); fits up to 50: 80 no, 8 yes, idx 4 -> 40 yes, idx 6 -> 56 no,
    # idx 5 -> 48 yes: answer 48
    result = largest_fitting(lambda b: b <= 50, 1, 80, "multiple_of_8")
    assert result.tried == [80, 8, 40, 56, 48]
    assert result.batch_size == 48


def test_search_everything_fits_returns_max_in_one_call():
    result = largest_fitting(lambda b: True, 4, 1000, "pow2")
    assert (result.batch_size, result.tried) == (512, [512])


def test_search_nothing_fits_raises_with_evidence():
    with pytest.raises(NothingFitsError, match="smallest candidate, 2") as err:
        largest_under_budget(lambda b: 1000 * b, 500, 2, 64, "pow2", evidence={"device": "fake"})
    ev = err.value.evidence
    assert ev["sizes_tried"] == [64, 2]
    assert ev["bytes_needed"] == {64: 64000, 2: 2000}
    assert ev["budget_bytes"] == 500 and ev["device"] == "fake"


def test_empty_grid_range_is_an_error_not_a_default():
    assert len(Grid(5, 7, "pow2")) == 0
    with pytest.raises(NothingFitsError, match="holds no pow2"):
        largest_fitting(lambda b: True, 5, 7, "pow2")


def test_next_batch_size_is_the_midpoint_and_refuses_adjacent():
    assert next_batch_size(0, 10) == 5
    with pytest.raises(ValueError):
        next_batch_size(3, 4)


def test_gpu_share_rounds_up_on_the_grid():
    assert gpu_share(1, 100) == 0.01
    assert gpu_share(30, 100) == 0.3  # no float fuzz pushes an exact share one step up
    assert gpu_share(30.01, 100) == 0.31
    assert gpu_share(100, 100) == 1.0
    assert gpu_share(101, 100) > 1.0  # does not fit alone
    assert gpu_share(0, 100) == 0.01  # at least one step


def test_max_concurrent_per_gpu():
    assert max_concurrent_per_gpu(0.3) == 3
    assert max_concurrent_per_gpu(0.25) == 4
    assert max_concurrent_per_gpu(0.01) == 100
    assert max_concurrent_per_gpu([0.5, 0.3, 0.3, 0.2]) == 3  # first fit in order: 0.5 + 0.3 + 0.2


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried"),
    MemoryError(),
])
def test_is_oom_true(exc):
    assert is_oom(exc)


def test_is_oom_follows_the_cause_chain():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except Exception as inner:
            raise ValueError("trial failed") from inner
    except ValueError as outer:
        assert is_oom(outer)


@pytest.mark.parametrize("exc", [
    ValueError("out of memory budget"), RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    KeyError("CUDA out of memory"), TypeError("x"),
])
def test_is_oom_false(exc):
    assert not is_oom(exc)


def test_apply_memory_cap_cpu_and_no_share_are_not_applied():
    assert apply_memory_cap(0.3, "cpu") is False
    assert apply_memory_cap(None, "cuda") is False
    if not torch.cuda.is_available():
        assert apply_memory_cap(0.3, "cuda") is False


def test_apply_memory_cap_calls_set_per_process_memory_fraction(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, str(d))))
    assert apply_memory_cap(0.25, "cuda:0") is True
    assert calls == [(0.25, "cuda:0")]
    # the tight form: share of usable minus the context, over total
    assert apply_memory_cap(0.5, "cuda", total_bytes=100, usable_bytes=80, context_bytes=4) is True
    assert calls[-1][0] == pytest.approx((0.5 * 80 - 4) / 100)


def test_cap_fraction_bounds():
    assert cap_fraction(0.3) == 0.3
    with pytest.raises(ValueError):
        cap_fraction(1.5)


def test_config_defaults_and_val_fallback():
    c = AutobatchConfig()
    assert c.target_memory_fraction == 0.8 and c.infeasible == "refuse" and c.batch_grid == "pow2"
    val = AutobatchConfig(min_batch_size=4, max_batch_size=64, min_batch_size_val=16).for_mode("val")
    assert (val.min_batch_size, val.max_batch_size, val.target_memory_fraction) == (16, 64, 0.8)
    assert AutobatchConfig().with_fraction(0.6).for_mode("val").target_memory_fraction == 0.6


@pytest.mark.parametrize("kwargs, field", [
    ({"target_memory_fraction": 0}, "target_memory_fraction"),
    ({"target_memory_fraction": 1.2}, "target_memory_fraction"),
    ({"steps_per_trial": 1}, "steps_per_trial"),
    ({"min_batch_size": 0}, "min_batch_size"),
    ({"min_batch_size": 64, "max_batch_size": 8}, "min_batch_size"),
    ({"min_batch_size_val": 9, "max_batch_size_val": 15}, "max_batch_size_val"),
    ({"infeasible": "skip"}, "infeasible"),
    ({"batch_grid": "pow3"}, "batch_grid"),
    ({"modes": ["train", "test"]}, "modes"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(SpecError, match=f"autobatch.{field}"):
        AutobatchConfig(**kwargs)


def test_config_from_mapping():
    c = AutobatchConfig.from_mapping({"max_batch_size_val": 512, "batch_grid": "multiple_of_8"}, source="s.yaml")
    assert c.for_mode("val").max_batch_size == 512
    with pytest.raises(SpecError, match=r"autobatch.max_batchsize: unknown key.*\(s.yaml\)"):
        AutobatchConfig.from_mapping({"max_batchsize": 1}, source="s.yaml")
    assert AutobatchConfig.from_mapping(None) == AutobatchConfig()
