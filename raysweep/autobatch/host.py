"""Where the probe runs: a Ray actor on the target device (``num_gpus=1`` when the cluster has GPUs), or a plain
subprocess without Ray. The driver only builds a :class:`ProbeRequest` (numbers from the spec:
:func:`raysweep.autobatch.sizing.request_from_spec`), looks the cache up and fits; it never imports a model, never
touches CUDA.

    probe_and_fit(spec, storage=DIR)   # -> MemoryModel: cache hit, else probe in an actor, fit, store
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback

from raysweep.autobatch.cache import ModelCache, cache_key
from raysweep.autobatch.config import AutobatchConfig
from raysweep.autobatch.device import DeviceInfo, counters_for, cpu_device_info
from raysweep.autobatch.memory import MemoryModel
from raysweep.autobatch.probe import ProbeRequest, ProcessExecutor, fit_model, run_probe
from raysweep.autobatch.sizing import request_from_spec
from raysweep.errors import RaysweepError

# torch loads in the probe process only, Ray only when the probe runs in an actor: the driver needs neither


class ProbeHost:
    """Runs in the probe process (actor or subprocess): picks the device, describes it, probes it."""

    def __init__(self, device: str = "auto"):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RaysweepError("experiment.device is cuda but the probe process sees no CUDA device")
        self.kind = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"

    def describe(self) -> dict:
        return counters_for(self.kind).describe().to_dict()

    def probe(self, request: dict) -> dict:
        counters = counters_for(self.kind)
        result = run_probe(ProbeRequest.from_dict(request), ProcessExecutor(counters), counters)
        if self.kind == "cpu":
            # A CPU trial's worker is a process like this one (Python, torch, Ray's core worker when this is an
            # actor) that also imported the trial modules (torch-level: imported here, in the probe process only):
            # its baseline RSS is at least this process's.
            for name in ("raysweep.data", "raysweep.train", "raysweep.trial"):
                importlib.import_module(name)

            result["context_bytes"] = max(result["context_bytes"], counters.current_bytes())
        return result


class _RayHost:
    """A ProbeHost actor, started on the first call: one GPU when the cluster has one and the spec allows it, else
    one CPU. Attaches to ``RAY_ADDRESS`` or starts an embedded local Ray when this process has none."""

    def __init__(self, device: str):
        self.device, self.actor = device, None

    def call(self, method: str, request: dict | None = None) -> dict:
        import ray

        if self.actor is None:
            if not ray.is_initialized():  # RAY_ADDRESS attaches; else a fresh local Ray, not any cluster found
                ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
            gpus = 1 if self.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
            self.actor = ray.remote(num_cpus=1, num_gpus=gpus)(ProbeHost).remote(self.device)
        return ray.get(getattr(self.actor, method).remote(*([request] if request is not None else [])))

    def close(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)


class _SubprocessHost:
    """The same calls in one fresh Python subprocess (no Ray), started on the first call; one JSON line per call
    each way."""

    def __init__(self, device: str):
        self.device, self.proc, self.stderr = device, None, None

    def _start(self) -> None:
        code = "from raysweep.autobatch.host import _main; _main()"
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child cannot block on it
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.device], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)

    def call(self, method: str, request: dict | None = None) -> dict:
        if self.proc is None:
            self._start()
        self.proc.stdin.write(json.dumps({"method": method, "request": request}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RaysweepError(f"the probe subprocess failed (exit {self.proc.returncode}):\n"
                                f"{self.stderr.read()[-3000:]}")
        out = json.loads(line)
        if "error" in out:
            raise RaysweepError(f"the probe subprocess failed:\n{out['error']}")
        return out["result"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(30)
            self.proc.stdout.close()
            self.stderr.close()


def probe_and_fit(spec, *, config: AutobatchConfig | None = None, storage=None, device_info: DeviceInfo | None = None,
                  use_ray: bool = True, refresh: bool = False, log=None) -> MemoryModel:
    """The memory model of ``spec``'s shapes on the target device: from the cache in ``storage`` when a model with
    the same key (shapes, device, versions, probe settings) covers the space's widths, else from a fresh probe in
    a Ray actor (``use_ray``) or a subprocess, then stored. Raises NothingFitsError when nothing can be measured.

    ``device_info`` skips asking the probe process for its device; with ``experiment.device: cpu`` the driver
    describes the CPU itself. A cache hit with a known device starts no process at all."""
    config = config or getattr(spec, "autobatch", None) or AutobatchConfig()
    request = request_from_spec(spec, config)
    host = _RayHost(request.device) if use_ray else _SubprocessHost(request.device)
    try:
        if device_info is None:
            device_info = (cpu_device_info() if request.device == "cpu"
                           else DeviceInfo.from_dict(host.call("describe")))
        key = cache_key(request, device_info)
        cache = ModelCache(storage) if storage is not None else None
        model = cache.lookup(key) if cache and not refresh else None
        if model is not None and _covers(model, request):
            if log:
                log(f"autobatch: cached memory model of {device_info.name} ({cache.path})")
            return model
        result = host.call("probe", request.to_dict())
        if log:
            log(f"autobatch: probed {len(result['records'])} points on {device_info.name} "
                f"in {result['wall_time_s']:.1f} s")
        model = fit_model(request, result, key=key)
        if cache:
            cache.store(key, model)
        return model
    finally:
        host.close()


def _covers(model: MemoryModel, request: ProbeRequest) -> bool:
    w = model.covered.get("width", [0, 0])
    return w[0] <= min(request.widths) and max(request.widths) <= w[1]


def format_record(rec: dict) -> str:
    """One probe-log line."""
    shape = f"{rec['optimizer']}/{rec['mode']} width={rec['width']} depth={rec['depth']} " \
            f"batch_size={rec['batch_size']} n_members={rec['n_members']} ({rec['role']})"
    if rec["status"] != "ok":
        return f"  {shape}: {rec['status']} ({rec.get('error')})"
    return f"  {shape}: peak {rec['peak_bytes'] / 2**20:.1f} MiB, context {rec['context_bytes'] / 2**20:.0f} MiB, " \
           f"{rec.get('wall_time_s', 0):.2f} s"


def _main() -> None:
    """The subprocess side of :class:`_SubprocessHost`: answer JSON lines on stdin until it closes."""
    host = ProbeHost(sys.argv[1])
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # only answers go to stdout
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            result = host.describe() if msg["method"] == "describe" else host.probe(msg["request"])
            answer = {"result": result}
        except Exception:  # noqa: BLE001 - reported to the driver, which raises
            answer = {"error": traceback.format_exc()}
        real_stdout.write(json.dumps(answer) + "\n")
        real_stdout.flush()
