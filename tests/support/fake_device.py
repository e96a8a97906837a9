"""A FAKE CUDA device for the autobatch tests: counters (total, free, peak) and an out-of-memory error above a
threshold, the bytes a step "uses" computed from its shapes; and the probe run against it."""

from __future__ import annotations

import torch

from raysweep.autobatch import DeviceInfo, request_from_spec
from raysweep.autobatch.probe import InProcessExecutor, fit_model, run_probe
from raysweep.space import parse_spec

GiB, MiB = 2**30, 2**20
# the fake's true cost of a step beyond the exact static state (the memory model's five fitted terms)
TRUE = {"overhead": 3 * MiB, "param": 0.5, "sample": 8.0, "hidden": 3.0, "readout": 2.0}


def true_bytes(request, p) -> float:
    """The fake's truth, from first principles (not from the code under test)."""
    s = 4
    k, b = p["n_members"], p["batch_size"]
    widths = [request.dim] + [p["width"]] * (p["depth"] - 1) + [request.n_out]
    params = sum(a * c for a, c in zip(widths[:-1], widths[1:]))
    copies = {"SGD": 3, "Adam": 5}[p["optimizer"]]  # weights, grads, init copy (+ two Adam moments)
    return (k * params * copies * s + TRUE["overhead"] + TRUE["param"] * k * params * s
            + TRUE["sample"] * b * request.dim * s  # the input minibatch, shared by the members
            + TRUE["hidden"] * k * b * (p["depth"] - 1) * p["width"] * s  # per member, per hidden layer
            + TRUE["readout"] * k * b * (p["width"] if request.n_out == 1 else request.n_out) * s)


class FakeDevice:
    """A CUDA-like device: global free memory, a per-process context, a caching allocator's reserved/peak bytes,
    and torch.OutOfMemoryError when a process asks for more than ``oom_above`` bytes."""

    kind = "cuda"

    def __init__(self, *, total=80 * GiB, free=79 * GiB, context=500 * MiB, oom_above=None, name="FakeGPU"):
        self.total, self.free_global, self.context = total, free, context
        self.oom_above = free - context if oom_above is None else oom_above
        self.name = name
        self.ctx = self.reserved = self.peak = 0
        self.n_runs = 0

    def describe(self):
        return DeviceInfo("cuda", self.name, self.total, torch.__version__, "12.4")

    def total_bytes(self):
        return self.total

    def free_bytes(self):
        return self.free_global - self.ctx - self.reserved

    def current_bytes(self):
        return self.reserved

    def reset_peak(self):
        self.peak = self.reserved

    def peak_bytes(self):
        return self.peak, int(0.9 * self.peak)

    # what a probe process does to the device
    def start(self):
        self.ctx = self.context
        self.n_runs += 1

    def use(self, nbytes: float):
        if nbytes > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes:.0f} bytes")
        self.reserved = max(self.reserved, int(nbytes))
        self.peak = max(self.peak, self.reserved)

    def release(self):
        self.ctx = self.reserved = 0


def runner_for(dev: FakeDevice, distort=lambda p: 1.0):
    def run(request, point):
        assert set(point) == {"width", "depth", "batch_size", "n_members", "optimizer", "mode", "role"}
        dev.start()
        dev.use(true_bytes(request, point) * distort(point))
    return run


SPACE = {"batch_size": [64, 256, 1024], "eta": [0.1, 0.2], "width": [256, 1024, 4096], "depth": [2, 3],
         "optimizer": ["Adam"]}


def make_spec(**space):
    return parse_spec({"name": "fake", "experiment": {"family": "poly_online", "dim": 32, "steps": 10},
                       "space": {**SPACE, **space}})


def probe_fake(dev, spec=None, config=None, distort=lambda p: 1.0):
    request = request_from_spec(spec or make_spec(), config)
    result = run_probe(request, InProcessExecutor(dev, runner_for(dev, distort)), dev)
    return request, result, fit_model(request, result)
