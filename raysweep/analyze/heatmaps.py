"""Heatmaps of the final loss: (log2 B, log2 eta), (log2 eta/B, log2 eta) and the gamma-eta phase plot.

Cells hold the seed-mean final metric (log10 colour, one scale per figure; the colour bar names the metric). A cell
where any seed diverged is drawn hatched grey, one where a seed died (and none diverged) hatched light, and both are
masked (NaN) in :class:`HeatmapGrid`: an unstable config never gets a finite colour. Cells where every trial failed
are dotted (missing data, no edge); cells where nothing ran stay blank. The eta* ridge, eta_max and eta_diverge_min
(the edge: diverged or dead) are drawn on top. For a linear-student sweep the (B, eta) heatmaps also draw the exact
mean-square SGD edge, the study's approximation of it and a vertical line at B_crit (:mod:`raysweep.analyze.linear`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize

from raysweep.analyze._figures import CMAP, figure, finish, fmt, match, panels_of, shown_title
from raysweep.analyze.linear import LinearSetting, theory_lines
from raysweep.analyze.load import ensure_prepared, group_columns, metric_label, metric_of
from raysweep.analyze.optimum import iter_groups

DIVERGED_STYLE = dict(facecolor="0.78", edgecolor="0.45", hatch="xxx", linewidth=0.0)
DEAD_STYLE = dict(facecolor="0.92", edgecolor="0.55", hatch="///", linewidth=0.0)
FAILED_STYLE = dict(facecolor="none", edgecolor="0.6", hatch="..", linewidth=0.0)
COLORBAR_MARGIN = 1.0  # inches right of the panels: the colour bar, its ticks and its label


@dataclass(frozen=True)
class HeatmapGrid:
    """Seed-mean final metric on an (x, y) grid of one group: ``xs``, ``ys`` (sorted values), ``loss`` (a masked
    array of shape (len(ys), len(xs)): masked, with NaN underneath, where any seed diverged or died, no seed is
    finite, or no trial ran), ``diverged`` (bool, same shape: a seed diverged), ``missing`` (no trial ran),
    ``dead`` (a seed died and none diverged) and ``failed`` (every trial of the cell failed)."""

    xs: np.ndarray
    ys: np.ndarray
    loss: np.ma.MaskedArray
    diverged: np.ndarray
    missing: np.ndarray
    dead: np.ndarray | None = None
    failed: np.ndarray | None = None


def heatmap_grid(trials: pd.DataFrame, x: str = "batch_size", y: str = "eta", *,
                 metric: str | None = None) -> HeatmapGrid:
    """The :class:`HeatmapGrid` of ``trials`` (one group's trials: they are averaged over everything but x and y)."""
    trials = ensure_prepared(trials, metric)
    t = trials.dropna(subset=[x, y])
    xs, xi = np.unique(t[x].to_numpy(float), return_inverse=True)
    ys, yi = np.unique(t[y].to_numpy(float), return_inverse=True)
    shape = (len(ys), len(xs))
    total, count = np.zeros(shape), np.zeros(shape)
    diverged, ran = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    dead, not_failed = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    loss = t["final_loss"].to_numpy(float)
    finite = np.isfinite(loss)
    np.add.at(total, (yi[finite], xi[finite]), loss[finite])
    np.add.at(count, (yi[finite], xi[finite]), 1.0)
    np.logical_or.at(diverged, (yi, xi), t["diverged"].to_numpy(bool))
    np.logical_or.at(dead, (yi, xi), t["dead"].to_numpy(bool))
    np.logical_or.at(not_failed, (yi, xi), ~t["failed"].to_numpy(bool))
    ran[yi, xi] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    mask = diverged | dead | (count == 0)
    return HeatmapGrid(xs, ys, np.ma.masked_array(np.where(mask, np.nan, mean), mask=mask), diverged, ~ran,
                       dead & ~diverged, ran & ~not_failed)


def grid_fill(trials: pd.DataFrame, x: str = "batch_size", y: str = "eta") -> float:
    """The fraction of the (x, y) grid that ran, averaged over groups: 1 for a full grid sweep, small for a guided
    search whose etas differ from trial to trial (its heatmap would be mostly blank). NaN without trials."""
    t = trials.dropna(subset=[x, y])
    if t.empty:
        return float("nan")
    fills = [sub.groupby([x, y]).ngroups / (sub[x].nunique() * sub[y].nunique())
             for _, sub in iter_groups(t, group_columns(t, exclude=(x, y)))]
    return float(np.mean(fills))


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres (midpoints; the end cells as wide as their neighbour, 1 when alone)."""
    c = np.asarray(centres, float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _shared_norm(grids):
    """One colour scale (log10 loss) for every panel of a figure, so that panels compare at a glance."""
    values = np.concatenate([np.ma.log10(g.loss).compressed() for g in grids] + [np.empty(0)])
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    lo, hi = float(values.min()), float(values.max())
    return Normalize(lo, hi if hi > lo else lo + 1e-9)


def colorbar_label(metric: str) -> str:
    """The colour bar's label: log10 of the seed-mean final value of ``metric``."""
    return f"log10 final {metric_label(metric)} (seed mean)"


def _colorbar(fig, axes, mesh, metric: str):
    if mesh is not None:
        bar = fig.colorbar(mesh, ax=axes, shrink=0.8, fraction=0.03, pad=0.02)
        bar.set_label(colorbar_label(metric), fontsize=8)


def _draw_grid(ax, grid: HeatmapGrid, X, Y, norm):
    """Colour the finite cells (log10 metric), hatch the diverged and the dead ones, dot the failed ones; cells
    where nothing ran stay blank. Returns the colour mesh (None when no cell is finite)."""
    values = np.ma.log10(grid.loss)
    mesh = ax.pcolormesh(X, Y, values, cmap=CMAP, norm=norm, shading="flat") if values.count() else None
    for cells, style in ((grid.diverged, DIVERGED_STYLE), (grid.dead, DEAD_STYLE), (grid.failed, FAILED_STYLE)):
        cells = np.argwhere(cells) if cells is not None else ()
        if len(cells):
            verts = [[(X[i, j], Y[i, j]), (X[i, j + 1], Y[i, j + 1]), (X[i + 1, j + 1], Y[i + 1, j + 1]),
                      (X[i + 1, j], Y[i + 1, j])] for i, j in cells]
            ax.add_collection(PolyCollection(verts, **style))
    ax.set_xlim(np.nanmin(X), np.nanmax(X))
    ax.set_ylim(np.nanmin(Y), np.nanmax(Y))
    return mesh


def _lines(ax, eta_star: pd.DataFrame, edge: pd.DataFrame, x: str, shear: bool, legend: bool = True):
    """eta* ridge, eta_max and eta_diverge_min edges; ``shear`` plots against log2(eta / x) instead of log2 x."""
    def pts(frame, col):
        frame = frame.dropna(subset=[col]).sort_values(x)
        ly, lx = np.log2(frame[col].to_numpy(float)), np.log2(frame[x].to_numpy(float))
        return (ly - lx if shear else lx), ly

    if len(eta_star):
        ax.plot(*pts(eta_star, "eta_star"), "o-", color="white", mec="black", ms=4, lw=1.2, label="eta*")
    if len(edge):
        ax.plot(*pts(edge, "eta_max"), "v--", color="orange", ms=4, lw=1, label="eta_max")
        ax.plot(*pts(edge, "eta_diverge_min"), "x:", color="red", ms=5, lw=1,
                label="eta_diverge_min (diverged or dead)")
    if legend:
        ax.legend(fontsize=6, loc="lower right", framealpha=0.6)


def _theory(ax, setting: LinearSetting, xs: np.ndarray, shear: bool, legend: bool) -> None:
    """The exact SGD edge, the study's approximation and B_crit of a linear student, over the panel's B range."""
    lines = theory_lines(setting, float(xs.min()), float(xs.max()))
    lx = np.log2(lines["batch_size"].to_numpy(float))
    for column, style, label in (("eta_edge", "-", "exact SGD edge"), ("eta_edge_approx", "--", "approximation")):
        ly = np.log2(lines[column].to_numpy(float))
        ax.plot(ly - lx if shear else lx, ly, style, color="cyan", lw=1.2, label=label)
    if not shear and xs.min() <= setting.b_crit <= xs.max():
        ax.axvline(np.log2(setting.b_crit), color="cyan", ls=":", lw=1, label=f"B_crit = {setting.b_crit:.3g}")
    if legend:  # upper left: above the edge, where the cells are diverged
        ax.legend(fontsize=5, loc="upper left", framealpha=0.7)


def plot_heatmap(trials, eta_star, edge, *, x="batch_size", temperature=False, max_panels=9,
                 theory: LinearSetting | None = None):
    """Final loss over (log2 x, log2 eta), or over (log2 eta/x, log2 eta) with ``temperature``; the eta* ridge and
    the stability edges on top, and with ``theory`` (a linear student, x the batch size) the exact SGD edge, the
    study's approximation and B_crit."""
    t = trials.dropna(subset=[x, "eta"])
    if t.empty:
        return None
    panels, total = panels_of(t, (x, "eta"), max_panels)
    xlabel = f"log2 temperature (eta / {x})" if temperature else f"log2 {x}"
    metric = metric_of(t)
    fig, axes = figure(len(panels), title=shown_title(f"final {metric_label(metric)}", len(panels), total),
                       right=COLORBAR_MARGIN)
    grids = [heatmap_grid(sub, x=x, y="eta") for _, _, sub in panels]
    norm, mesh = _shared_norm(grids), None
    for n, (ax, grid, (title, labels, sub)) in enumerate(zip(axes, grids, panels)):
        xe, ye = _edges(np.log2(grid.xs)), _edges(np.log2(grid.ys))
        Y, Xb = np.meshgrid(ye, xe, indexing="ij")
        X = Y - Xb if temperature else Xb
        mesh = _draw_grid(ax, grid, X, Y, norm) or mesh
        _lines(ax, match(eta_star, labels), match(edge, labels), x, temperature, legend=n == 0 and theory is None)
        if theory is not None and x == "batch_size" and (sub.get("optimizer", pd.Series(["SGD"])) == "SGD").all():
            _theory(ax, theory, grid.xs, temperature, legend=n == 0)
            ax.set_ylim(ye.min(), ye.max())
        ax.set(xlabel=xlabel, ylabel="log2 eta")
        finish(ax, title, legend=False)
    _colorbar(fig, axes, mesh, metric)
    return fig


def plot_gamma_phase(trials, gamma_table, *, max_panels=9):
    """Final loss over (log2 gamma, log2 eta), diverged masked, eta* ridge and edges, and reference lines of slope
    2 (lazy, gamma <= 1) and 2/L (rich, gamma >= 1) through eta* at the gamma closest to 1."""
    t = trials.dropna(subset=["gamma", "eta"])
    t = t[t["gamma"] > 0]
    if t["gamma"].nunique() < 2:
        return None
    panels, total = panels_of(t, ("gamma", "eta"), max_panels)
    fig, axes = figure(len(panels), title=shown_title("gamma-eta phase plot", len(panels), total),
                       right=COLORBAR_MARGIN)
    grids = [heatmap_grid(sub, x="gamma", y="eta") for _, _, sub in panels]
    norm, mesh = _shared_norm(grids), None
    for n, (ax, grid, (title, labels, sub)) in enumerate(zip(axes, grids, panels)):
        xe, ye = _edges(np.log2(grid.xs)), _edges(np.log2(grid.ys))
        Y, X = np.meshgrid(ye, xe, indexing="ij")
        mesh = _draw_grid(ax, grid, X, Y, norm) or mesh
        table = match(gamma_table, labels)
        _lines(ax, table, table, "gamma", False, legend=False)
        star = table.dropna(subset=["log2_eta_star"])
        depth = labels.get("depth", sub["depth"].iloc[0] if sub["depth"].nunique() == 1 else np.nan)
        lg, le = np.log2(star["gamma"].to_numpy(float)), star["log2_eta_star"].to_numpy(float)
        lo, hi = np.log2(grid.xs[0]), np.log2(grid.xs[-1])
        # Each reference line goes through the eta* of its own regime closest to gamma = 1.
        if (lg <= 0).any():
            i = np.flatnonzero(lg <= 0)[np.argmax(lg[lg <= 0])]
            ax.plot([lo, lg[i]], [le[i] + 2 * (lo - lg[i]), le[i]], "--", color="cyan", lw=1, label="slope 2")
        if (lg >= 0).any() and np.isfinite(depth) and depth > 0:
            i = np.flatnonzero(lg >= 0)[np.argmin(lg[lg >= 0])]
            ax.plot([lg[i], hi], [le[i], le[i] + 2 / depth * (hi - lg[i])], "--", color="magenta", lw=1,
                    label=f"slope 2/L (L={fmt(float(depth))})")
        ax.set_ylim(np.min(ye), np.max(ye))
        if n == 0:
            ax.legend(fontsize=6, loc="lower right", framealpha=0.6)
        ax.set(xlabel="log2 gamma", ylabel="log2 eta")
        finish(ax, title, legend=False)
    _colorbar(fig, axes, mesh, metric_of(t))
    return fig
