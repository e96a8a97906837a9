"""Science checks: does a sweep reproduce what the theory says? Each check reads the sweep's Parquet tables through
the analysis functions of this package and compares what they measure with the expected value and a tolerance.

``python -m raysweep.analyze RESULTS_DIR --check STUDY`` prints one table, ``quantity | measured | expected |
tolerance | pass``, and exits 1 on any miss. The studies and their search spaces (``search_spaces/science_*.yaml``):

- ``transfer``: eta*(N) per parametrization (:func:`~raysweep.analyze.transfer.transfer_slope`). muP: the fitted
  drift of log2 eta* across the width range is within +-0.5 octave, and the seed-mean loss at a fixed eta falls with
  width (slope of log2 loss vs log2 N < 0) at eta = eta*(N_min) and at eta*(N_min) / 4. SP (here the NTK
  parametrization): eta* drifts up a little (0 < slope <= 0.5 octave per width doubling), and at eta*(N_min) / 4
  wider is worse (loss slope > 0): two octaves below the narrowest width's optimum, where wide NTK nets stay lazier;
  at the optimum itself, close to the edge of stability, wider measures better (shown as info). ``torch_sp``
  (PyTorch's default SP): eta* falls one octave per width doubling, slope -1 +- 0.3; reported as skipped when
  raysweep has no such parametrization or the sweep has no torch_sp rows.
- ``gamma_eta``: the slope of log2 eta_diverge_min (the stability edge: the smallest eta at which any seed
  diverged or died; :func:`~raysweep.analyze.gamma.gamma_slopes`) against log2 gamma is 2 +- 0.3 for gamma <= 1/8 and
  2/L +- 0.3 for gamma >= 4, per depth L (Atanasov et al., ICLR 2025). eta_max (the largest eta with no diverged
  seed) is shown as info: past the edge deep ReLU nets may die instead of diverging, which makes it non-monotone.
- ``temperature``: eta*(B) grows with B at small B (power-law slope >= 0.25 below the saturation batch B_sat of
  :func:`~raysweep.analyze.optimum.fit_eta_power_law`) and saturates inside the B range; for B <= B_sat and T from
  the first temperature at which every such B has at least halved the zero-predictor loss (below it nothing has
  trained and every B trivially agrees) up to the smallest optimal temperature eta*(B) / B (well below the edge),
  the :func:`~raysweep.analyze.temperature.temperature_collapse` score is <= 0.1.
- ``critical_batch``: S(B) at the deepest default target (:func:`~raysweep.analyze.critical.default_targets`,
  or ``target``) is reached at every B, fits S_min (1 + B_crit / B) within 20% at every B
  (:func:`~raysweep.analyze.critical.fit_critical_batch`), with B_crit inside the swept B range and S_min at least
  three report intervals (so that it is resolved).
- ``scaling_rules``: batch-size scaling rules (Malladi et al. 2022; :mod:`raysweep.analyze.scaling_rules`). From the
  base at the smallest batch B0, SGD under the linear rule (eta x kappa) and Adam/AdamW under the square-root rule
  (eta x sqrt(kappa), 1 - beta_i x kappa, eps / sqrt(kappa)) keep the seed-mean eval-loss curve against samples
  seen: the largest relative deviation from the base curve is <= 10% at every kappa. Adam under the linear rule must
  visibly break it: its deviation at the largest kappa is > 10% (smaller kappas are shown as info).

- ``linear_edge``: the linear student's SGD stability edge (:mod:`raysweep.analyze.linear`). At every B the
  measured edge (the smallest eta at which a seed diverged) is at most one eta grid step below the exact
  mean-square edge ``eta_edge(B)`` of :mod:`raysweep.linear_theory` and at most half an octave above it (a run can
  survive a little past the mean-square edge); below ``B_crit / 2`` the slope of log2 edge against log2 B is
  1 +- 0.25, above ``2 B_crit`` it is 0 +- 0.25 and the edge sits within half an octave of ``2 / lambda_max``. The
  largest gap, and the study's approximation's largest gap below the exact edge, are info rows.
- ``eos``: the edge of stability (Cohen et al. 2021). For every full-batch GD trial (SGD at ``batch_size`` =
  the training set of a fixed-data family) the sharpness rises from its value at init (``initial_sharpness``) by at
  least ``min_rise`` (1.5x, mean over the window), and stays within 10% of ``2 / lr_effective`` at every report of
  the window, the second half of training. Info rows: minibatch SGD's batch sharpness against ``2 / eta``
  (Andreyev and Beneventano 2024) and Adam's preconditioned sharpness against ``38 / eta`` (beta1 = 0.9; Cohen et
  al. 2022), mean over the same window (:mod:`raysweep.analyze.sharpness`).

A check passes when no row fails; ``info`` and ``skipped`` rows never fail it. Each check expects one configuration
group per parametrization (transfer) or per depth (gamma_eta), as the shipped search spaces give.

Fit quality. Every row measured on a fit (the transfer slopes, the gamma slopes, the eta* power law, B_crit and
S_min) prints the fit's quality beside its value (``n`` points and ``rmse``), and a fit that
:mod:`raysweep.analyze.quality` flags (too few points, residuals above the threshold) makes its row FAIL, with the
reason in the pass column: a check never confirms a law from a fit it does not trust (``skipped`` would let a sweep
with nothing trustworthy pass on its other rows). The stability edge (``eta_diverge_min``) counts dead nets with the
diverged ones, and failed trials are missing data (an all-failed parametrization fails its row with the error).
"""

from __future__ import annotations

from pathlib import Path

from raysweep import space
from raysweep.analyze.critical import check_critical_batch
from raysweep.analyze.gamma import check_gamma_eta
from raysweep.analyze.linear import check_linear_edge, read_setting
from raysweep.analyze.load import find_sweeps, load
from raysweep.analyze.rows import FAIL, INFO, PASS, SKIPPED, CheckResult, Row
from raysweep.analyze.scaling_rules import check_scaling_rules
from raysweep.analyze.sharpness import check_eos
from raysweep.analyze.temperature import check_temperature
from raysweep.analyze.transfer import check_transfer
from raysweep.errors import NoResultsError

STUDIES = ("transfer", "gamma_eta", "temperature", "critical_batch", "linear_edge", "eos", "scaling_rules")

__all__ = ["FAIL", "INFO", "PASS", "SKIPPED", "STUDIES", "CheckResult", "Row", "check_critical_batch", "check_eos",
           "check_gamma_eta", "check_linear_edge", "check_scaling_rules", "check_temperature", "check_transfer",
           "find_sweep", "run_check"]


def find_sweep(results_dir, study: str, sweep: str | None = None) -> Path:
    """The sweep folder a check reads: ``sweep`` if given, else ``science_<study>``, else the only sweep there."""
    name = sweep or f"science_{study}"
    found = find_sweeps(results_dir, name)
    if not found and sweep is None:
        found = find_sweeps(results_dir)
        if len(found) != 1:
            found = []
    if not found:
        have = ", ".join(p.name for p in find_sweeps(results_dir)) or "none"
        raise NoResultsError(f"no sweep {name!r} under {results_dir} (sweeps there: {have}); run "
                             f"python -m raysweep.launch search_spaces/science_{study}.yaml --storage {results_dir}, "
                             "or name the sweep with --sweep")
    return found[0]


def run_check(results_dir, study: str, *, sweep: str | None = None, target: float | None = None) -> CheckResult:
    """Load the sweep (:func:`find_sweep`) and run the check of ``study`` (one of :data:`STUDIES`) on it."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}, got {study!r}")
    folder = find_sweep(results_dir, study, sweep)
    trials, curves = load(folder)
    if trials.empty:
        raise NoResultsError(f"no trial rows in {folder}/trials")
    if study == "transfer":
        rows = check_transfer(trials)
    elif study == "gamma_eta":
        rows = check_gamma_eta(trials)
    elif study == "temperature":
        rows = check_temperature(trials)
    elif study == "linear_edge":
        rows = check_linear_edge(trials, read_setting(folder))
    elif study == "scaling_rules":
        rows = check_scaling_rules(trials, curves)
    elif study == "critical_batch":
        rows = check_critical_batch(trials, curves, target=target)
    else:
        rows = check_eos(trials, curves, n_train=_n_train(folder))
    return CheckResult(study, folder.name, rows)


def _n_train(folder: Path) -> int | None:
    """The training set size of a fixed-data sweep, from its ``spec.yaml`` (None when online or unknown)."""
    try:
        spec = space.load_spec(Path(folder) / "spec.yaml")
    except Exception:  # noqa: BLE001 - no spec (a synthetic sweep): the check falls back to the largest batch
        return None
    if spec.experiment.online:
        return None
    return spec.experiment.params.get("n_train")
