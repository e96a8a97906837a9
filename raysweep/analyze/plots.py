"""Line plots of a sweep: loss vs eta per trial, eta*(B) with its power law, loss vs temperature, loss curves, S(B),
transfer, width.

Every plot function takes tables and returns a :class:`matplotlib.figure.Figure`, or ``None`` when the data lacks
the axes the plot needs (one batch size for a loss-vs-temperature plot, one width for a transfer plot...). One panel
per group (configuration columns other than the plot's axes), at most ``max_panels`` of them; panel titles name only
the columns that vary. Diverged and dead configs are left out of lines (gaps), never drawn as a finite loss. The
heatmaps live in :mod:`raysweep.analyze.heatmaps` and are re-exported here, so that ``plots`` names every figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysweep.analyze._figures import (
    figure,
    finish,
    fmt,
    match,
    palette,
    panels_of,
    png_bytes,
    shown_title,
    thin,
)
from raysweep.analyze.curves import smooth_curves
from raysweep.analyze.heatmaps import HeatmapGrid, heatmap_grid, plot_gamma_phase, plot_heatmap
from raysweep.analyze.load import group_columns, metric_label, metric_of, varying_columns
from raysweep.analyze.optimum import iter_groups

__all__ = [
    "HeatmapGrid",
    "heatmap_grid",
    "plot_curves",
    "plot_eta_star",
    "plot_gamma_phase",
    "plot_heatmap",
    "plot_loss_vs_eta",
    "plot_loss_vs_temperature",
    "plot_sharpness",
    "plot_steps_to_target",
    "plot_transfer",
    "plot_width",
    "png_bytes",
]


def plot_eta_star(eta_star, power_law, *, x="batch_size", max_panels=9):
    """eta*(x) with its bootstrap interval and the fitted broken power law, one line per group."""
    t = eta_star.dropna(subset=["eta_star"])
    if t[x].nunique() < 2:
        return None
    fig, (ax,) = figure(1, size=(5.5, 4.0), title=f"eta* vs {x}")
    by = group_columns(t, exclude=(x, "eta"))
    shown = varying_columns(t, by)
    sat = f"{x}_saturation"
    for n, (keys, sub) in enumerate(iter_groups(t, by)):
        if n >= max_panels:
            break
        labels = dict(zip(by, keys))
        lx = np.log2(sub[x].to_numpy(float))
        star = sub["log2_eta_star"].to_numpy(float)
        # A percentile interval need not contain the point estimate; matplotlib refuses negative error bars. No
        # interval (too few seeds): no bar.
        low = np.nan_to_num(np.maximum(star - np.log2(sub["eta_star_low"].to_numpy(float)), 0))
        high = np.nan_to_num(np.maximum(np.log2(sub["eta_star_high"].to_numpy(float)) - star, 0))
        line = ax.errorbar(lx, star, yerr=[low, high], fmt="o", ms=3, capsize=2,
                           label=", ".join(f"{k}={fmt(labels[k])}" for k in shown) or "eta*")
        fit = match(power_law, labels).dropna(subset=["slope"]) if "slope" in power_law else power_law.iloc[:0]
        if len(fit):
            f = fit.iloc[0]
            grid = np.linspace(lx.min(), lx.max(), 50)
            ax.plot(grid, np.log2(f["c"]) + f["slope"] * np.minimum(grid, np.log2(f[sat])), "-", lw=1,
                    color=line[0].get_color())
    ax.set(xlabel=f"log2 {x}", ylabel="log2 eta*")
    finish(ax, "")
    return fig


def plot_loss_vs_eta(trials, eta_star=None, *, x="batch_size", max_panels=9):
    """Final metric of every trial against log2 eta, one panel per group and one colour per ``x`` (a guided
    search's cells): completed trials as dots with their seed-mean line, pruned trials (stopped by a scheduler,
    at their last report) as hollow triangles, dead trials as grey squares, diverged ones as red crosses along the
    top, and each eta* as a star. Failed trials are left out (no data)."""
    t = trials.dropna(subset=[x, "eta"])
    t = t[~t["failed"]]
    if t.empty:
        return None
    metric = metric_of(trials)
    panels, total = panels_of(t, (x, "eta"), max_panels)
    fig, axes = figure(len(panels), title=shown_title(f"final {metric_label(metric)} vs eta, every trial",
                                                     len(panels), total))
    finite = t["metric_value"].to_numpy(float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    top = float(finite.max()) * 1.5 if finite.size else 1.0
    for n, (ax, (title, labels, sub)) in enumerate(zip(axes, panels)):
        xs = np.sort(sub[x].unique())
        for color, xv in zip(palette(len(xs)), xs):
            cell = sub[sub[x] == xv]
            le = np.log2(cell["eta"].to_numpy(float))
            value = cell["metric_value"].to_numpy(float)
            kinds = {
                "completed": cell["usable"].to_numpy(bool),
                "pruned": (cell["status"] == "pruned").to_numpy() & ~cell["unstable"].to_numpy(bool),
                "dead": cell["dead"].to_numpy(bool) & ~cell["diverged"].to_numpy(bool),
            }
            mean = cell[kinds["completed"]].groupby("eta")["final_loss"].mean()
            ax.plot(np.log2(mean.index.to_numpy(float)), mean.to_numpy(float), "-", lw=0.8, color=color,
                    label=f"{x}={fmt(xv)}")
            ax.plot(le[kinds["completed"]], value[kinds["completed"]], "o", ms=3, color=color)
            ax.plot(le[kinds["pruned"]], value[kinds["pruned"]], "^", ms=4, mfc="none", color=color)
            ax.plot(le[kinds["dead"]], value[kinds["dead"]], "s", ms=3, color="0.5")
            div = cell["diverged"].to_numpy(bool)
            ax.plot(le[div], np.full(div.sum(), top), "x", ms=4, color="red")
            star = match(eta_star, labels | {x: xv}) if eta_star is not None and len(eta_star) else None
            if star is not None and len(star) and np.isfinite(star["loss_star"].iloc[0]):
                ax.plot([star["log2_eta_star"].iloc[0]], [star["loss_star"].iloc[0]], "*", ms=9, color=color,
                        mec="black")
        if n == 0:  # what the markers mean, once
            for marker, style, label in (("o", dict(color="0.3"), "completed"),
                                         ("^", dict(color="0.3", mfc="none"), "pruned"),
                                         ("s", dict(color="0.5"), "dead"), ("x", dict(color="red"), "diverged"),
                                         ("*", dict(color="0.3", mec="black", ms=9), "eta*")):
                ax.plot([], [], marker, ls="none", label=label, **({"ms": 4} | style))
        ax.set(xlabel="log2 eta", ylabel=f"final {metric_label(metric)}", yscale="log")
        finish(ax, title, legend=n == 0)
    return fig


def plot_loss_vs_temperature(temp_table, collapse, *, max_panels=9):
    """Seed-mean final loss against log2 T, one line per batch size (masked configs are gaps). Needs two batch
    sizes (with one, it is the loss against eta: see :func:`plot_loss_vs_eta`)."""
    t = temp_table.dropna(subset=["log2_temperature"])
    if t["temperature"].nunique() < 2 or t["batch_size"].nunique() < 2:
        return None
    panels, total = panels_of(t, ("batch_size", "eta"), max_panels)
    fig, axes = figure(len(panels), title=shown_title("final loss vs temperature", len(panels), total))
    for ax, (title, labels, sub) in zip(axes, panels):
        bs = np.sort(sub["batch_size"].unique())
        colors = palette(len(bs))
        for color, b in zip(colors, bs):
            line = sub[sub["batch_size"] == b].sort_values("log2_temperature")
            ax.plot(line["log2_temperature"], line["loss_mean"], "o-", ms=2.5, lw=1, color=color, label=f"B={fmt(b)}")
        score = match(collapse, labels)["collapse_score"]
        ax.set(xlabel="log2 T = log2(eta / B)", ylabel="final loss", yscale="log")
        finish(ax, f"{title}  collapse={score.iloc[0]:.3g}" if len(score) else title, legend=ax is axes[0])
    return fig


def plot_curves(mean_curves, eta_star, *, window_samples=None, max_groups=3):
    """Seed-mean loss curves with the batch-aware smoothing of :func:`raysweep.analyze.curves.smooth_curves`.
    Per group, three panels: each batch size at its eta* (against samples seen = step * B); each eta at the middle
    batch size (against step); each batch size at the temperature shared by most batch sizes (against eta * step,
    the SDE time, where equal-T curves should coincide)."""
    if mean_curves.empty:
        return None
    panels, total = panels_of(mean_curves, ("batch_size", "eta"), max_groups)
    fig, axes = figure(3 * len(panels), ncols=3, title=shown_title("loss curves (seed mean, smoothed)", len(panels),
                                                                total))
    smoothed = smooth_curves(mean_curves, window_samples=window_samples)
    for row, (title, labels, _) in enumerate(panels):
        sub = match(smoothed, labels)
        ax_b, ax_eta, ax_t = axes[3 * row: 3 * row + 3]
        best = match(eta_star, labels).dropna(subset=["eta_grid_best"])
        bs = thin(np.sort(sub["batch_size"].unique()))
        for color, b in zip(palette(len(bs)), bs):
            eta = best.loc[best["batch_size"] == b, "eta_grid_best"]
            c = sub[(sub["batch_size"] == b) & (sub["eta"] == eta.iloc[0])] if len(eta) else sub.iloc[:0]
            ax_b.plot(c["step"] * b, c["curve_loss"], lw=1, color=color, label=f"B={fmt(b)}")
        ax_b.set(xscale="log", yscale="log", xlabel="samples seen", ylabel="loss")
        finish(ax_b, f"{title}  at eta*(B)", legend=row == 0)
        b_mid = bs[len(bs) // 2]
        at_b = sub[sub["batch_size"] == b_mid]
        etas = thin(np.sort(at_b["eta"].unique()))
        for color, eta in zip(palette(len(etas)), etas):
            c = at_b[at_b["eta"] == eta]
            ax_eta.plot(c["step"], c["curve_loss"], lw=1, color=color, label=f"eta={fmt(eta)}")
        ax_eta.set(xscale="log", yscale="log", xlabel="step")
        finish(ax_eta, f"B={fmt(b_mid)}, by eta", legend=row == 0)
        log_t = np.round(np.log2(sub["eta"] / sub["batch_size"]), 6)
        if len(log_t):
            t_mode = _mode_temperature(sub, log_t)
            at_t = sub[log_t == t_mode]
            bs_t = thin(np.sort(at_t["batch_size"].unique()))
            for color, b in zip(palette(len(bs_t)), bs_t):
                c = at_t[at_t["batch_size"] == b]
                ax_t.plot(c["step"] * c["eta"], c["curve_loss"], lw=1, color=color, label=f"B={fmt(b)}")
        ax_t.set(xscale="log", yscale="log", xlabel="eta * step")
        finish(ax_t, f"T=2^{fmt(float(t_mode))}, by B" if len(log_t) else "", legend=row == 0)
    return fig


def _mode_temperature(sub, log_t):
    """The log2 T shared by the most batch sizes; ties go to the T whose curves end lowest (the interesting one)."""
    frame = pd.DataFrame({"t": log_t.to_numpy(), "b": sub["batch_size"].to_numpy(),
                          "loss": sub["curve_loss"].to_numpy()})
    g = frame.groupby("t")
    counts, lowest = g["b"].nunique(), g["loss"].min()
    best = counts[counts == counts.max()].index
    return lowest.loc[best].idxmin()


def plot_steps_to_target(steps, fits, *, max_panels=9):
    """S(B) per target with the fit S_min (1 + B_crit / B); dotted vertical line at B_crit."""
    t = steps[steps["reached"].astype(bool)] if len(steps) else steps
    if t.empty or t["batch_size"].nunique() < 2:
        return None
    panels, total = panels_of(t, ("batch_size", "eta", "target"), max_panels)
    fig, axes = figure(len(panels), title=shown_title("steps to target", len(panels), total))
    for ax, (title, labels, sub) in zip(axes, panels):
        targets = np.sort(sub["target"].unique())
        for color, target in zip(palette(len(targets)), targets):
            pts = sub[sub["target"] == target].sort_values("batch_size")
            b = pts["batch_size"].to_numpy(float)
            ax.plot(b, pts["steps"], "o", ms=3, color=color, label=f"target={target:.3g}")
            fit = match(fits, labels | {"target": target}) if "batch_crit" in fits else fits.iloc[:0]
            fit = fit.dropna(subset=["batch_crit"]) if len(fit) else fit
            if len(fit):
                f = fit.iloc[0]
                grid = np.geomspace(b.min(), b.max(), 60)
                ax.plot(grid, f["steps_min"] * (1 + f["batch_crit"] / grid), "-", lw=1, color=color)
                if b.min() <= f["batch_crit"] <= b.max():
                    ax.axvline(f["batch_crit"], ls=":", lw=0.8, color=color)
        ax.set(xscale="log", yscale="log", xlabel="batch_size", ylabel="steps to target")
        finish(ax, title)
    return fig


def plot_transfer(config_by_width, *, max_panels=9):
    """Seed-mean final loss against log2 eta, one line per width (masked configs are gaps)."""
    t = config_by_width
    if t.empty or t["width"].nunique() < 2:
        return None
    panels, total = panels_of(t, ("width", "eta"), max_panels)
    fig, axes = figure(len(panels), title=shown_title("transfer: final loss vs eta per width", len(panels), total))
    for ax, (title, labels, sub) in zip(axes, panels):
        widths = np.sort(sub["width"].unique())
        for color, n in zip(palette(len(widths)), widths):
            line = sub[sub["width"] == n].sort_values("eta")
            ax.plot(np.log2(line["eta"].to_numpy(float)), line["loss_mean"], "o-", ms=2.5, lw=1, color=color,
                    label=f"N={fmt(n)}")
        ax.set(xlabel="log2 eta", ylabel="final loss", yscale="log")
        finish(ax, title, legend=ax is axes[0])
    return fig


def plot_width(config_by_width, *, max_panels=9, max_etas=8):
    """"Wider is better": seed-mean final loss against log2 width at fixed eta. The same etas in every panel: those
    with a finite loss at 2 widths or more, thinned evenly to ``max_etas``."""
    t = config_by_width
    if t.empty or t["width"].nunique() < 2:
        return None
    panels, total = panels_of(t, ("width", "eta"), max_panels)
    per_eta = t.dropna(subset=["loss_mean"]).groupby("eta")["width"].nunique()
    etas = thin(np.sort(per_eta[per_eta >= 2].index), max_etas)
    colors = palette(len(etas))
    fig, axes = figure(len(panels), title=shown_title("final loss vs width at fixed eta", len(panels), total))
    for ax, (title, labels, sub) in zip(axes, panels):
        for color, eta in zip(colors, etas):
            line = sub[sub["eta"] == eta].sort_values("width")
            ax.plot(np.log2(line["width"].to_numpy(float)), line["loss_mean"], "o-", ms=2.5, lw=1, color=color,
                    label=f"eta={fmt(eta)}")
        ax.set(xlabel="log2 width", ylabel="final loss", yscale="log")
        finish(ax, title, legend=ax is axes[0])
    return fig


def plot_sharpness(table: pd.DataFrame, edges: pd.DataFrame | None = None, *, max_panels: int = 6):
    """Sharpness against step per trial, each with its stability threshold as a dashed line of its colour: one
    panel per (group, batch size); SGD panels draw ``sharpness`` (solid) and ``batch_sharpness`` (dotted, minibatch
    only) against ``2 / eta``, Adam panels ``preconditioned_sharpness`` against ``38 / eta`` and ``sharpness``
    (thin). ``table``: :func:`raysweep.analyze.sharpness.sharpness_curves`; with ``edges``
    (:func:`raysweep.analyze.sharpness.edge_table`) a last panel shows the stability edge eta_max(B) beside
    ``2 / sharpness at init``. None when nothing was measured."""
    if table.empty:
        return None
    panels, total = panels_of(table, ("eta", "seed"), max_panels)
    has_edges = edges is not None and len(edges) and edges["eta_init_bound"].notna().any()
    fig, axes = figure(len(panels) + bool(has_edges), ncols=3,
                       title=shown_title("sharpness vs step (dashed: the stability threshold)", len(panels), total))
    for ax, (title, labels, _) in zip(axes, panels):
        sub = match(table, labels)
        adam = (sub["optimizer"] == "Adam").all() if "optimizer" in sub.columns else False
        etas = thin(np.sort(sub["eta"].unique()))
        for color, eta in zip(palette(len(etas)), etas):
            for _, c in sub[sub["eta"] == eta].groupby("config_key", sort=False):
                c = c.sort_values("step")
                if adam:
                    ax.plot(c["step"], c["preconditioned_sharpness"], lw=1, color=color, label=f"eta={fmt(eta)}")
                    ax.plot(c["step"], c["sharpness"], lw=0.5, color=color, alpha=0.5)
                    ax.axhline(c["adam_edge"].iloc[0], ls="--", lw=0.8, color=color)
                else:  # from the sharpness at init (step 0), when the trial has it
                    init = c["initial_sharpness"].iloc[0] if "initial_sharpness" in c.columns else np.nan
                    steps, values = c["step"].to_numpy(float), c["sharpness"].to_numpy(float)
                    if pd.notna(init):
                        steps, values = np.r_[0.0, steps], np.r_[float(init), values]
                    ax.plot(steps, values, lw=1, color=color, label=f"eta={fmt(eta)}")
                    if c["batch_sharpness"].notna().any() and c["batch_size"].iloc[0] < table["batch_size"].max():
                        ax.plot(c["step"], c["batch_sharpness"], lw=0.8, ls=":", color=color)
                    ax.axhline(c["edge"].iloc[0], ls="--", lw=0.8, color=color)
        ax.set(xlabel="step", ylabel="P^-1 H sharpness (38/eta dashed)" if adam else "sharpness (2/eta dashed)")
        finish(ax, title or "all trials")
    if has_edges:
        ax = axes[-1]
        groups = list(iter_groups(edges, group_columns(edges, exclude=("batch_size",))))
        for color, (_, e) in zip(palette(len(groups)), groups):
            e = e.sort_values("batch_size")
            ax.plot(e["batch_size"], e["eta_diverge_min"], "o-", lw=1, color=color, label="eta_max(B): edge")
            ax.plot(e["batch_size"], e["eta_init_bound"], "--", lw=1, color=color, label="2 / sharpness at init")
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="eta")
        finish(ax, "stability edge vs 2 / sharpness at init")
    return fig
