"""The rows of a science check (``python -m raysweep.analyze --check STUDY``, :mod:`raysweep.analyze.checks`): one
measured quantity each, with its expected value, tolerance and verdict, and the table they print as. Each study's
check lives beside its analysis (``check_transfer`` in :mod:`raysweep.analyze.transfer`, ...) and builds its rows
with :func:`row`, :func:`fit_row` and :func:`info_row`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PASS, FAIL, SKIPPED, INFO = "pass", "FAIL", "skipped", "info"

__all__ = ["FAIL", "INFO", "PASS", "SKIPPED", "CheckResult", "Row", "fit_quality", "fit_row", "fmt", "info_row",
           "row"]


@dataclass(frozen=True)
class Row:
    """One measured quantity: ``status`` is ``pass``, ``FAIL``, ``skipped`` or ``info``; ``value`` the raw number."""

    quantity: str
    measured: str
    expected: str
    tolerance: str
    status: str
    value: float = math.nan
    note: str = ""

    @property
    def verdict(self) -> str:
        """What the ``pass`` column shows: the status, then the note (``skipped: <why>``)."""
        return f"{self.status}: {self.note}" if self.note else self.status


@dataclass
class CheckResult:
    """The rows of one study's check on one sweep."""

    study: str
    sweep: str
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No row failed, and at least one passed."""
        return all(r.status != FAIL for r in self.rows) and any(r.status == PASS for r in self.rows)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == FAIL]

    def table(self) -> str:
        """The rows as an aligned text table with a verdict line."""
        head = ("quantity", "measured", "expected", "tolerance", "pass")
        cells = [head] + [(r.quantity, r.measured, r.expected, r.tolerance, r.verdict) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        lines = [" | ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        n_fail = len(self.failed)
        verdict = "PASS" if self.passed else f"FAIL ({n_fail} of {len(self.rows)} rows missed)" if n_fail else \
            "FAIL (nothing was checked)"
        return f"check {self.study} on sweep {self.sweep}: {verdict}\n" + "\n".join(lines)


def fmt(v: float, digits: int = 3) -> str:
    """A measured number with ``digits`` decimals (``nan`` for a missing one; never ``-0.000``)."""
    if v is None or not np.isfinite(v):
        return "nan"
    text = f"{v:.{digits}f}"
    return "0." + "0" * digits if float(text) == 0 else text  # no "-0.000"


def row(quantity, value, expected, tolerance, ok, *, measured=None) -> Row:
    """A checked row: it passes when ``value`` is finite and ``ok``."""
    finite = value is not None and np.isfinite(value)
    status = PASS if finite and ok else FAIL
    return Row(quantity, measured if measured is not None else fmt(value), expected, tolerance, status,
               float(value) if finite else math.nan)


def fit_quality(fit, rmse_column: str = "rmse_octaves", n_column: str = "n_points", unit: str = "oct") -> str:
    """The fit quality shown beside a fitted value: ``(n=5, rmse 0.12 oct)``."""
    rmse = float(fit[rmse_column]) if rmse_column in fit and fit[rmse_column] is not None else math.nan
    return f"(n={int(fit[n_column])}, rmse {fmt(rmse, 3)} {unit})".replace(" )", ")")


def fit_row(quantity, value, expected, tolerance, ok, fit, *, measured=None, **quality) -> Row:
    """A row measured on a fit (a row of a table with ``fit_ok`` and ``fit_note``): its quality is printed after the
    value, and a flagged fit fails the row whatever the value, with the fit's reason as the note."""
    text = f"{measured if measured is not None else fmt(value)} {fit_quality(fit, **quality)}"
    if not bool(fit["fit_ok"]):
        return Row(quantity, text, expected, tolerance, FAIL,
                   float(value) if value is not None and np.isfinite(value) else math.nan,
                   note=f"flagged fit: {fit['fit_note']}")
    return row(quantity, value, expected, tolerance, ok, measured=text)


def info_row(quantity, value, expected="-", note="info", *, measured=None) -> Row:
    """A row shown for information: it never fails a check."""
    return Row(quantity, measured if measured is not None else fmt(value), expected, note, INFO,
               float(value) if value is not None and np.isfinite(value) else math.nan)
