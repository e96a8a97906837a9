"""Autobatch for any PyTorch module: the largest batch size whose real training (or eval) steps fit the memory
budget, found by measuring, outside any sweep.

    from raysweep.autobatch.module import find_batch_size

    found = find_batch_size("mypkg.nets:make_model", "mypkg.nets:make_batch", "mse", optimizer="AdamW")
    found.batch_size, found.sizes_tried, found.budget_bytes

- ``make_model() -> torch.nn.Module``; ``make_batch(batch_size) -> (inputs, targets)`` (``inputs`` a tensor, a
  tuple / list of tensors passed positionally, or a dict passed by keyword); ``loss_fn(outputs, targets) ->`` a
  scalar tensor, or ``"mse"`` / ``"cross_entropy"``; ``optimizer``: ``"SGD"``, ``"Adam"``, ``"AdamW"`` or a
  callable ``params -> torch.optim.Optimizer`` (unused in ``val`` mode). Each may also be given by reference,
  ``"package.module:function"``.
- A trial at batch size B builds a fresh model and runs ``steps_per_trial`` real steps (train: zero_grad,
  forward, loss, backward, optimizer step, with a new batch each step, at least 2 so that optimizer state exists;
  val: ``model.eval()`` and a forward, plus the loss when given, under ``torch.no_grad``), and its peak memory is
  measured. B *fits* when the steps ran without running out of memory and ``need = context + peak * (1 + margin)
  <= budget``; ``budget = target_memory_fraction * available`` (or ``budget_bytes``), ``margin`` at least
  :data:`raysweep.autobatch.memory.MIN_MARGIN` (it covers run-to-run variation: other batches, allocator
  fragmentation). An out-of-memory error (``torch.OutOfMemoryError``, a ``RuntimeError`` "out of memory",
  ``MemoryError``, :func:`raysweep.autobatch.guard.is_oom`) or a process killed by the kernel means "does not fit";
  any other error in the user's code is raised.
- The sizes tried are those of :func:`raysweep.autobatch.search.largest_fitting`: the grid's largest, then its
  smallest, then a bisection of the grid indices (at most ``2 + ceil(log2(n))`` trials, never one size twice). The
  answer is always a size that was measured and fitted; when the smallest does not fit, :class:`NothingFitsError`
  carries every size tried with its peak, need and status, and the budget.

Where the peak comes from (the CUDA allocator in this process, or a fresh process's resident set on a CPU; a
fake in tests): :mod:`raysweep.autobatch.trials`.

Cache (``cache_dir``; none by default): ``<cache_dir>/autobatch_modules.json``, JSON only, one entry per key: the
references of the model, batch, loss and optimizer (or the user's ``cache_key``), mode, dtype, steps, threads and
the device (kind, name, total memory, torch / CUDA versions). It stores the *measurements* per batch size, not an
answer: a later call re-decides every size against its own budget and margin, measures only sizes it lacks, and
reuses an out-of-memory record only when its budget is at most the memory that size ran out of. ``cache_hit`` is
true when nothing had to be measured.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raysweep import limits
from raysweep.autobatch.cache import key_hash, read_entries, write_json_atomic
from raysweep.autobatch.config import MODES
from raysweep.autobatch.device import DeviceInfo
from raysweep.autobatch.guard import is_oom
from raysweep.autobatch.memory import ITEMSIZE, MIN_MARGIN
from raysweep.autobatch.references import reference_of, resolve
from raysweep.autobatch.search import GRIDS, largest_fitting
from raysweep.autobatch.trials import TRIAL_TIMEOUT_S, TrialDevice, device_for
from raysweep.errors import NothingFitsError, UserModelError

# torch is imported inside the functions that build or run a model: importing this module stays light

CACHE_FILE = "autobatch_modules.json"
CACHE_VERSION = 1
LOSSES = {"mse": "mse_loss", "cross_entropy": "cross_entropy"}  # names -> torch.nn.functional
OPTIMIZERS = ("SGD", "Adam", "AdamW")
TRIAL_LR = 1e-9  # a named optimizer's learning rate: the trial measures memory, not training
DEFAULT_STEPS = {"train": 3, "val": 2}  # as AutobatchConfig's steps_per_trial / steps_per_trial_val


# --- references and the job ---------------------------------------------------------------------------------------


@dataclass
class ModuleJob:
    """What one trial runs: the resolved callables, their references (None when not importable) and the step."""

    kind = "module"  # a class attribute: not a field

    make_model: Callable
    make_batch: Callable
    loss_fn: Callable | None
    optimizer: Callable | str | None  # a name of OPTIMIZERS, a callable, or None (val)
    mode: str
    steps: int
    dtype: str | None = None
    refs: dict[str, str | None] = field(default_factory=dict)  # argument -> reference or name

    def to_dict(self) -> dict:
        """The job as names and references only (it crosses into a child process as plain data); UserModelError
        for a callable that cannot be imported by reference."""
        for argument, value in (("make_model", self.make_model), ("make_batch", self.make_batch),
                                ("loss_fn", self.loss_fn), ("optimizer", self.optimizer)):
            if value is not None and self.refs.get(argument) is None:
                raise UserModelError(argument, f"{value!r} cannot be imported by reference, and a CPU trial runs in "
                                               "a fresh process: use a module-level function or "
                                               "'package.module:function'")
        return {"refs": dict(self.refs), "mode": self.mode, "steps": self.steps, "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> ModuleJob:
        return build_job(d["refs"]["make_model"], d["refs"]["make_batch"], d["refs"].get("loss_fn"),
                         d["refs"].get("optimizer"), mode=d["mode"], steps=d["steps"], dtype=d["dtype"])

    def check(self, batch_size: int, device: str = "cpu") -> None:
        check_job(self, batch_size, device)

    def run(self, batch_size: int, device: str = "cpu") -> None:
        run_steps(self, batch_size, device)


def build_job(make_model, make_batch, loss_fn, optimizer, *, mode: str, steps: int,
              dtype: str | None = None) -> ModuleJob:
    """Resolve references and names to callables; UserModelError naming the argument when one cannot be used."""
    refs: dict[str, str | None] = {}

    def callable_of(value, argument):
        if isinstance(value, str):
            refs[argument] = value
            return resolve(value, argument)
        if not callable(value):
            raise UserModelError(argument, f"must be a callable or 'package.module:function', got "
                                           f"{type(value).__name__}")
        refs[argument] = reference_of(value)
        return value

    model_fn = callable_of(make_model, "make_model")
    batch_fn = callable_of(make_batch, "make_batch")
    if loss_fn is None:
        if mode == "train":
            raise UserModelError("loss_fn", "a train step needs a loss: a callable, 'mse' or 'cross_entropy'")
        loss = None
    elif isinstance(loss_fn, str) and loss_fn in LOSSES:
        refs["loss_fn"] = loss_fn
        loss = _named_loss(loss_fn)
    else:
        loss = callable_of(loss_fn, "loss_fn")
    if mode == "val":
        opt = None
    elif optimizer is None:
        raise UserModelError("optimizer", f"a train step needs an optimizer: one of {OPTIMIZERS} or a callable "
                                          "params -> torch.optim.Optimizer")
    elif isinstance(optimizer, str) and optimizer in OPTIMIZERS:
        refs["optimizer"] = opt = optimizer
    elif isinstance(optimizer, str) and ":" not in optimizer:
        raise UserModelError("optimizer", f"must be one of {OPTIMIZERS} or 'package.module:function', "
                                          f"got {optimizer!r}")
    else:
        opt = callable_of(optimizer, "optimizer")
    return ModuleJob(model_fn, batch_fn, loss, opt, mode, steps, dtype, refs)


def _named_loss(name: str) -> Callable:
    import torch.nn.functional as F  # heavy: only a job with a named loss needs it

    return getattr(F, LOSSES[name])


# --- one trial's steps ----------------------------------------------------------------------------------------------


def _to(value, device, dtype):
    """Tensors (in tuples, lists, dicts) moved to ``device``; floating ones cast to ``dtype`` when given."""
    import torch  # heavy: trials only

    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    return value


def _split(batch, batch_size: int) -> tuple:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise UserModelError("make_batch", f"make_batch({batch_size}) must return (inputs, targets), got "
                                           f"{type(batch).__name__}" + (f" of length {len(batch)}"
                                                                        if isinstance(batch, (tuple, list)) else ""))
    return batch[0], batch[1]


def _forward(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _model(job: ModuleJob, device, dtype):
    import torch  # heavy: trials only

    try:
        model = job.make_model()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's callable failed (or exited): say which
        if is_oom(exc):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserModelError("make_model", f"raised {type(exc).__name__}: {text}") from exc
    if not isinstance(model, torch.nn.Module):
        raise UserModelError("make_model", f"must return a torch.nn.Module, got {type(model).__name__}")
    return model.to(device=device, dtype=dtype)


def _optimizer(job: ModuleJob, params):
    import torch  # heavy: trials only

    if isinstance(job.optimizer, str):
        return getattr(torch.optim, job.optimizer)(params, lr=TRIAL_LR)
    opt = job.optimizer(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise UserModelError("optimizer", f"must return a torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


def run_steps(job: ModuleJob, batch_size: int, device: str = "cpu") -> None:
    """One trial: a fresh model and ``job.steps`` real steps at ``batch_size`` on ``device``; raises on OOM."""
    import torch  # heavy: trials only

    dtype = getattr(torch, job.dtype) if job.dtype else None
    model = _model(job, device, dtype)
    if job.mode == "train":
        model.train()
        opt = _optimizer(job, [p for p in model.parameters() if p.requires_grad])
        for _ in range(job.steps):
            inputs, targets = _to(_split(job.make_batch(batch_size), batch_size), device, dtype)
            opt.zero_grad(set_to_none=True)
            loss = job.loss_fn(_forward(model, inputs), targets)
            loss.backward()
            opt.step()
            loss = loss.item()  # as a training loop reads it: waits for the step
    else:
        model.eval()
        with torch.no_grad():
            for _ in range(job.steps):
                inputs, targets = _to(_split(job.make_batch(batch_size), batch_size), device, dtype)
                out = _forward(model, inputs)
                if job.loss_fn is not None:
                    out = job.loss_fn(out, targets).item()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def check_job(job: ModuleJob, batch_size: int, device: str = "cpu") -> None:
    """Before measuring: the callables return what they must (a Module; ``(inputs, targets)``; a scalar loss; an
    Optimizer), by one no-grad forward at ``batch_size`` on ``device``. UserModelError naming the culprit.
    Running out of memory here is not an error: the search then finds what fits (or that nothing does)."""
    import torch  # heavy: trials only

    dtype = getattr(torch, job.dtype) if job.dtype else None
    try:
        model = _model(job, device, dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        if job.mode == "train":
            if not params:
                raise UserModelError("make_model", "the model has no trainable parameters (nothing to train)")
            _optimizer(job, params)
        try:
            batch = job.make_batch(batch_size)
        except Exception as exc:  # noqa: BLE001 - the user's callable failed: say which
            if is_oom(exc):
                raise
            raise UserModelError("make_batch", f"make_batch({batch_size}) raised {type(exc).__name__}: {exc}") from exc
        inputs, targets = _to(_split(batch, batch_size), device, dtype)
        model.eval()
        with torch.no_grad():
            try:
                out = _forward(model, inputs)
            except Exception as exc:  # noqa: BLE001
                if is_oom(exc):
                    raise
                raise UserModelError("make_model", f"the model's forward on make_batch({batch_size})'s inputs raised "
                                                   f"{type(exc).__name__}: {exc}") from exc
            if job.loss_fn is not None:
                try:
                    loss = job.loss_fn(out, targets)
                except Exception as exc:  # noqa: BLE001
                    if is_oom(exc):
                        raise
                    raise UserModelError("loss_fn", f"raised {type(exc).__name__}: {exc}") from exc
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else \
                        type(loss).__name__
                    raise UserModelError("loss_fn", f"must return a scalar tensor, got {got}")
    except Exception as exc:  # noqa: BLE001 - only OOM is swallowed
        if not is_oom(exc):
            raise
    finally:
        gc.collect()


# --- the result, the cache, the search ------------------------------------------------------------------------------


@dataclass
class SizeTrial:
    """One batch size tried: its measurement (or the cached one) and the decision."""

    batch_size: int
    fits: bool
    status: str  # ok (fits), over_budget (ran, need > budget), oom (ran out of memory)
    peak_bytes: int | None
    context_bytes: int | None
    need_bytes: int | None  # context + peak * (1 + margin); None after an OOM
    cached: bool = False
    wall_time_s: float | None = None
    error: str | None = None


@dataclass
class BatchSizeResult:
    """What :func:`find_batch_size` found, with the evidence: every size tried, in order."""

    batch_size: int
    trials: list[SizeTrial]
    device: DeviceInfo
    label: str  # cuda | cpu-rss | a fake's label
    mode: str
    optimizer: str | None  # the name or reference; None in val mode
    budget_bytes: int
    available_bytes: int
    target_memory_fraction: float | None  # None when budget_bytes was given
    margin: float
    grid: str
    cache_hit: bool = False
    cache_path: str | None = None
    key: dict | None = None

    @property
    def sizes_tried(self) -> list[int]:
        return [t.batch_size for t in self.trials]

    @property
    def peak_bytes(self) -> int | None:
        """The measured peak of the answer."""
        return next(t.peak_bytes for t in self.trials if t.batch_size == self.batch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device.to_dict()
        d["sizes_tried"] = self.sizes_tried
        return d


class MeasurementCache:
    """Measured trials per key in ``<folder>/autobatch_modules.json`` (JSON, rewritten atomically)."""

    def __init__(self, folder):
        self.path = Path(folder) / CACHE_FILE

    def _read(self) -> dict:
        return read_entries(self.path, CACHE_VERSION)

    def lookup(self, key: dict) -> dict[int, dict]:
        entry = self._read()["entries"].get(key_hash(key))
        if not entry or entry.get("key") != json.loads(json.dumps(key)):
            return {}
        return {int(b): rec for b, rec in entry.get("trials", {}).items()}

    def store(self, key: dict, trials: dict[int, dict]) -> Path:
        data = self._read()
        data["entries"][key_hash(key)] = {"key": key, "trials": {str(b): rec for b, rec in sorted(trials.items())}}
        return write_json_atomic(self.path, data)


def module_cache_key(refs: dict, *, user_key: str | None, mode: str, dtype: str | None, steps: int, threads: int,
                     device: DeviceInfo, label: str) -> dict:
    """The cache key (see the module docstring); UserModelError when neither references nor a user key name it."""
    if user_key is None and (refs.get("make_model") is None or refs.get("make_batch") is None):
        which = "make_model" if refs.get("make_model") is None else "make_batch"
        raise UserModelError("cache_key", f"{which} cannot be imported by reference, so it cannot key the cache: "
                                          "give cache_key='a name for this model and batch'")
    return {"user_key": user_key, "model": refs.get("make_model"), "batch": refs.get("make_batch"),
            "loss": refs.get("loss_fn"), "optimizer": refs.get("optimizer") if mode == "train" else None,
            "mode": mode, "dtype": dtype, "steps": steps, "threads": threads, "label": label,
            "device_kind": device.kind, "device_name": device.name, "device_total_bytes": int(device.total_bytes),
            "torch_version": device.torch_version, "cuda_version": device.cuda_version, "version": CACHE_VERSION}


def _check_numbers(mode, target_memory_fraction, min_batch_size, max_batch_size, steps, batch_grid, margin,
                   budget_bytes, dtype, threads) -> None:
    if mode not in MODES:
        raise UserModelError("mode", f"must be one of {MODES}, got {mode!r}")
    if not isinstance(target_memory_fraction, (int, float)) or not 0 < target_memory_fraction <= 1:
        raise UserModelError("target_memory_fraction", f"must be in (0, 1], got {target_memory_fraction!r}")
    for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limits.MAX_DIM:
            raise UserModelError(name, f"must be an integer in [1, {limits.text(limits.MAX_DIM)}], got {value!r}"
                                       f"{limits.why(limits.MAX_DIM)}")
    if max_batch_size < min_batch_size:
        raise UserModelError("max_batch_size", f"must be >= min_batch_size ({min_batch_size}), got {max_batch_size}")
    least = 2 if mode == "train" else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
        raise UserModelError("steps_per_trial", f"must be an integer >= {least} in {mode} mode"
                                                + (" (so that optimizer state exists)" if least == 2 else "")
                                                + f", got {steps!r}")
    if batch_grid not in GRIDS:
        raise UserModelError("batch_grid", f"must be one of {GRIDS}, got {batch_grid!r}")
    if not isinstance(margin, (int, float)) or margin < MIN_MARGIN:
        raise UserModelError("margin", f"must be a number >= {MIN_MARGIN}, got {margin!r}")
    if budget_bytes is not None and (not isinstance(budget_bytes, int) or budget_bytes < 1):
        raise UserModelError("budget_bytes", f"must be a positive integer, got {budget_bytes!r}")
    if dtype is not None and dtype not in ITEMSIZE:
        raise UserModelError("dtype", f"must be None or one of {', '.join(ITEMSIZE)}, got {dtype!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserModelError("threads", f"must be an integer >= 1, got {threads!r}")


def find_batch_size(
    make_model: Callable | str | None,
    make_batch: Callable | str | None,
    loss_fn: Callable | str | None = "mse",
    *,
    optimizer: Callable | str | None = "SGD",
    mode: str = "train",
    target_memory_fraction: float = 0.8,
    min_batch_size: int = 1,
    max_batch_size: int = 65536,
    steps_per_trial: int | None = None,
    batch_grid: str = "pow2",
    margin: float = MIN_MARGIN,
    budget_bytes: int | None = None,
    device: str | TrialDevice = "auto",
    dtype: str | None = None,
    threads: int = 1,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    timeout_s: float = TRIAL_TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> BatchSizeResult:
    """The largest batch size on ``batch_grid`` within ``[min_batch_size, max_batch_size]`` whose measured real
    steps fit the budget (see the module docstring for the rules, the devices and the cache).

    ``steps_per_trial`` defaults to 3 (train) / 2 (val); ``budget_bytes`` replaces ``target_memory_fraction x
    available``; ``device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` or a :class:`TrialDevice` (then the
    callables are neither checked nor called); ``dtype`` (``float32``, ``bfloat16``, ...) casts the model and the
    floating inputs; ``threads``: torch threads of a CPU trial. Raises :class:`UserModelError` (before measuring)
    when an argument or callable cannot be used, :class:`NothingFitsError` with the evidence when the smallest size
    does not fit.
    """
    steps = DEFAULT_STEPS.get(mode, 1) if steps_per_trial is None else steps_per_trial
    _check_numbers(mode, target_memory_fraction, min_batch_size, max_batch_size, steps, batch_grid, margin,
                   budget_bytes, dtype, threads)
    settings = dict(mode=mode, target_memory_fraction=target_memory_fraction, min_batch_size=min_batch_size,
                    max_batch_size=max_batch_size, steps=steps, batch_grid=batch_grid, margin=margin,
                    budget_bytes=budget_bytes, dtype=dtype, threads=threads, cache_dir=cache_dir, cache_key=cache_key,
                    say=log or (lambda _msg: None))
    if not isinstance(device, str):
        refs = {"make_model": _name_of(make_model), "make_batch": _name_of(make_batch),
                "loss_fn": _name_of(loss_fn), "optimizer": _name_of(optimizer)}
        return _search(device, refs, **settings)
    job = build_job(make_model, make_batch, loss_fn, optimizer, mode=mode, steps=steps, dtype=dtype)
    trials_on = device_for(job, device, threads=threads, timeout_s=timeout_s)
    try:
        trials_on.check(max(2, min_batch_size))  # 2: a per-sample loss of one sample would pass for a scalar
        return _search(trials_on, job.refs, **settings)
    finally:
        if hasattr(trials_on, "close"):
            trials_on.close()


def _search(trials_on: TrialDevice, refs: dict, *, mode, target_memory_fraction, min_batch_size, max_batch_size,
            steps, batch_grid, margin, budget_bytes, dtype, threads, cache_dir, cache_key, say) -> BatchSizeResult:
    """:func:`find_batch_size` once the device is ready."""
    info = trials_on.describe()
    available = int(trials_on.available_bytes())
    budget = int(budget_bytes) if budget_bytes is not None else int(target_memory_fraction * available)
    key = cache = None
    known: dict[int, dict] = {}
    if cache_dir is not None:
        key = module_cache_key(refs, user_key=cache_key, mode=mode, dtype=dtype, steps=steps, threads=threads,
                               device=info, label=trials_on.label)
        cache = MeasurementCache(cache_dir)
        known = cache.lookup(key)
    tried: list[SizeTrial] = []
    measured = 0

    def fits(batch_size: int) -> bool:
        nonlocal measured
        rec = known.get(batch_size)
        cached = rec is not None and (rec["status"] == "ok" or budget <= rec.get("limit_bytes", 0))
        if not cached:
            rec = {k: v for k, v in trials_on.run(batch_size, budget).items() if k != "user_error"}
            known[batch_size] = rec
            measured += 1
        trial = decide_trial(batch_size, rec, budget, margin, cached)
        tried.append(trial)
        say(format_trial(trial, budget))
        return trial.fits

    try:
        found = largest_fitting(fits, min_batch_size, max_batch_size, batch_grid, what=f"{mode} batch size")
    except NothingFitsError as exc:
        exc.evidence.update(budget_bytes=budget, available_bytes=available, margin=margin, mode=mode,
                            device=info.name, label=trials_on.label,
                            peak_bytes={t.batch_size: t.peak_bytes for t in tried},
                            trials=[asdict(t) for t in tried])
        raise
    finally:
        if cache is not None and measured:
            cache.store(key, known)
    return BatchSizeResult(
        batch_size=found.batch_size, trials=tried, device=info, label=trials_on.label, mode=mode,
        optimizer=refs.get("optimizer") if mode == "train" else None, budget_bytes=budget, available_bytes=available,
        target_memory_fraction=None if budget_bytes is not None else float(target_memory_fraction),
        margin=float(margin), grid=batch_grid, cache_hit=cache is not None and measured == 0,
        cache_path=str(cache.path) if cache is not None else None, key=key)


def _name_of(value) -> str | None:
    return value if isinstance(value, str) else (reference_of(value) if value is not None else None)


def decide_trial(batch_size: int, rec: dict, budget: int, margin: float, cached: bool) -> SizeTrial:
    """The margin rule on one measurement: fits when it ran and ``context + peak * (1 + margin) <= budget``."""
    common = {"batch_size": batch_size, "peak_bytes": rec.get("peak_bytes"), "context_bytes": rec.get("context_bytes"),
              "cached": cached, "wall_time_s": rec.get("wall_time_s"), "error": rec.get("error")}
    if rec["status"] != "ok":
        return SizeTrial(fits=False, status="oom", need_bytes=None, **common)
    need = int((rec.get("context_bytes") or 0) + rec["peak_bytes"] * (1 + margin))
    return SizeTrial(fits=need <= budget, status="ok" if need <= budget else "over_budget", need_bytes=need,
                     **common)


def format_trial(t: SizeTrial, budget: int) -> str:
    """One line of the search log."""
    mib = 2**20
    src = " (cached)" if t.cached else ""
    if t.status == "oom":
        return f"  batch {t.batch_size:>8}: out of memory{src} ({t.error})"
    context = (t.context_bytes or 0) / mib
    return (f"  batch {t.batch_size:>8}: peak {t.peak_bytes / mib:9.1f} MiB + context {context:7.1f}"
            f" MiB -> need {t.need_bytes / mib:9.1f} MiB {'<=' if t.fits else '>'} budget {budget / mib:.1f} MiB: "
            f"{'fits' if t.fits else 'does not fit'}{src}")
