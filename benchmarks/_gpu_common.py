"""What ``gpu_check.py`` and its check modules share: the sizes per device and mode, the time budget, the result
of a check and the cell format of its tables. Standard library only (the probe's children import the main script).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checks in the order they run, and the title of each one's table.
TITLES = {
    "probe": "1. Autobatch probe: predicted vs measured peak memory",
    "cap": "2. Per-trial memory cap: one trial runs out of its share, its neighbour finishes",
    "trainer": "3. Fused trainer: member-steps/s",
    "grid": "4. The 200-configuration grid: trainer vs plain loop, and eta*(B)",
    "paths": "5. The newer paths on the device: general optimizer path, resume, curvature, model factories, "
             "find_batch_size",
    "compile": "3b. The trainer's step under torch.compile / CUDA graphs",
}
# The common task: the online polynomial teacher of fusion.py and sweep.py (D = 32, blocks of P = 4,096).
EXPERIMENT = {"family": "poly_online", "dim": 32, "n_train": 4096, "degree": 2, "dtype": "float32", "data_seed": 0}


@dataclass(frozen=True)
class Settings:
    """The sizes of every check for one device kind (``cuda`` or ``cpu``) and mode (full or ``quick``)."""

    kind: str
    quick: bool
    # 1. probe: the space whose shapes are probed (n_members: the bundle size, from as many etas)
    probe_widths: tuple[int, ...] = (256, 1024, 4096)
    probe_depths: tuple[int, ...] = (2, 3)
    probe_batch_sizes: tuple[int, ...] = (64, 512, 4096)
    probe_members: int = 8
    extra_points: int = 3  # per optimizer and mode, never probed
    # 2. cap: width, depth, batch, members of the trial sized honestly; the other trains big_batch_size
    cap_shape: tuple[int, int, int, int] = (1024, 3, 256, 8)
    cap_big_batch_size: int = 65536
    cap_steps: int = 3000
    # 3. trainer
    widths: tuple[int, ...] = (64, 256, 1024)
    members: tuple[int, ...] = (1, 16, 64, 256)
    optimizers: tuple[str, ...] = ("SGD", "Adam")
    window_s: float = 0.5  # timed seconds per measurement (after a warm-up report interval)
    max_measure_s: float = 30.0  # a measurement estimated to take longer is skipped
    # 4. grid: None = benchmarks/sweep.py's grid as it is
    grid_batch_sizes: tuple[int, ...] | None = None
    grid_etas: tuple[float, ...] | None = None
    grid_steps: int | None = None
    # 5. compile: (width, members, optimizer) shapes, and torch.compile modes
    compile_shapes: tuple[tuple[int, int, str], ...] = ((256, 64, "SGD"), (256, 64, "Adam"))
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead")
    # 5. paths: the MLP bundle (width, members, batch, steps), the CNN (width, steps), find_batch_size's budget
    paths_width: int = 512
    paths_members: int = 16
    paths_batch: int = 256
    paths_steps: int = 200
    paths_cnn_width: int = 32
    paths_cnn_steps: int = 100
    paths_fbs_budget_mib: int = 4096
    budget_s: float | None = 450.0

    def to_dict(self) -> dict:
        return asdict(self)


def settings(kind: str, quick: bool, budget_s: float | None = None) -> Settings:
    """The sizes for ``kind`` and ``quick``; ``budget_s`` overrides the default time budget."""
    if kind == "cuda":
        s = Settings(kind, quick)
    elif not quick:
        s = Settings(kind, quick, probe_widths=(64, 256, 1024), probe_batch_sizes=(32, 256, 2048), probe_members=4,
                     cap_shape=(256, 3, 64, 4), cap_big_batch_size=2**18, cap_steps=3000, window_s=1.0,
                     max_measure_s=60.0, compile_shapes=((64, 16, "SGD"), (64, 16, "Adam")),
                     compile_modes=("default",), paths_width=128, paths_members=8, paths_batch=64,
                     paths_steps=80, paths_cnn_width=16, paths_cnn_steps=40, paths_fbs_budget_mib=1024,
                     budget_s=None)
    else:
        s = Settings(kind, quick, probe_widths=(32, 128), probe_depths=(2,), probe_batch_sizes=(16, 128),
                     probe_members=2, extra_points=1, cap_shape=(128, 2, 32, 2), cap_big_batch_size=2**18,
                     cap_steps=6000, widths=(64, 256), members=(1, 4, 16), window_s=0.1, max_measure_s=10.0,
                     grid_batch_sizes=(1, 4, 16, 64), grid_etas=tuple(2.0**e for e in range(-6, 7)), grid_steps=200,
                     compile_shapes=((64, 16, "SGD"),), compile_modes=("default",), paths_width=32, paths_members=4,
                     paths_batch=16, paths_steps=24, paths_cnn_width=8, paths_cnn_steps=12,
                     paths_fbs_budget_mib=512, budget_s=None)
    if quick and kind == "cuda":  # a smoke test on a GPU: CPU-quick sizes, CUDA device
        s = Settings(**{**settings("cpu", True).to_dict(), "kind": "cuda", "quick": True, "budget_s": 450.0,
                        "compile_modes": ("default", "reduce-overhead"),
                        "cap_big_batch_size": 2**21})  # a GPU share is at least 1% of the device: gigabytes
    if budget_s is not None:
        s = Settings(**{**s.to_dict(), "budget_s": budget_s})
    return s


class Deadline:
    """Seconds left of the run's budget (``None``: no budget)."""

    def __init__(self, budget_s: float | None):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if self.budget_s is None else self.budget_s - self.elapsed()


# ----------------------------------------------------------------------------------------------- the output


@dataclass
class CheckResult:
    """One check: a title, summary lines, a table (columns, rows) and its raw numbers."""

    name: str
    title: str
    status: str = "ok"  # ok | skipped | error
    headline: str = ""  # the check's result in one line, for the summary table
    summary: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float = 0.0


def json_safe(x):
    """JSON has no NaN or Inf (they become null) and no numpy scalars (they become Python numbers)."""
    if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def fmt(x, digits: int = 3) -> str:
    """A table cell: numbers with ``digits`` significant digits (thousands separated), None as a dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x).replace("|", "\\|")
    if isinstance(x, int) or (abs(x) >= 10 ** (digits - 1) and float(x).is_integer()):
        return f"{int(round(x)):,}"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"
