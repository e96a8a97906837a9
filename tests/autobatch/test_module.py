"""Autobatch for any PyTorch module (raysweep.autobatch.module.find_batch_size): the exact sizes tried on a fake
device, the margin and budget, NothingFitsError's evidence, the JSON cache of measurements, the checks before
measuring; a real CPU module in RSS mode (slow); the --model command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raysweep.autobatch import largest_fitting
from raysweep.autobatch.__main__ import main
from raysweep.autobatch.device import DeviceInfo
from raysweep.autobatch.module import CACHE_FILE, build_job, find_batch_size, run_steps
from raysweep.autobatch.search import Grid
from raysweep.autobatch.trials import CpuRssTrials, CudaTrials, SimulatedDevice
from raysweep.errors import NothingFitsError, UserModelError

M = "tests.support.modules:"
KiB = 1024


def simulated(peak_of, available=10**9, context=0):
    return SimulatedDevice(peak_of, available, context_bytes=context)


def test_exact_sequence_on_a_fake_device():
    # peak 1000 B per sample, margin 5%: need = 1050 b <= 105,000 up to b = 100. pow2 1..1024 (indices 0..10): the
    # largest 1024 no; the smallest 1 yes; index 5 -> 32 yes; index 7 -> 128 no; index 6 -> 64 yes: answer 64.
    dev = simulated(lambda b: 1000 * b)
    found = find_batch_size(None, None, device=dev, min_batch_size=1, max_batch_size=1024, budget_bytes=105_000)
    assert dev.calls == found.sizes_tried == [1024, 1, 32, 128, 64]
    assert [t.fits for t in found.trials] == [False, True, True, False, True]
    assert [t.status for t in found.trials] == ["over_budget", "ok", "ok", "over_budget", "ok"]
    assert [t.need_bytes for t in found.trials] == [1050 * b for b in [1024, 1, 32, 128, 64]]
    assert found.batch_size == 64 and found.peak_bytes == 64_000
    assert found.budget_bytes == 105_000 and found.margin == 0.05 and found.target_memory_fraction is None
    assert found.label == "simulated" and found.mode == "train" and not found.cache_hit


def test_out_of_memory_is_no_fit_and_the_grid_is_respected():
    # multiple_of_8 in 8..1000 (8 * 1..125, indices 0..124); OOM above 256, the budget never binds.
    # 1000 oom; 8 yes; index 62 -> 504 oom; 31 -> 256 yes; 46 -> 376 oom; 38 -> 312 oom; 34 -> 280 oom;
    # 32 -> 264 oom; lo = 31, hi = 32: answer 256.
    dev = simulated(lambda b: 100 * b if b <= 256 else None)
    found = find_batch_size(None, None, device=dev, min_batch_size=8, max_batch_size=1000, batch_grid="multiple_of_8")
    assert found.sizes_tried == [1000, 8, 504, 256, 376, 312, 280, 264]
    assert [t.status for t in found.trials] == ["oom", "ok", "oom", "ok", "oom", "oom", "oom", "oom"]
    assert found.batch_size == 256
    assert found.trials[0].need_bytes is None and found.trials[0].error == "simulated out of memory"


def test_budget_is_the_fraction_of_available_memory_and_context_counts():
    # available 1,000,000, fraction 0.5: budget 500,000; need = 200,000 context + 1000 b * 1.25 <= 500,000 -> b <= 240
    dev = simulated(lambda b: 1000 * b, available=1_000_000, context=200_000)
    found = find_batch_size(None, None, device=dev, target_memory_fraction=0.5, margin=0.25, max_batch_size=4096)
    assert found.budget_bytes == 500_000 and found.available_bytes == 1_000_000
    assert found.target_memory_fraction == 0.5
    assert found.batch_size == 128
    assert found.sizes_tried == [4096, 1, 64, 512, 128, 256]
    assert next(t for t in found.trials if t.batch_size == 128).need_bytes == 200_000 + 160_000


def test_nothing_fits_error_carries_the_evidence():
    dev = simulated(lambda b: 10**6 + 1000 * b if b < 64 else None)
    with pytest.raises(NothingFitsError) as err:
        find_batch_size(None, None, device=dev, min_batch_size=4, max_batch_size=256, budget_bytes=10**6)
    ev = err.value.evidence
    assert "even the smallest candidate, 4, does not fit" in str(err.value)
    assert ev["sizes_tried"] == dev.calls == [256, 4]
    assert ev["fitted"] == [False, False]
    assert ev["peak_bytes"] == {256: None, 4: 10**6 + 4000}
    assert [t["status"] for t in ev["trials"]] == ["oom", "over_budget"]
    assert ev["trials"][1]["need_bytes"] == int((10**6 + 4000) * 1.05)
    assert ev["budget_bytes"] == 10**6 and ev["margin"] == 0.05 and ev["mode"] == "train"
    assert ev["label"] == "simulated" and ev["min_batch_size"] == 4 and ev["max_batch_size"] == 256


@settings(max_examples=150, deadline=None)
@given(lo=st.integers(1, 300), span=st.integers(0, 5000), per_sample=st.integers(1, 10**4),
       budget=st.integers(1, 10**8), oom_above=st.integers(1, 6000), grid=st.sampled_from(["pow2", "multiple_of_8"]))
def test_never_returns_a_size_that_did_not_fit(lo, span, per_sample, budget, oom_above, grid):
    dev = simulated(lambda b: per_sample * b if b <= oom_above else None)
    hi = lo + span
    candidates = Grid(lo, hi, grid).values()
    fitting = [b for b in candidates if b <= oom_above and math.floor(per_sample * b * 1.05) <= budget]
    try:
        found = find_batch_size(None, None, device=dev, min_batch_size=lo, max_batch_size=hi, batch_grid=grid,
                                budget_bytes=budget)
    except NothingFitsError as exc:
        assert not candidates or candidates[0] not in fitting
        assert exc.evidence["sizes_tried"] == dev.calls
        return
    assert found.batch_size == max(fitting)
    answer = next(t for t in found.trials if t.batch_size == found.batch_size)
    assert answer.fits and answer.need_bytes <= budget
    bigger = [b for b in candidates if b > found.batch_size]
    if bigger:  # the next grid size was tried and did not fit
        assert not next(t for t in found.trials if t.batch_size == bigger[0]).fits
    assert len(dev.calls) == len(set(dev.calls)) <= 2 + math.ceil(math.log2(max(len(candidates), 1)))


def test_cache_keeps_measurements_as_json_and_redecides_each_budget(tmp_path):
    peak = lambda b: 1000 * b if b <= 512 else None  # noqa: E731
    dev = simulated(peak, available=10**7)
    kw = dict(device=dev, max_batch_size=1024, cache_dir=tmp_path, cache_key="toy")
    first = find_batch_size(None, None, **kw, budget_bytes=10**6)
    assert first.batch_size == 512 and not first.cache_hit and dev.calls == [1024, 1, 32, 128, 256, 512]
    data = json.loads((tmp_path / CACHE_FILE).read_text())  # JSON, nothing else
    (entry,) = data["entries"].values()
    assert entry["key"]["user_key"] == "toy" and entry["key"]["mode"] == "train"
    assert sorted(map(int, entry["trials"])) == [1, 32, 128, 256, 512, 1024]

    dev.calls.clear()
    again = find_batch_size(None, None, **kw, budget_bytes=10**6)
    assert again.cache_hit and dev.calls == [] and again.batch_size == 512
    assert all(t.cached for t in again.trials) and again.sizes_tried == first.sizes_tried

    # a smaller budget: cached peaks are decided again, only the missing sizes are measured
    smaller = find_batch_size(None, None, **kw, budget_bytes=70_000)  # need 1050 b: up to b = 66
    assert smaller.batch_size == 64 and smaller.sizes_tried == [1024, 1, 32, 128, 64]
    assert dev.calls == [64] and [t.cached for t in smaller.trials] == [True, True, True, True, False]
    # an OOM is reused only under a budget at most what the size had (available, 10**7): a larger one measures again
    dev.calls.clear()
    find_batch_size(None, None, **kw, budget_bytes=2 * 10**7)
    assert dev.calls == [1024]
    # another key shares nothing
    dev.calls.clear()
    find_batch_size(None, None, **{**kw, "cache_key": "other"}, budget_bytes=10**6)
    assert dev.calls == [1024, 1, 32, 128, 256, 512]


def test_arguments_and_callables_are_refused_before_measuring(tmp_path):
    dev = simulated(lambda b: b)
    with pytest.raises(UserModelError, match="cache_key"):
        find_batch_size(lambda: None, lambda b: None, device=dev, cache_dir=tmp_path)
    for kwargs, argument in [({"mode": "eval"}, "mode"), ({"steps_per_trial": 1}, "steps_per_trial"),
                             ({"target_memory_fraction": 0}, "target_memory_fraction"),
                             ({"min_batch_size": 8, "max_batch_size": 4}, "max_batch_size"),
                             ({"margin": 0.01}, "margin"), ({"batch_grid": "odd"}, "batch_grid"),
                             ({"dtype": "int8"}, "dtype"), ({"threads": 0}, "threads")]:
        with pytest.raises(UserModelError) as err:
            find_batch_size(None, None, device=dev, **kwargs)
        assert err.value.argument == argument
    assert dev.calls == []
    # CPU trials run in fresh processes: a lambda cannot travel there, refused before any process starts
    with pytest.raises(UserModelError, match="imported by reference") as err:
        find_batch_size(lambda: None, M + "make_batch", device="cpu")
    assert err.value.argument == "make_model"
    with pytest.raises(UserModelError, match="loss") as err:
        find_batch_size(M + "make_model", M + "make_batch", None, device="cpu")
    for bad, argument, text in [("not_a_module", "make_model", "must return a torch.nn.Module, got str"),
                                ("NOT_CALLABLE", "make_model", "is not callable")]:
        with pytest.raises(UserModelError, match=text) as err:
            find_batch_size(M + bad, M + "make_batch", device="cpu")
        assert err.value.argument == argument
    with pytest.raises(UserModelError, match=r"must return a scalar tensor, got a tensor of shape \(2, 1\)"):
        find_batch_size(M + "make_model", M + "make_batch", M + "vector_loss", device="cpu")
    with pytest.raises(UserModelError, match=r"must return \(inputs, targets\), got Tensor"):
        find_batch_size(M + "make_model", M + "one_tensor", device="cpu")


class ScriptedCuda:
    """CUDA-like counters whose peaks a test's make_batch sets: reserved bytes, global free memory, a peak."""

    kind, index = "cuda", 0

    def __init__(self):
        self.free, self.reserved, self.peak, self.released = 10**9, 4096, 4096, 0

    def describe(self):
        return DeviceInfo(kind="cuda", name="ScriptedGPU", total_bytes=2 * 10**9, torch_version="test")

    def free_bytes(self):
        return self.free

    def current_bytes(self):
        return self.reserved

    def reset_peak(self):
        self.peak = self.reserved

    def peak_bytes(self):
        return self.peak, self.peak

    def release(self):  # empty_cache: what a trial left outside the allocator is gone again
        self.free, self.released = 10**9, self.released + 1


def test_cuda_trials_peak_is_reserved_growth_plus_growth_outside_the_allocator():
    cuda = ScriptedCuda()

    def make_batch(b):
        if b > 256:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        cuda.peak = max(cuda.peak, cuda.reserved + 1000 * b)  # the allocator's segments at the step's peak
        cuda.free -= 7  # a library handle outside the allocator, per step
        return torch.zeros(b, 3), torch.zeros(b, 1)

    job = build_job(lambda: torch.nn.Linear(3, 1), make_batch, "mse", "Adam", mode="train", steps=2)
    trials = CudaTrials(job, counters=cuda, device="cpu")  # the steps run on the CPU, the counters are scripted
    found = find_batch_size(None, None, device=trials, max_batch_size=1024, budget_bytes=10**6)
    assert found.label == "cuda" and found.device.name == "ScriptedGPU"
    # 1024 oom; 1 yes; 32 yes; 128 yes; 256 yes; 512 oom: answer 256 (need 1.05 * (1000 b + 14) <= 10**6)
    assert found.sizes_tried == [1024, 1, 32, 128, 256, 512]
    assert [t.status for t in found.trials] == ["oom", "ok", "ok", "ok", "ok", "oom"]
    assert [t.peak_bytes for t in found.trials if t.status == "ok"] == [1000 * b + 14 for b in (1, 32, 128, 256)]
    assert found.batch_size == 256 and all(t.context_bytes == 0 for t in found.trials)
    assert cuda.released >= 2 * len(found.trials)  # freed before and after every trial, OOMs included


@pytest.mark.parametrize("mode", ["train", "val"])
def test_steps_run_the_user_module(mode):
    seen = []

    def make_batch(b):
        seen.append(b)
        return (torch.randn(b, 4), torch.randn(b, 4)), torch.randint(0, 3, (b,))

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    job = build_job(Pair, make_batch, "cross_entropy", "AdamW" if mode == "train" else None, mode=mode, steps=3,
                    dtype="float64")
    run_steps(job, 5, "cpu")
    assert seen == [5, 5, 5]  # a new batch every step


@pytest.mark.slow
def test_cpu_module_in_rss_mode_finds_the_largest_fitting_batch(tmp_path):
    """A real module on this CPU, one fresh process per size: the answer fitted, the next grid size did not, and
    re-measured afresh it fits again; NothingFitsError when the smallest size does not fit (about 35 s)."""
    refs = dict(make_model=M + "make_model", make_batch=M + "make_batch", loss_fn=M + "loss_fn", optimizer="SGD")
    trials = CpuRssTrials(build_job(*refs.values(), mode="train", steps=2))  # one trial server for every call
    try:
        _cpu_module_checks(dict(refs, steps_per_trial=2, device=trials), tmp_path)
    finally:
        trials.close()


def _cpu_module_checks(kw, tmp_path):
    cached = dict(kw, cache_dir=tmp_path)
    small = find_batch_size(**cached, min_batch_size=64, max_batch_size=64).trials[0]
    large = find_batch_size(**cached, min_batch_size=4096, max_batch_size=4096).trials[0]
    assert small.fits and large.fits and small.context_bytes > 0
    # 4096 - 64 samples of 2048-wide activations: tens of MiB above allocator noise
    assert large.peak_bytes - small.peak_bytes > 40 * 2**20
    budget = int(small.need_bytes + 0.35 * (large.need_bytes - small.need_bytes))
    found = find_batch_size(**cached, min_batch_size=64, max_batch_size=4096, budget_bytes=budget, log=print)
    print(f"budget {budget / 2**20:.1f} MiB: batch size {found.batch_size}, tried {found.sizes_tried}, needs "
          f"{[round(t.need_bytes / 2**20, 1) for t in found.trials]} MiB")
    assert found.label == "cpu-rss" and found.device.kind == "cpu"
    assert found.sizes_tried[:2] == [4096, 64] and [t.cached for t in found.trials[:2]] == [True, True]
    decided = {t.batch_size: t.fits for t in found.trials}
    assert largest_fitting(decided.__getitem__, 64, 4096).tried == found.sizes_tried  # the search's own order
    answer = next(t for t in found.trials if t.batch_size == found.batch_size)
    assert answer.fits and answer.need_bytes <= budget
    nxt = next(t for t in found.trials if t.batch_size == 2 * found.batch_size)
    assert not nxt.fits and nxt.status == "over_budget" and nxt.need_bytes > budget
    assert 256 <= found.batch_size <= 2048  # a third of the way from 64 to 4096, on a linear need
    # measured again in a fresh process, without the cache: the answer still fits the budget
    again = find_batch_size(**kw, min_batch_size=found.batch_size, max_batch_size=found.batch_size,
                            budget_bytes=budget)
    assert again.batch_size == found.batch_size and not again.trials[0].cached
    # the smallest size does not fit: from the cached measurements, and afresh under a budget below the context
    with pytest.raises(NothingFitsError) as err:
        find_batch_size(**cached, min_batch_size=64, max_batch_size=4096, budget_bytes=small.need_bytes - 1)
    ev = err.value.evidence
    assert ev["sizes_tried"] == [4096, 64] and ev["peak_bytes"] == {4096: large.peak_bytes, 64: small.peak_bytes}
    assert ev["budget_bytes"] == small.need_bytes - 1
    with pytest.raises(NothingFitsError) as err:
        find_batch_size(**kw, min_batch_size=64, max_batch_size=64, budget_bytes=2**20)
    (trial,) = err.value.evidence["trials"]
    assert trial["batch_size"] == 64 and not trial["fits"] and trial["status"] in ("oom", "over_budget")


def test_cli_model_errors_name_the_option_and_exit_2(capsys):
    cases = [
        (["--model", "no_such_pkg.nets:make_model"], "--model: cannot import 'no_such_pkg.nets'"),
        (["--model", "tests.support.modules"], "--model: must be package.module:function"),
        (["--model", M + "NOT_CALLABLE"], "--model: 'tests.support.modules:NOT_CALLABLE' is not callable"),
        (["--model", M + "not_a_module"], "--model: must return a torch.nn.Module, got str"),
        (["--model", M + "make_model", "--batch", M + "one_tensor"], "--batch: make_batch(2) must return"),
        (["--model", M + "make_model", "--loss", M + "vector_loss"], "--loss: must return a scalar tensor"),
        (["--model", M + "make_model", "--optimizer", "Lion"], "--optimizer: must be one of"),
        (["--model", M + "make_model", "--dtype", "int8"], "--dtype: must be None or one of"),
        (["--model", "raysweep.model:init_weights"], "--batch (not given: make_batch of the model's module)"),
        (["--model", M + "make_model", "--target-memory-fraction", "1.5"], "--target-memory-fraction: must be in"),
        (["--model", M + "make_model", "--fractions", "0.5"], "--fractions: only with SPACE.yaml"),
        (["--max-batch-size", "8"], "give SPACE.yaml or --model"),
    ]
    for argv, text in cases:
        assert main(argv + ["--device", "cpu"] if "--model" in argv else argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {text}"), (argv, err)
        assert err.count("\n") == 1, err  # one line


def test_cli_model_success(tmp_path, capsys):
    out = tmp_path / "found.json"
    argv = ["--model", M + "make_model", "--loss", M + "loss_fn", "--optimizer", "Adam", "--device", "cpu",
            "--min-batch-size", "8", "--max-batch-size", "256", "--steps-per-trial", "2", "--output", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "batch size 256 on" in text and "(cpu-rss)" in text and "sizes tried [256]" in text
    report = json.loads(out.read_text())
    assert report["batch_size"] == 256 and report["sizes_tried"] == [256] and report["optimizer"] == "Adam"
    assert report["trials"][0]["fits"] and report["trials"][0]["peak_bytes"] > 0
