"""The Parquet contract: column names and types of the ``trials`` and ``curves`` tables.

``trials``: one row per configuration that reached a terminal status. ``curves``: one row per (trial, report).
Both are documented column by column in the README; this module is the single source of truth.
"""

from __future__ import annotations

import pyarrow as pa

STATUSES = ("completed", "diverged", "failed", "pruned")

TRIALS_SCHEMA = pa.schema(
    [
        ("sweep", pa.string()),
        ("config_key", pa.string()),
        ("family", pa.string()),
        ("dataset", pa.string()),
        ("model", pa.string()),  # mlp | linear; null for sweeps made before the linear student
        ("parametrization", pa.string()),
        ("optimizer", pa.string()),
        ("lr_rule", pa.string()),
        ("loss", pa.string()),
        ("loss_convention", pa.string()),
        ("batch_size", pa.int64()),
        ("eta", pa.float64()),
        ("width", pa.int64()),
        ("depth", pa.int64()),
        ("gamma", pa.float64()),
        ("seed", pa.int64()),
        ("temperature", pa.float64()),
        ("lr_effective", pa.float64()),
        ("lr_hidden", pa.float64()),
        # the optimizer and schedule axes (null for the optimizers that do not read them, and in older sweeps)
        ("momentum", pa.float64()),
        ("nesterov", pa.bool_()),
        ("beta1", pa.float64()),
        ("beta2", pa.float64()),
        ("eps", pa.float64()),
        ("eps_scaling", pa.string()),
        ("weight_decay", pa.float64()),
        ("weight_decay_scaling", pa.string()),
        ("schedule", pa.string()),
        ("warmup_steps", pa.int64()),
        ("warmup_fraction", pa.float64()),
        ("decay_fraction", pa.float64()),
        ("final_fraction", pa.float64()),
        ("wd_timescale_steps", pa.float64()),  # 1 / (lr lambda); null without weight decay
        ("wd_timescale_samples", pa.float64()),  # B / (lr lambda)
        ("wd_timescale_fraction", pa.float64()),  # B / (lr lambda D), D = samples_seen: the run's fraction
        ("status", pa.string()),
        ("diverged_step", pa.int64()),
        ("dead_step", pa.int64()),  # first report step of the dead streak that lasted to the end; null unless dead
        ("steps", pa.int64()),
        ("samples_seen", pa.int64()),
        ("initial_loss", pa.float64()),
        ("final_train_loss", pa.float64()),
        ("final_eval_loss", pa.float64()),
        ("final_eval_accuracy", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("gpu_share", pa.float64()),
        ("cpu_share", pa.float64()),
        ("memory_cap", pa.float64()),
        ("memory_bytes", pa.float64()),
        ("dtype", pa.string()),
        ("device", pa.string()),
        ("node_id", pa.string()),
        ("bundle_id", pa.string()),
        ("n_bundle_members", pa.int64()),
        ("error", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("raysweep_version", pa.string()),
    ]
)

CURVES_SCHEMA = pa.schema(
    [
        ("sweep", pa.string()),
        ("config_key", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.int64()),
        ("samples_seen", pa.int64()),
        ("train_loss", pa.float64()),
        ("eval_loss", pa.float64()),
        ("eval_accuracy", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("active_fraction", pa.float64()),  # smallest fraction over hidden layers of units active on the eval set
        ("grad_noise_scale", pa.float64()),  # experiment.grad_noise_scale; the three are null when it is off
        ("grad_sq", pa.float64()),
        ("grad_trace_cov", pa.float64()),
    ]
)

# Columns that differ between two runs of the same configurations (timing, placement); drop them to compare runs.
TIMING_COLUMNS = ("wall_time_s", "finished_at", "node_id", "bundle_id", "n_bundle_members", "gpu_share", "cpu_share")
