"""The Python API (raysweep.run, RunOptions, Summary, load_spec, read_trials, read_curves) and a light dry run: the
options are checked when made, a run's Summary counts what landed, the readers return what the Parquet holds, and
``--dry-run`` imports neither Ray nor torch."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import raysweep
from raysweep.errors import NotASweepError, OptionError, SpecError
from tests.support import ROOT

SPEC = {
    "name": "api",
    "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 40, "report_every": 20},
    "space": {"batch_size": [16], "eta": [0.25, 0.5], "width": 16, "depth": 3},
}

# runs the launcher as `python -m raysweep.launch ARGS` would, then says which heavy libraries it imported
_DRY_RUN = (
    "import json, runpy, sys\n"
    "sys.argv = ['raysweep.launch', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('raysweep.launch', run_name='__main__', alter_sys=True)\n"
    "except SystemExit as exc:\n"
    "    rc = exc.code\n"
    "print(json.dumps({'rc': rc, 'loaded': [m for m in ('ray', 'torch') if m in sys.modules]}))\n"
)


def test_dry_run_imports_neither_ray_nor_torch_and_takes_little_cpu(tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", _DRY_RUN, "search_spaces/quickstart.yaml", "--dry-run",
                           "--storage", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "loaded": []}, (report, proc.stderr[-2000:])
    assert "sweep quickstart: 24 configurations, 0 already have a row, 24 to run" in proc.stdout
    assert cpu_s < 1.5, f"the dry run took {cpu_s:.2f} s of CPU"
    assert not (tmp_path / "r").exists()

    light = subprocess.run([sys.executable, "-c", "import sys, raysweep; print(sorted(m for m in ('raysweep.api', "
                            "'pyarrow', 'yaml', 'ray', 'torch') if m in sys.modules))"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert light.stdout.strip() == "[]", light.stderr  # the API loads on first use


@pytest.mark.parametrize("options, flag", [
    ({"num_cpus": 0}, "--num-cpus"),
    ({"num_cpus": 1.5}, "--num-cpus"),
    ({"num_gpus": float("nan")}, "--num-gpus"),
    ({"max_concurrent": True}, "--max-concurrent"),
    ({"storage": " "}, "--storage"),
    ({"name": "trials"}, "--name"),
    ({"address": "10.0.0.5:99999"}, "--address"),
    ({"dry_run": "yes"}, "--dry-run"),
])
def test_run_options_are_checked_when_made(options, flag):
    with pytest.raises(OptionError) as err:
        raysweep.RunOptions(**options)
    message = str(err.value)
    assert message.startswith(f"{flag}: ") and "\n" not in message, message


def test_a_bad_spec_or_environment_address_stops_run_before_anything(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match=r"space\.batch_size"):
        raysweep.run({**SPEC, "space": {**SPEC["space"], "batch_size": [-4]}},
                     raysweep.RunOptions(storage=tmp_path / "r"))
    monkeypatch.setenv("RAY_ADDRESS", "not an address")
    with pytest.raises(OptionError, match=r"^--address: .*\(from RAY_ADDRESS\)$"):
        raysweep.run(SPEC, raysweep.RunOptions(storage=tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_run_returns_what_landed_and_the_readers_read_it(ray_cluster, tmp_path):
    options = raysweep.RunOptions(storage=tmp_path / "r", address=ray_cluster, quiet=True)
    spec = raysweep.load_spec(SPEC)
    planned = raysweep.run(spec, raysweep.RunOptions(storage=tmp_path / "r", dry_run=True))
    assert planned.dry_run and planned.configurations == 2 and planned.landed == 0 and planned.exit_code == 0
    assert planned.text.startswith("sweep api: 2 configurations, 0 already have a row, 2 to run")

    summary = raysweep.run(spec, options)
    sweep = tmp_path / "r" / "api"
    assert summary.sweep == str(sweep) and summary.name == "api"
    assert (summary.configurations, summary.rows_before, summary.landed, summary.interrupted) == (2, 0, 2, None)
    assert summary.completed + summary.diverged == 2 and summary.failed == summary.pruned == 0
    assert summary.exit_code == 0 and summary.where and summary.text.startswith("sweep api: 2 configurations landed")

    trials, curves = raysweep.read_trials(summary), raysweep.read_curves(summary)
    on_disk = pq.read_table(sweep / "trials").to_pandas()
    assert sorted(trials.columns) == sorted(on_disk.columns) and len(trials) == 2
    by_key = ["config_key"]
    assert trials.sort_values(by_key).reset_index(drop=True).equals(on_disk.sort_values(by_key).reset_index(drop=True))
    curves_on_disk = pq.read_table(sweep / "curves").to_pandas()
    by_step = ["config_key", "step"]
    assert len(curves) == 2 * 2  # reports at steps 20 and 40
    assert curves.sort_values(by_step).reset_index(drop=True).equals(
        curves_on_disk.sort_values(by_step).reset_index(drop=True))
    assert raysweep.read_trials(tmp_path / "r", name="api").equals(trials)
    with pytest.raises(NotASweepError):
        raysweep.read_trials(tmp_path / "r")

    again = raysweep.run(spec, options)  # exactly once: a finished sweep relaunched runs nothing
    assert (again.landed, again.rows_before) == (0, 2) and "nothing to run" in again.text


def test_torch_build_is_read_without_importing_torch(tmp_path, monkeypatch):
    """What the dry run's CUDA question reads: torch's version file, here as a CUDA build writes it."""
    import importlib.machinery
    import importlib.util

    import torch

    from raysweep.autobatch.device import torch_build

    assert torch_build() == {"version": torch.__version__, "cuda": torch.version.cuda, "hip": torch.version.hip}
    (tmp_path / "version.py").write_text("from typing import Optional\n__version__ = '2.5.1+cu124'\n"
                                         "cuda: Optional[str] = '12.4'\nhip: Optional[str] = None\nx = f()\n")
    found = importlib.machinery.ModuleSpec("torch", None, is_package=True)
    found.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: found if name == "torch" else None)
    assert torch_build() == {"version": "2.5.1+cu124", "cuda": "12.4", "hip": None}
