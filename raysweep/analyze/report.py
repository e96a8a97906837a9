"""Run every analysis the data supports, write the tables and figures, and render one self-contained HTML report.

An analysis runs only when the data has its axes: eta*(B), the stability edge and S(B) need ``batch_size`` and
``eta`` (the power law, B_crit, the temperature collapse and the plots over B need 2 batch sizes, S(B) needs curves);
transfer needs 2 widths; the gamma slopes need 2 gammas. The heatmaps need a grid: when less than
:data:`MIN_GRID_FILL` of the (B, eta) grid ran (a guided search), they are skipped and the loss-vs-eta plot of every
trial (pruned ones included) stands in. What was skipped, and why, is listed in the report.

The metric eta* is chosen on (``metric``: eval_loss, the default, train_loss or eval_accuracy, maximised) is stated
in the report's summary and in a ``metric`` column of every table.

The HTML report is one file: figures inline as base64 PNG data URIs (metadata stripped), tables as HTML, CSS
inline, and no external URL (any ``http://`` / ``https://`` in the data is written with an HTML entity for the colon,
so the file never holds one).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from raysweep import storage
from raysweep.analyze import plots
from raysweep.analyze.critical import fit_critical_batch, seed_mean_curves, steps_to_target
from raysweep.analyze.gamma import gamma_slopes, gamma_table
from raysweep.analyze.heatmaps import grid_fill
from raysweep.analyze.linear import read_setting, theory_table
from raysweep.analyze.load import (
    CONFIG_COLUMNS,
    ensure_prepared,
    find_sweeps,
    load_sweep,
    metric_of,
)
from raysweep.analyze.noise import has_noise_scale, noise_scale_table
from raysweep.analyze.sharpness import edge_table, has_curvature, sharpness_curves
from raysweep.analyze.optimum import (
    all_diverged,
    all_failed,
    config_table,
    eta_max,
    fit_eta_power_law,
    optimal_eta,
)
from raysweep.analyze.quality import MAX_RMSE_OCTAVES, MAX_RMSE_REL, MIN_POINTS_INTERVAL, MIN_SEEDS_INTERVAL
from raysweep.analyze.scaling_rules import collapse as scaled_collapse
from raysweep.analyze.scaling_rules import fit_eta_peak
from raysweep.analyze.temperature import temperature_collapse, temperature_table
from raysweep.analyze.transfer import transfer_slope, transfer_table
from raysweep.errors import NoResultsError, StorageError

# (table name, section title) in report order.
TABLES = {
    "eta_star": "Optimal learning rate eta*(B)",
    "eta_power_law": "Power law of eta* in B, and its saturation",
    "eta_peak": "eta*(B) rising then falling: a broken line in log-log with a free second slope",
    "eta_max": "Stability edge: eta_max(B) and eta_diverge_min(B) (diverged or dead)",
    "all_diverged": "All diverged: groups where every trial that ran diverged or died",
    "all_failed": "All failed: groups where every trial failed (missing data, not an edge)",
    "temperature_collapse": "Temperature collapse (lower = better collapse)",
    "sqrt_collapse": "Collapse at equal eta / sqrt(B), Adam's square-root rule (lower = better collapse)",
    "tau_collapse": "Collapse at equal weight-decay timescale tau = B / (eta lambda D) (lower = better collapse)",
    "steps_to_target": "Steps to target S(B)",
    "critical_batch": "Critical batch size: S = S_min (1 + B_crit / B)",
    "transfer": "Transfer: eta*(width)",
    "transfer_slope": "Transfer slope (octaves of eta* per width doubling)",
    "gamma": "eta*(gamma) and the stability edge",
    "gamma_slopes": "Gamma slopes (lazy / rich regimes)",
}
FIGURES = {
    "heatmap": "Final metric over (log2 B, log2 eta); cross-hatched = diverged, light hatch = dead, dotted = failed",
    "heatmap_temperature": "Final metric over (log2 eta/B, log2 eta); cross-hatched = diverged, light hatch = dead",
    "loss_vs_eta": "Final metric of every trial vs eta per batch size (pruned, dead and diverged trials marked)",
    "eta_star": "eta*(B) and the fitted broken power law",
    "loss_vs_temperature": "Final loss vs temperature, one line per batch size",
    "curves": "Loss curves by batch size, eta and temperature",
    "steps_to_target": "Steps to target and the critical-batch fit",
    "transfer": "Transfer: final loss vs eta per width",
    "width": "Wider is better: final loss vs width at fixed eta",
    "gamma_phase": "Gamma-eta phase plot",
}
# Report sections: (title, figure keys, table keys), in order.
SECTIONS = (
    ("Optimal learning rate and stability edge", ("heatmap", "heatmap_temperature", "loss_vs_eta", "eta_star"),
     ("eta_star", "eta_power_law", "eta_peak", "eta_max", "all_diverged", "all_failed")),
    ("Temperature T = eta / B", ("loss_vs_temperature",), ("temperature_collapse", "sqrt_collapse", "tau_collapse")),
    ("Steps to target and critical batch size", ("curves", "steps_to_target"), ("steps_to_target", "critical_batch")),
    ("Transfer across width", ("transfer", "width"), ("transfer", "transfer_slope")),
    ("Richness gamma", ("gamma_phase",), ("gamma", "gamma_slopes")),
)
INT_COLUMNS = ("batch_size", "width", "depth", "seed")
# below this fraction of the (B, eta) grid run (a guided search), the heatmaps are skipped (raysweep.analyze.heatmaps)
MIN_GRID_FILL = 0.5


@dataclass
class Analysis:
    """What :func:`analyze_frames` produced for one sweep: ``tables`` (name -> DataFrame), ``figures``
    (name -> PNG bytes), ``notes`` (skipped analyses, failed plots), and where it was written."""

    name: str
    trials: pd.DataFrame
    curves: pd.DataFrame
    tables: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    out_dir: Path | None = None


def _n(trials: pd.DataFrame, column: str) -> int:
    return int(trials[column].nunique()) if column in trials.columns else 0


def analyze_frames(trials: pd.DataFrame, curves: pd.DataFrame, *, name: str = "sweep", targets=None,
                   window_samples: float | None = None, n_boot: int = 200, seed: int = 0, lazy_max: float = 1 / 8,
                   rich_min: float = 4.0, max_panels: int = 9, make_plots: bool = True,
                   strict: bool = False, metric: str | None = None, linear=None) -> Analysis:
    """All tables (and figures) the data supports, for trials from :func:`~raysweep.analyze.load.load`, on
    ``metric`` (default: the one the trials were prepared for, else eval_loss). ``strict`` re-raises a failing plot
    instead of noting it in the report. ``linear`` (a :class:`~raysweep.analyze.linear.LinearSetting`, for a linear
    student) adds the ``linear_theory`` table and draws the exact SGD edge on the (B, eta) heatmaps."""
    trials = ensure_prepared(trials, metric)
    out = Analysis(name, trials, curves)
    tables, notes = out.tables, out.notes
    tables["all_diverged"] = all_diverged(trials)
    failed = tables["all_failed"] = all_failed(trials)
    if len(failed):
        notes.append(f"{len(failed)} group(s) where every trial failed (missing data, not a stability edge): see "
                     "the all_failed table.")
    n_b = _n(trials, "batch_size")
    eta_star = edge = temp = collapse = mean_curves = None
    if n_b and _n(trials, "eta"):
        eta_star = tables["eta_star"] = optimal_eta(trials, x="batch_size", n_boot=n_boot, seed=seed)
        edge = tables["eta_max"] = eta_max(trials, x="batch_size")
        if eta_star["interval_note"].str.startswith("no interval:").any() and n_boot > 0:
            notes.append(f"No bootstrap interval of eta* where fewer than {MIN_SEEDS_INTERVAL} seeds have a usable "
                         "value (interval_note).")
        if linear is not None:
            tables["linear_theory"] = theory_table(trials, linear)
        temp = temperature_table(trials)
        if n_b >= 2:
            tables["eta_power_law"] = fit_eta_power_law(eta_star, x="batch_size")
            collapse = tables["temperature_collapse"] = temperature_collapse(temp)
            tables["eta_peak"] = fit_eta_peak(eta_star, x="batch_size")
            if (trials["optimizer"] != "SGD").any():
                tables["sqrt_collapse"] = scaled_collapse(trials, "eta_over_sqrt_b")
            if "wd_timescale_fraction" in trials and trials["wd_timescale_fraction"].notna().any():
                tables["tau_collapse"] = scaled_collapse(trials[trials["wd_timescale_fraction"].notna()], "tau")
        else:
            notes.append("One batch size: no power law of eta* in B, no temperature collapse, no S(B) fit, no "
                         "heatmaps or plots over B (the loss-vs-eta plot shows the sweep).")
        if len(curves):
            mean_curves = seed_mean_curves(curves, trials)
            steps = tables["steps_to_target"] = steps_to_target(curves, trials, targets, mean_curves=mean_curves)
            if n_b >= 2:
                tables["critical_batch"] = fit_critical_batch(steps, n_boot=1000, seed=seed)
        else:
            notes.append("No curves: no steps-to-target, no critical batch, no loss-curve plot.")
    else:
        notes.append("No batch_size/eta axes: no eta*(B) analysis.")
    by_width = None
    if _n(trials, "width") >= 2 and _n(trials, "eta"):
        tables["transfer"] = transfer_table(trials, n_boot=n_boot, seed=seed)
        tables["transfer_slope"] = transfer_slope(tables["transfer"])
        by_width = config_table(trials, x="width")
    else:
        notes.append("Fewer than 2 widths: no transfer analysis.")
    if len(curves) and has_noise_scale(curves):
        tables["noise_scale"] = noise_scale_table(curves, trials)
    sharp = None
    if len(curves) and has_curvature(curves):
        sharp = sharpness_curves(curves, trials)
        if n_b and _n(trials, "eta") and trials["initial_sharpness"].notna().any():
            tables["sharpness_edge"] = edge_table(trials)
    if _n(trials, "gamma") >= 2 and _n(trials, "eta"):
        tables["gamma"] = gamma_table(trials, n_boot=n_boot, seed=seed)
        tables["gamma_slopes"] = gamma_slopes(tables["gamma"], lazy_max=lazy_max, rich_min=rich_min)
    else:
        notes.append("Fewer than 2 gammas: no gamma analysis.")
    flagged = [k for k, v in tables.items() if "fit_ok" in v.columns and (~v["fit_ok"].astype(bool)).any()]
    if flagged:
        notes.append(f"Flagged fits (fit_ok false, reason in fit_note: too few points, or rmse above "
                     f"{MAX_RMSE_OCTAVES:g} octave / {MAX_RMSE_REL:.0%} for S(B)): {', '.join(flagged)}.")
    metric = metric_of(trials)
    for table in tables.values():
        if "metric" not in table.columns:
            table["metric"] = metric
        table.attrs["metric"] = metric
    if not make_plots:
        return out
    jobs = {}
    if eta_star is not None:
        fill = grid_fill(trials)
        if n_b < 2:
            pass  # noted above
        elif fill < MIN_GRID_FILL:
            notes.append(f"Only {fill:.0%} of the (B, eta) grid ran (a guided search?): no heatmaps; the loss-vs-eta "
                         "plot shows every trial.")
        else:
            jobs["heatmap"] = lambda: plots.plot_heatmap(trials, eta_star, edge, max_panels=max_panels, theory=linear)
            jobs["heatmap_temperature"] = lambda: plots.plot_heatmap(trials, eta_star, edge, temperature=True,
                                                                     max_panels=max_panels, theory=linear)
        jobs["loss_vs_eta"] = lambda: plots.plot_loss_vs_eta(trials, eta_star, max_panels=max_panels)
        jobs["eta_star"] = lambda: plots.plot_eta_star(eta_star, tables.get("eta_power_law", pd.DataFrame()),
                                                       max_panels=max_panels)
        if collapse is not None:
            jobs["loss_vs_temperature"] = lambda: plots.plot_loss_vs_temperature(temp, collapse,
                                                                                 max_panels=max_panels)
    if mean_curves is not None:
        jobs["curves"] = lambda: plots.plot_curves(mean_curves, eta_star, window_samples=window_samples)
        jobs["steps_to_target"] = lambda: plots.plot_steps_to_target(
            tables["steps_to_target"], tables.get("critical_batch", pd.DataFrame()), max_panels=max_panels)
    if by_width is not None:
        jobs["transfer"] = lambda: plots.plot_transfer(by_width, max_panels=max_panels)
        jobs["width"] = lambda: plots.plot_width(by_width, max_panels=max_panels)
    if sharp is not None:
        jobs["sharpness"] = lambda: plots.plot_sharpness(sharp, tables.get("sharpness_edge"), max_panels=max_panels)
    if "gamma" in tables:
        jobs["gamma_phase"] = lambda: plots.plot_gamma_phase(trials, tables["gamma"], max_panels=max_panels)
    for key, job in jobs.items():
        try:
            fig = job()
        except Exception as exc:  # a broken plot must not cost the user the tables and the other plots
            if strict:
                raise
            notes.append(f"Plot {key!r} failed: {type(exc).__name__}: {exc}")
            continue
        if fig is not None:
            out.figures[key] = plots.png_bytes(fig)
    return out


def tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Integer-valued axis columns back to (nullable) integers, for readable CSV and a faithful Parquet type."""
    table = table.copy()
    for col in INT_COLUMNS:
        if col in table.columns and table[col].dtype.kind == "f":
            v = table[col].to_numpy(float)
            if np.all(np.isnan(v) | (v == np.round(v))):
                table[col] = table[col].astype("Int64")
    return table


def write_outputs(analysis: Analysis, out_dir) -> list[Path]:
    """Every table as ``<name>.parquet`` and ``<name>.csv`` and every figure as ``<name>.png`` under ``out_dir``, each
    file appearing atomically and never written through a link (:func:`raysweep.storage.write_atomic`)."""
    out_dir = Path(out_dir)
    _no_link(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in analysis.tables.items():
        table = tidy(table)
        _write(out_dir / f"{name}.parquet", lambda fh, t=table: t.to_parquet(fh, index=False))
        _write(out_dir / f"{name}.csv", lambda fh, t=table: fh.write(t.to_csv(index=False).encode()))
        written += [out_dir / f"{name}.parquet", out_dir / f"{name}.csv"]
    for name, png in analysis.figures.items():
        _write(out_dir / f"{name}.png", lambda fh, data=png: fh.write(data))
        written.append(out_dir / f"{name}.png")
    analysis.out_dir = out_dir
    return written


def _no_link(path: Path) -> None:
    """An output folder that is a symbolic link would put the analysis outside the sweep: refuse it."""
    if path.is_symlink():
        raise StorageError(f"{path}: a symbolic link; the analysis is never written through a link")


def _write(path: Path, write) -> None:
    storage.write_atomic(storage.resolve(path), write)


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1500px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1em}
table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}
table.t th,table.t td{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.t th{background:#f3f3f3}.note{color:#555;font-size:13px}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#444}
"""


def _fixed(trials: pd.DataFrame) -> dict:
    """Configuration columns with one value in the whole sweep: said once in the summary, not in every table."""
    return {c: trials[c].iloc[0] for c in CONFIG_COLUMNS
            if c in trials.columns and len(trials) and trials[c].notna().all() and trials[c].nunique() == 1}


def _table_html(table: pd.DataFrame, max_rows: int, drop=()) -> str:
    if table.empty:
        return '<p class="note">(empty)</p>'
    shown = tidy(table.head(max_rows).drop(columns=[c for c in drop if c in table.columns]))
    text = shown.to_html(index=False, na_rep="", border=0, classes="t",
                         float_format=lambda v: f"{v:.4g}")
    if len(table) > max_rows:
        text += f'<p class="note">first {max_rows} of {len(table)} rows; all of them in the CSV/Parquet file.</p>'
    return text


def _summary(analysis: Analysis, fixed: dict) -> str:
    t = analysis.trials
    counts = t["status"].value_counts().to_dict() if len(t) else {}
    status = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    n_dead = int(t["dead"].sum()) if len(t) else 0
    source = t.loc[t["usable"], "final_loss_source"].value_counts().to_dict() if len(t) else {}
    loss = ", ".join(f"{k}: {v}" for k, v in sorted(source.items())) or "none usable"
    same = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in fixed.items())
    metric = metric_of(t)
    how = ("accuracy is maximised: loss columns hold the error 1 - eval_accuracy" if metric == "eval_accuracy"
           else "minimised; eval_loss falls back to the train loss on a row without one" if metric == "eval_loss"
           else "minimised")
    return (f"<p>{len(t)} trials ({html.escape(status)}; {n_dead} of them dead); {len(analysis.curves)} curve "
            f"rows. Metric: <b>{html.escape(metric)}</b> ({html.escape(how)}); values from "
            f"{html.escape(loss)}.</p>"
            f"<p class=\"note\">Stability edge (eta_diverge_min): the smallest eta where any seed diverged or died "
            f"(dead: a hidden layer with no active unit, or collapsed to chance); failed trials are missing data, "
            f"never an edge. Bootstrap intervals need {MIN_SEEDS_INTERVAL} seeds ({MIN_POINTS_INTERVAL} batch sizes "
            f"for B_crit); fits with too few points or an rmse above {MAX_RMSE_OCTAVES:g} octave "
            f"({MAX_RMSE_REL:.0%} for S(B)) have fit_ok false.</p>"
            f"<p class=\"note\">Same in every trial (left out of the tables below): "
            f"{html.escape(same or 'nothing')}.</p>")


def render_html(analyses, *, title: str = "raysweep analysis", max_rows: int = 200) -> str:
    """One self-contained HTML page for one or several :class:`Analysis`: per sweep a summary, the notes, then
    one section per topic (:data:`SECTIONS`) with its figures and tables."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for a in analyses:
        fixed = _fixed(a.trials)
        parts.append(f"<h2>Sweep {html.escape(a.name)}</h2>{_summary(a, fixed)}")
        parts += [f'<p class="note">{html.escape(note)}</p>' for note in a.notes]
        for section, figures, tables in SECTIONS:
            if not any(k in a.figures for k in figures) and not any(k in a.tables for k in tables):
                continue
            parts.append(f"<h2>{html.escape(section)}</h2>")
            for key in figures:
                if key in a.figures:
                    data = base64.b64encode(a.figures[key]).decode("ascii")
                    parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{key}">'
                                 f"<figcaption>{html.escape(FIGURES[key])}</figcaption></figure>")
            for key in tables:
                if key in a.tables:
                    parts.append(f"<h3>{html.escape(TABLES[key])} <small>({key})</small></h3>")
                    parts.append(_table_html(a.tables[key], max_rows, drop=fixed))
    parts.append("</body></html>")
    text = "\n".join(parts)
    # No external URL may appear anywhere in the file, even inside data values.
    return text.replace("http://", "http&#58;//").replace("https://", "https&#58;//")


def _analyses(results_dir, sweep=None, metric=None, **kwargs) -> list[Analysis]:
    folders = find_sweeps(results_dir, sweep)
    found = []
    for folder in folders:
        trials, curves = load_sweep(folder, metric)
        if len(trials):
            found.append(analyze_frames(trials, curves, name=folder.name, metric=metric, linear=read_setting(folder),
                                        **kwargs))
    if not found:
        where = f"sweep {sweep!r} under {results_dir}" if sweep else str(results_dir)
        raise NoResultsError(
            f"no trial rows in {where}: expected <RESULTS_DIR>/<sweep>/trials/*.parquet (or RESULTS_DIR itself "
            f"being a sweep folder with trials/*.parquet); found {len(folders)} sweep folder(s) with no rows")
    return found


def build_report(results_dir, out, sweep: str | None = None, **kwargs) -> Path:
    """Analyse every sweep under ``results_dir`` (or ``sweep``) and write one HTML report to ``out``; returns its
    path. Raises :class:`NoResultsError` when there are no trial rows. ``kwargs`` go to :func:`analyze_frames`."""
    analyses = _analyses(results_dir, sweep, **kwargs)
    return write_report(analyses, out)


def write_report(analyses, out) -> Path:
    """Render ``analyses`` (a list of :class:`Analysis`) into the HTML file ``out``; returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = analyses[0].name if len(analyses) == 1 else ", ".join(a.name for a in analyses)
    html = render_html(analyses, title=f"raysweep analysis: {name}")
    _write(out, lambda fh: fh.write(html.encode("utf-8")))
    return out


def analyze(results_dir, sweep: str | None = None, out=None, report=None, **kwargs) -> dict:
    """Analyse, write the tables and figures, and the report; returns ``{sweep name: Analysis}``.

    Tables go to ``out`` (one sweep) or ``out/<sweep>`` (several), by default ``<sweep folder>/analysis``. The
    report goes to ``report`` (one file for all sweeps) or, by default, ``report.html`` beside each sweep's
    tables. Raises :class:`NoResultsError` when there are no trial rows."""
    analyses = _analyses(results_dir, sweep, **kwargs)
    folders = {p.name: p for p in find_sweeps(results_dir, sweep)}
    for a in analyses:
        if out is None:
            target = folders[a.name] / "analysis"
        else:
            target = Path(out) if len(analyses) == 1 else Path(out) / a.name
        write_outputs(a, target)
    if report is not None:
        write_report(analyses, report)
    else:
        for a in analyses:
            write_report([a], a.out_dir / "report.html")
    return {a.name: a for a in analyses}
