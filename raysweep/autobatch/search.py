"""The batch-size search: the largest batch size on a grid that fits, found by a search that always terminates.

Grids (``batch_grid``):

- ``pow2``: the powers of two in ``[min_batch_size, max_batch_size]`` (1, 2, 4, ...);
- ``multiple_of_8``: the multiples of 8 in that range (8, 16, 24, ...).

Only grid values are ever tried, so with ``max_batch_size: 1000`` and ``pow2`` the largest candidate is 512.

The rule (``fits`` is assumed monotone: a batch that fits means every smaller one fits):

1. try the largest candidate; if it fits, it is the answer ("everything fits");
2. else try the smallest; if it does not fit, raise :class:`NothingFitsError` with the sizes tried;
3. else bisect the grid *indices* between the last size that fit (``lo``) and the first that did not (``hi``),
   trying ``(lo + hi) // 2``, until ``hi = lo + 1``; the answer is the size at ``lo``.

``hi - lo`` shrinks at every step, so the search makes at most ``2 + ceil(log2(n))`` calls for ``n`` candidates
and never tries a size twice. Example (pow2, 1..1024, fits up to 100): tries 1024, 1, 32, 128, 64 and answers 64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from raysweep.errors import NothingFitsError

GRIDS = ("pow2", "multiple_of_8")


class Grid:
    """The candidate batch sizes of ``grid`` in ``[lo, hi]``, indexable without being materialised."""

    def __init__(self, lo: int, hi: int, grid: str = "pow2"):
        if grid not in GRIDS:
            raise ValueError(f"batch_grid must be one of {GRIDS}, got {grid!r}")
        if lo < 1 or hi < 1:
            raise ValueError(f"batch sizes must be >= 1, got [{lo}, {hi}]")
        self.grid = grid
        if grid == "pow2":
            self._first = (lo - 1).bit_length()  # smallest k with 2**k >= lo
            self._last = hi.bit_length() - 1  # largest k with 2**k <= hi
        else:
            self._first, self._last = -(-lo // 8), hi // 8
        self._n = max(0, self._last - self._first + 1)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self._n:
            raise IndexError(i)
        k = self._first + i
        return 2**k if self.grid == "pow2" else 8 * k

    def values(self) -> list[int]:
        return [self[i] for i in range(self._n)]


def next_batch_size(lo: int, hi: int) -> int:
    """The grid index to try between ``lo`` (fits) and ``hi`` (does not fit), ``hi - lo >= 2``: the midpoint."""
    if hi - lo < 2:
        raise ValueError(f"nothing left between grid indices {lo} and {hi}")
    return (lo + hi) // 2


@dataclass
class SearchResult:
    """The answer and the exact sequence of sizes tried, with whether each fitted."""

    batch_size: int
    tried: list[int] = field(default_factory=list)
    fitted: list[bool] = field(default_factory=list)


def largest_fitting(
    fits: Callable[[int], bool],
    min_batch_size: int,
    max_batch_size: int,
    grid: str = "pow2",
    *,
    what: str = "batch size",
    evidence: dict | None = None,
) -> SearchResult:
    """The largest grid batch size in ``[min_batch_size, max_batch_size]`` for which ``fits`` is true.

    Raises :class:`NothingFitsError` when even the smallest candidate does not fit, or when the range holds no
    grid value; its evidence holds ``sizes_tried``, ``fitted`` and whatever ``evidence`` the caller adds (bytes,
    budget). ``fits`` is called at most ``2 + ceil(log2(n))`` times, never twice for one size.
    """
    candidates = Grid(min_batch_size, max_batch_size, grid)
    tried: list[int] = []
    fitted: list[bool] = []

    def attempt(i: int) -> bool:
        size = candidates[i]
        ok = bool(fits(size))
        tried.append(size)
        fitted.append(ok)
        return ok

    def nothing(why: str) -> NothingFitsError:
        ev = {"sizes_tried": list(tried), "fitted": list(fitted), "grid": grid,
              "min_batch_size": min_batch_size, "max_batch_size": max_batch_size, **(evidence or {})}
        return NothingFitsError(f"no {what} fits: {why}", ev)

    n = len(candidates)
    if n == 0:
        raise nothing(f"[{min_batch_size}, {max_batch_size}] holds no {grid} batch size")
    if attempt(n - 1):
        return SearchResult(candidates[n - 1], tried, fitted)
    if n == 1 or not attempt(0):
        raise nothing(f"even the smallest candidate, {candidates[0]}, does not fit (tried {tried})")
    lo, hi = 0, n - 1
    while hi - lo > 1:
        mid = next_batch_size(lo, hi)
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(candidates[lo], tried, fitted)


def largest_under_budget(
    need_bytes: Callable[[int], float],
    budget_bytes: float,
    min_batch_size: int,
    max_batch_size: int,
    grid: str = "pow2",
    *,
    what: str = "batch size",
    evidence: dict | None = None,
) -> SearchResult:
    """:func:`largest_fitting` with ``fits(b) = need_bytes(b) <= budget_bytes``; the evidence of a failure holds
    the bytes needed at every size tried and the budget."""
    needed: dict[int, int] = {}

    def fits(size: int) -> bool:
        needed[size] = int(need_bytes(size))
        return needed[size] <= budget_bytes

    try:
        return largest_fitting(fits, min_batch_size, max_batch_size, grid, what=what, evidence=evidence)
    except NothingFitsError as exc:
        exc.evidence.update(bytes_needed=needed, budget_bytes=int(budget_bytes))
        raise
