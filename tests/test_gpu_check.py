"""benchmarks/gpu_check.py, the one command that proves the CUDA path on a GPU machine, kept from rotting on a CPU:
its quick CPU mode produces every table row, and the script needs nothing the GPU image lacks (that image has torch,
numpy, pandas, pyarrow, pyyaml and scikit-learn, but no Ray, optuna or matplotlib)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MISSING = ("ray", "optuna", "matplotlib", "polars", "duckdb", "hypothesis")
TITLES = {"probe": "1.", "cap": "2.", "trainer": "3.", "grid": "4.", "paths": "5.", "compile": "3b."}

# Loaded by every Python process of the run (the script, the probe subprocess, its forkserver, the trial processes):
# each of MISSING then fails to import, as on the GPU image.
SITECUSTOMIZE = """
import os, sys
for name in {missing!r}:
    sys.modules[name] = None
with open(os.environ["GPU_CHECK_BLOCK_LOG"], "a") as fh:
    fh.write(str(os.getpid()) + "\\n")
"""


def _blocked_env(tmp: Path) -> dict:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(missing=MISSING))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), GPU_CHECK_BLOCK_LOG=str(tmp / "processes.log"))
    return env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``gpu_check.py --cpu --quick`` once, in a subprocess where Ray, optuna and matplotlib cannot be imported."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--quick", "--out", str(tmp / "out")], cwd=ROOT,
                          env=_blocked_env(tmp), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((tmp / "out" / "gpu_check.json").read_text())
    return doc, (tmp / "out" / "gpu_check.md").read_text(), tmp


def _pct(cell: str) -> float:
    assert cell.endswith("%"), cell
    return float(cell.rstrip("%"))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_modules_import_without_ray_optuna_matplotlib(tmp_path):
    """The script's modules and every raysweep module it reaches import on an image without them."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); "
            "import gpu_check, _gpu_common, _gpu_memory, _gpu_paths, _gpu_speed, _plain, sweep; "
            "import raysweep.analyze.optimum, raysweep.autobatch.host, raysweep.autobatch.probe, "
            "raysweep.autobatch.steps, raysweep.autobatch.sizing, raysweep.plan, raysweep.trial, raysweep.train, "
            "raysweep.data, raysweep.space, raysweep.custom.train, raysweep.autobatch.module; "
            "import raysweep.analyze as ra; assert callable(ra.optimal_eta)\n"
            "try:\n    import ray\nexcept ImportError:\n    print('no ray')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_blocked_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "no ray"


@pytest.mark.slow
def test_quick_mode_runs_every_check_without_ray_optuna_matplotlib(quick_run):
    doc, md, tmp = quick_run
    # every process of the run started under the block: the script, the probe subprocess and its forkserver, the
    # two trial processes of the cap check, the compile child
    assert len((tmp / "processes.log").read_text().split()) >= 6
    assert doc["meta"]["mode"] == "cpu quick"
    assert set(doc["checks"]) == set(TITLES)
    for name, check in doc["checks"].items():
        assert check["status"] == "ok", (name, check["error"])
        assert check["rows"] and check["columns"], name
        assert all(len(row) == len(check["columns"]) for row in check["rows"]), name
        assert f"### {TITLES[name]} " in md
    # a summary table (one line per check), then one table per check: a header, a rule and one line per row
    lines = md.splitlines()
    assert sum(line.startswith("|---") for line in lines) == len(TITLES) + 1
    assert sum(line.startswith("| ") for line in lines) == len(TITLES) + 1 + sum(
        len(c["rows"]) + 1 for c in doc["checks"].values())
    assert all(c["headline"] for c in doc["checks"].values())


@pytest.mark.slow
def test_quick_probe_rows(quick_run):
    probe = quick_run[0]["checks"]["probe"]
    assert [r[0] for r in probe["rows"]] == ["Adam/train", "Adam/val", "SGD/train", "SGD/val", "all"]
    for row in probe["rows"]:
        median, p95, worst = _pct(row[3]), _pct(row[4]), abs(_pct(row[5]))
        assert 0 <= median <= p95 <= worst + 1e-9 and worst < 25, row  # measured: under 2% on a CPU
        held, total = (int(v) for v in row[7].split("/"))
        assert total > 0 and held <= total
    extra = probe["data"]["extra"]
    assert len(extra) == 4 and all(e["status"] == "ok" for e in extra)  # one never-probed point per optimizer/mode
    model = probe["data"]["model"]
    assert model["device"]["kind"] == "cpu" and model["context_bytes"] > 0 and model["probe_wall_time_s"] > 0


@pytest.mark.slow
def test_quick_cap_rows(quick_run):
    cap = quick_run[0]["checks"]["cap"]
    sized, oversized = cap["rows"]
    assert sized[0] == "sized" and sized[5].startswith("completed") and "failed" not in sized[5]
    assert oversized[0] == "oversized" and oversized[5].startswith("failed") and oversized[6].startswith("oom:")
    data = cap["data"]
    assert data["oversized_oom"] and data["sized_completed"] and data["overlap"]
    assert "RLIMIT_DATA" in data["mechanism"] and data["over_share"] > 1
    assert all(r["error"].startswith("oom: ") for r in data["oversized"]["rows"])
    # the neighbour's numbers are those of the same bundle trained alone, bit for bit
    assert data["max_rel_diff_alone"] == 0


@pytest.mark.slow
def test_quick_trainer_rows(quick_run):
    trainer = quick_run[0]["checks"]["trainer"]
    assert {(r[0], r[1], r[2]) for r in trainer["rows"]} == {
        (w, o, k) for w in (64, 256) for o in ("SGD", "Adam") for k in (1, 4, 16)}
    for width, optimizer, k, groups, fused, one, unfused, plain, vs_unfused, vs_plain, _ in trainer["rows"]:
        assert _positive(fused) and _positive(unfused) and _positive(plain), (width, optimizer, k)
        assert groups >= 1 and (one == "= fused" if groups == 1 else _positive(one))
        assert vs_unfused.endswith("x") and vs_plain.endswith("x")
        if k == 1:
            assert fused == unfused and vs_unfused == "1.00x"


@pytest.mark.slow
def test_quick_grid_eta_star_of_trainer_and_plain_loop_agree(quick_run):
    grid = quick_run[0]["checks"]["grid"]
    data = grid["data"]
    assert [r[0] for r in grid["rows"]] == [1, 4, 16, 64]
    assert data["trainer_s"] > 0 and data["plain_s"] > 0 and data["cut"] is None
    trainer = {r["batch_size"]: r for r in data["eta_star_trainer"]}
    plain = {r["batch_size"]: r for r in data["eta_star_plain"]}
    assert set(trainer) == set(plain) == {1, 4, 16, 64}
    for b in trainer:
        a, p = trainer[b]["log2_eta_star"], plain[b]["log2_eta_star"]
        assert math.isfinite(a) and math.isfinite(p)
        assert abs(a - p) <= data["grid_step_octaves"], b  # within one grid step
    assert all(data["agree_within_one_step"])
    assert len(data["rows_trainer"]) == len(data["rows_plain"]) == 52


@pytest.mark.slow
def test_quick_paths_rows(quick_run):
    paths = quick_run[0]["checks"]["paths"]
    assert [r[0] for r in paths["rows"]] == ["general", "resume", "curvature", "factory", "factory resume",
                                              "find_batch_size"]
    rows = paths["data"]["rows"]
    # the CPU claims hold here bit for bit; on a GPU the same rows say whether they hold there
    assert all(rows[n]["gap"] == 0 for n in ("general", "resume", "curvature", "factory", "factory resume"))
    assert rows["curvature"]["time_ratio"] > 1 and rows["factory"]["fused_rate"] > 0
    fbs = rows["find_batch_size"]
    assert fbs["need_bytes"] <= 512 * 2**20 and 2 * fbs["batch_size"] in fbs["sizes_tried"]
    assert paths["data"]["passed"] and all(r[4] == "yes" for r in paths["rows"])


@pytest.mark.slow
def test_quick_compile_rows(quick_run):
    compile_ = quick_run[0]["checks"]["compile"]
    measured = [r for r in compile_["rows"] if r[3] == "default"]
    assert measured
    for r in measured:  # a compiled rate, or the compiler's failure named in the note
        assert (_positive(r[5]) and _positive(r[6])) or r[8].startswith("compile failed"), r
    assert any(r[3] == "reduce-overhead" and "not applicable on CPU" in r[8] for r in compile_["rows"])


def test_no_cuda_without_cpu_flag_is_refused(tmp_path):
    """Without CUDA the script refuses to pretend: a one-line error and exit 2, unless --cpu is given."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--cpu" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "gpu_check.json").exists()
