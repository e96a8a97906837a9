"""The autobatch knobs: :class:`AutobatchConfig` (a future ``autobatch:`` section of a search space).

Train and eval ("val") modes have their own values, as Linnaeus's ``*_VAL`` keys did: a ``*_val`` field that is
left ``None`` takes the train value. Eval runs under ``torch.no_grad`` (no activations kept for backward).

Example (YAML)::

    autobatch:
      target_memory_fraction: 0.8   # 0 < f <= 1: the share of the device's free memory all trials may use together
      min_batch_size: 1             # the search range of ``batch_size: auto`` (on the grid, see batch_grid)
      max_batch_size: 1048576
      steps_per_trial: 3            # real steps per probe point, >= 2 so that optimizer state exists
      min_batch_size_val: null      # eval mode: defaults to the train values
      max_batch_size_val: null
      steps_per_trial_val: 2        # >= 1: eval has no optimizer state
      target_memory_fraction_val: null
      infeasible: refuse            # refuse: list configs that cannot fit even alone and start nothing
                                    # fail: run the rest; those land as failed rows with the reason
      batch_grid: pow2              # pow2: 1, 2, 4, ...; multiple_of_8: 8, 16, 24, ...
      modes: [train, val]           # which modes the probe measures
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from raysweep import limits
from raysweep.autobatch.search import GRIDS, Grid
from raysweep.errors import SpecError, shown

MODES = ("train", "val")
INFEASIBLE = ("refuse", "fail")
MAX_PROBE_STEPS = 1_000  # real steps per probe point: a few are enough to reach the peak


@dataclass(frozen=True)
class ModeSettings:
    """The values that apply to one mode (``train`` or ``val``)."""

    mode: str
    target_memory_fraction: float
    min_batch_size: int
    max_batch_size: int
    steps_per_trial: int


@dataclass(frozen=True)
class AutobatchConfig:
    """Validated autobatch knobs; every error names its field (``autobatch.min_batch_size: ...``)."""

    target_memory_fraction: float = 0.8
    min_batch_size: int = 1
    max_batch_size: int = 2**20
    steps_per_trial: int = 3
    min_batch_size_val: int | None = None
    max_batch_size_val: int | None = None
    steps_per_trial_val: int = 2
    target_memory_fraction_val: float | None = None
    infeasible: str = "refuse"
    batch_grid: str = "pow2"
    modes: tuple[str, ...] = field(default=MODES)

    def __post_init__(self):
        for name in ("target_memory_fraction", "target_memory_fraction_val"):
            value = getattr(self, name)
            if value is None and name.endswith("_val"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise SpecError(f"autobatch.{name}: must be a number in (0, 1], got {shown(value)}")
            object.__setattr__(self, name, float(value))
        for name, least, most in (("min_batch_size", 1, limits.MAX_DIM), ("max_batch_size", 1, limits.MAX_DIM),
                                  ("steps_per_trial", 2, MAX_PROBE_STEPS), ("min_batch_size_val", 1, limits.MAX_DIM),
                                  ("max_batch_size_val", 1, limits.MAX_DIM), ("steps_per_trial_val", 1, MAX_PROBE_STEPS)):
            value = getattr(self, name)
            if value is None and name.endswith("_val"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
                why = " (two steps so that optimizer state exists)" if name == "steps_per_trial" else ""
                raise SpecError(f"autobatch.{name}: must be an integer from {least} to {limits.text(most)}{why}, "
                                f"got {shown(value)}")
        if self.infeasible not in INFEASIBLE:
            raise SpecError(f"autobatch.infeasible: must be one of {', '.join(INFEASIBLE)}, got {shown(self.infeasible)}")
        if self.batch_grid not in GRIDS:
            raise SpecError(f"autobatch.batch_grid: must be one of {', '.join(GRIDS)}, got {shown(self.batch_grid)}")
        modes = (self.modes,) if isinstance(self.modes, str) else self.modes
        if not isinstance(modes, (list, tuple)) or not modes or any(m not in MODES for m in modes) \
                or len(set(modes)) != len(modes):
            raise SpecError(f"autobatch.modes: must be distinct values of {', '.join(MODES)}, got {shown(modes)}")
        modes = tuple(modes)
        object.__setattr__(self, "modes", modes)
        for mode in MODES:
            s = self.for_mode(mode)
            suffix = "_val" if mode == "val" else ""
            if s.min_batch_size > s.max_batch_size:
                raise SpecError(f"autobatch.min_batch_size{suffix}: must be <= max_batch_size{suffix} "
                                f"({s.max_batch_size}), got {s.min_batch_size}")
            if not len(Grid(s.min_batch_size, s.max_batch_size, self.batch_grid)):
                raise SpecError(f"autobatch.max_batch_size{suffix}: [{s.min_batch_size}, {s.max_batch_size}] holds "
                                f"no {self.batch_grid} batch size; widen the range or change batch_grid")

    def for_mode(self, mode: str) -> ModeSettings:
        """The values of ``mode``; eval values left ``None`` take the train values."""
        if mode == "train":
            return ModeSettings("train", self.target_memory_fraction, self.min_batch_size, self.max_batch_size,
                                self.steps_per_trial)
        if mode == "val":
            pick = lambda v, default: default if v is None else v  # noqa: E731
            return ModeSettings(
                "val", pick(self.target_memory_fraction_val, self.target_memory_fraction),
                pick(self.min_batch_size_val, self.min_batch_size), pick(self.max_batch_size_val, self.max_batch_size),
                self.steps_per_trial_val,
            )
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def with_fraction(self, fraction: float) -> AutobatchConfig:
        """The same knobs at another target memory fraction (both modes): what the CLI's ``--fractions`` does."""
        return replace(self, target_memory_fraction=fraction, target_memory_fraction_val=None)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, *, source: str = "<string>") -> AutobatchConfig:
        """Read the ``autobatch:`` mapping of a spec; unknown keys and bad values are a SpecError naming the field."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise SpecError(f"autobatch: must be a mapping, got {shown(mapping)} ({source})")
        known = [fl.name for fl in fields(cls)]
        for key in mapping:
            if key not in known:
                name = key if isinstance(key, str) and len(key) <= 40 else shown(key, 40)
                raise SpecError(f"autobatch.{name}: unknown key; known keys are {', '.join(known)} ({source})")
        try:
            return cls(**dict(mapping))
        except SpecError as exc:
            raise SpecError(f"{exc} ({source})") from None

    def to_dict(self) -> dict:
        return {fl.name: list(v) if isinstance(v := getattr(self, fl.name), tuple) else v for fl in fields(self)}
