"""Shared figure plumbing: one Figure per plot on the Agg canvas (no pyplot, no global backend state), panels
per group, PNG bytes without metadata.

Drawing cost matters (a report draws dozens of panels): figures use fixed margins rather than a layout engine, titles
sit at a fixed position, and log axes carry no minor ticks.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

from raysweep.analyze.load import group_columns, varying_columns
from raysweep.analyze.optimum import iter_groups

CMAP = "viridis"


def png_bytes(fig: Figure, dpi: int = 72) -> bytes:
    """PNG of ``fig`` without metadata (matplotlib writes its URL into the 'Software' field by default)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def panels_of(trials: pd.DataFrame, exclude, max_panels: int):
    """``([(title, labels, sub-frame)], n_groups)``: the first ``max_panels`` groups of ``trials`` over the
    configuration columns not in ``exclude``; titles name the columns that vary, ``labels`` all of them."""
    by = group_columns(trials, exclude=exclude)
    varying = varying_columns(trials, by)
    out = []
    for keys, sub in iter_groups(trials, by):
        labels = dict(zip(by, keys))
        out.append((", ".join(f"{k}={fmt(labels[k])}" for k in varying), labels, sub))
    return out[:max_panels], len(out)


def fmt(v) -> str:
    """A label value: integral floats without ".0", other floats to 4 significant digits."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def match(table: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """Rows of ``table`` whose columns equal ``labels`` (NaN matches NaN; labels absent from the table ignored)."""
    keep = np.ones(len(table), dtype=bool)
    for k, v in labels.items():
        if k not in table.columns:
            continue
        col = table[k]
        keep &= (col.isna().to_numpy() if pd.isna(v) else (col == v).to_numpy())
    return table[keep]


def figure(n: int, ncols: int = 3, size=(3.8, 3.0), title: str = "", right: float = 0.4):
    """A figure of ``n`` panels, ``ncols`` a row, each ``size`` inches, with a right margin of ``right`` inches
    (room for a colour bar and its label): ``(fig, [axes])``."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    # Fixed margins instead of a layout engine: constrained layout measures every tick label and costs more
    # than drawing the figure.
    width, height = size[0] * ncols + right - 0.4, size[1] * nrows + 0.4
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.7 / width, right=1 - right / width, bottom=0.5 / height, top=1 - 0.55 / height,
                        wspace=0.45, hspace=0.5 * 3.0 / size[1])
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, axes


def finish(ax, title: str, legend: bool = True):
    """Title and legend of a panel. Drawing cost matters (a report draws dozens of panels): a fixed title position
    skips matplotlib's tick-label collision search, and log axes get no minor ticks."""
    ax.set_title(title, fontsize=8, y=1.0, pad=3)
    for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log":
            # Labelled ticks at 1, 2, 5 x 10^k when the range is short (so that it still has labels), at the
            # decades when it is long (so that the labels do not collide).
            lo, hi = sorted(limits)
            short = lo > 0 and np.log10(hi / lo) < 2.5
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if short else (1.0,), numticks=7))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(NullLocator())
            axis.set_minor_formatter(NullFormatter())
        else:
            axis.set_major_locator(MaxNLocator(nbins=5))  # every tick is a Line2D and a Text: few of them
    if legend and ax.lines:
        ax.legend(fontsize=5, ncols=2 if len(ax.lines) > 6 else 1)


def shown_title(what: str, n: int, total: int) -> str:
    """Figure title that says when only some of the groups are drawn."""
    return what if n == total else f"{what} (first {n} of {total} groups)"


def palette(n: int):
    """``n`` colours along the colormap (ordered: small to large batch, eta, width...)."""
    return colormaps[CMAP](np.linspace(0.0, 0.9, max(n, 1)))


def thin(values, k: int = 10):
    """At most ``k`` of ``values``, evenly spaced, first and last kept (legible legends)."""
    values = list(values)
    if len(values) <= k:
        return values
    return [values[i] for i in np.unique(np.round(np.linspace(0, len(values) - 1, k)).astype(int))]
