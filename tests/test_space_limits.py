"""Values no column or arithmetic can hold, and specs that would take unbounded work, are refused before anything
runs: exit 2 naming the field, in bounded time and memory. A fuzz test feeds generated hostile specs through the
launcher's validation in one process."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import time
import tracemalloc

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raysweep import limits
from raysweep.errors import SpecError
from raysweep.space import load_spec, parse_spec
from tests.support import ROOT


def spec(experiment=None, **space) -> dict:
    return {
        "name": "x",
        "experiment": {"family": "poly_online", "dim": 8, "steps": 5, **(experiment or {})},
        "space": {"batch_size": 4, "eta": 0.5, "width": 8, **space},
    }


# (spec, the field the message must name, a phrase of the reason)
OUT_OF_RANGE = {
    "seed beyond int64": (spec(seed=[0, 1, 9223372036854775808]), r"space\.seed\[2\]", "2\\*\\*63 - 2"),
    "batch 2^63 from pow2": (spec(batch_size={"pow2": [63, 63]}), r"space\.batch_size\.pow2", "32-bit"),
    "400-digit eta": (spec(eta=10**400), r"space\.eta", "finite number"),
    "pow2 step 5e-324": (spec(eta={"pow2": [0, 1], "step": 5.0e-324}), r"space\.eta\.pow2", "at most 100000"),
    "gamma 1e-20 in float64": (spec({"dtype": "float64"}, gamma=1e-20), r"space\.gamma", "rounds y away"),
    "gamma 1e-300": (spec(gamma=1e-300), r"space\.gamma", "float64"),
    "gamma 1e300 in float64": (spec({"dtype": "float64"}, gamma=1e300), r"space\.gamma", "overflows"),
    "eta whose rate overflows": (spec(eta=1e300, width=1024), r"space\.eta", "not a normal float32"),
    "eta whose rate underflows": (spec(eta=1e-300), r"space\.eta", "not a normal float32"),
    "samples_seen beyond int64": (spec({"steps": 2**40}, batch_size=2**31 - 1), r"experiment\.steps", "int64"),
    "depth 10^6": (spec(depth=10**6), r"space\.depth", "1,000"),
    "degree 100": (spec({"degree": 100}), r"experiment\.degree", "float32"),
    "range beyond sys.maxsize": (spec(seed={"range": [0, 2**62]}), r"space\.seed\.range", "at most|1 to"),
    "logspace across float64": (spec(eta={"logspace": [1e-300, 1e300, 5]}), r"space\.eta", "learning rate"),
    "linspace across float64": (spec(gamma={"linspace": [-1.7e308, 1.7e308, 3]}), r"space\.gamma", "> 0"),
    "noise batch beyond 2^31": (spec({"grad_noise_scale": {"batches": 2**20, "batch_size": 2**20}}),
                                r"experiment\.grad_noise_scale", "samples"),
    "10^10 configurations": (spec(eta={"logspace": [1e-3, 1.0, 100000]}, batch_size={"range": [1, 100001]}),
                             r"^space:", "10,000,000,000 configurations"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_values_no_column_or_arithmetic_can_hold_are_refused_naming_the_field(case):
    mapping, field, reason = OUT_OF_RANGE[case]
    with pytest.raises(SpecError) as err:
        parse_spec(mapping)
    message = str(err.value)
    assert re.search(field, message), message
    assert re.search(reason, message), message
    assert "\n" not in message and len(message) < 600


def test_gamma_range_follows_the_dtype_and_keeps_the_shipped_studies():
    # float32: a unit target keeps two digits while eps |a f0| <= 0.01; float64 reaches twelve decades further
    lo32, hi32 = limits.gamma_range("float32", "SP", 64)
    lo64, hi64 = limits.gamma_range("float64", "SP", 64)
    assert lo32 == pytest.approx(2.0**-23 / 1e-2) and lo64 == pytest.approx(2.0**-52 / 1e-2)
    assert lo64 < 1e-12 < lo32 < 1e-4 and hi32 < hi64
    # muP's readout divides by N, so |a f0| ~ 1 / (gamma sqrt N): a wider net takes a smaller gamma
    assert limits.gamma_range("float32", "muP", 128)[0] == pytest.approx(lo32 / 128**0.5)
    # the study's main grid runs gamma = 1e-5 .. 1e5 in float32 at N = 128 under muP: inside the range
    main = load_spec(ROOT / "search_spaces" / "study_main_grid.yaml")
    assert min(main.space.gamma) == 1e-5 and max(main.space.gamma) == 1e5
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        load_spec(path)  # every shipped space passes the limits


def test_a_point_count_beyond_the_limit_is_refused_without_building_the_points():
    started = time.process_time()
    with pytest.raises(SpecError, match="10,000,000,000 configurations"):
        parse_spec(spec(eta={"logspace": [1e-3, 1.0, 100000]}, batch_size={"range": [1, 100001]}))
    assert time.process_time() - started < 2.0
    random = spec(eta={"logspace": [1e-3, 1.0, 100000]}, batch_size={"range": [1, 100001]})
    random["search"] = {"algorithm": "random", "n_samples": 50}
    assert parse_spec(random).n_points() == 50  # a random search draws from any product
    random["search"]["n_samples"] = limits.MAX_POINTS + 1
    with pytest.raises(SpecError, match="search.n_samples"):
        parse_spec(random)


ALIAS_BOMB = (
    'name: bomb\ndescription: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"k{i}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8))
    + "experiment: {family: poly_online, steps: 5}\nspace: {batch_size: 1, eta: 1, width: 8}\n"
)


def test_unbounded_inputs_fail_fast_with_a_bounded_message(tmp_path):
    """An alias bomb (~550 bytes that expand to 10^8 values), a file over the size limit, and a product of axes of
    10^10 points through --dry-run: exit 2, one line each, in bounded CPU time and memory."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 700
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * (limits.MAX_SPEC_BYTES + 10) + "\n")
    product = tmp_path / "product.yaml"
    product.write_text(yaml.safe_dump(spec(eta={"logspace": [1e-3, 1.0, 100000]}, batch_size={"range": [1, 100001]})))
    expected = {bomb: "expands to .* values", big: "larger than 1,048,576 bytes", product: "10,000,000,000"}
    # the child reports its own CPU time and peak memory (RUSAGE_CHILDREN would hold every earlier child's peak)
    script = (
        "import resource, sys, raysweep.launch as L\n"
        "rc = L.main([sys.argv[1], '--dry-run', '--storage', sys.argv[2]])\n"
        "u = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(rc, u.ru_utime + u.ru_stime, u.ru_maxrss)\n"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("")

    def launch_child(path):
        proc = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "r")], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        rc, cpu_s, maxrss_kib = proc.stdout.split()
        return int(rc), float(cpu_s), int(maxrss_kib), proc.stderr

    baseline_kib = launch_child(empty)[2]  # the interpreter and the launcher's imports
    for path, pattern in expected.items():
        rc, cpu_s, maxrss_kib, stderr = launch_child(path)
        assert rc == 2, (path.name, stderr[-2000:])
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(pattern, lines[0]), (path.name, lines)
        assert cpu_s < 2.0
        assert maxrss_kib - baseline_kib < 50 * 1024, (path.name, maxrss_kib, baseline_kib)  # nothing expanded
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------------- fuzz

_EXTREME = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 10**400, 1.0e-320, 5e-324, 1e308, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.sampled_from(["auto", "muP", "SGD", "xent", "float64", "", "x" * 5000, "\u00e9\u4e2d"]),
)
_RANGE = st.one_of(
    st.fixed_dictionaries({"pow2": st.lists(_EXTREME, min_size=0, max_size=3)}),
    st.fixed_dictionaries({"pow2": st.tuples(st.integers(-1100, 1100), st.integers(-1100, 1100))},
                          optional={"step": _EXTREME}),
    st.fixed_dictionaries({"logspace": st.lists(_EXTREME, min_size=3, max_size=3)}),
    st.fixed_dictionaries({"linspace": st.lists(_EXTREME, min_size=3, max_size=3)}),
    st.fixed_dictionaries({"range": st.lists(_EXTREME, min_size=2, max_size=3)}),
)
_VALUE = st.one_of(_EXTREME, _RANGE, st.lists(_EXTREME, max_size=5), st.dictionaries(st.text(max_size=8), _EXTREME,
                                                                                        max_size=3))
_FIELDS = [
    ("space", "batch_size"), ("space", "eta"), ("space", "width"), ("space", "gamma"), ("space", "depth"),
    ("space", "seed"), ("space", "parametrization"), ("space", "optimizer"), ("space", "loss"), ("space", "lr_rule"),
    ("experiment", "steps"), ("experiment", "epochs"), ("experiment", "report_every"), ("experiment", "dim"),
    ("experiment", "n_train"), ("experiment", "degree"), ("experiment", "noise"), ("experiment", "dtype"),
    ("experiment", "divergence_factor"), ("experiment", "data_seed"), ("experiment", "eval_samples"),
    ("experiment", "grad_noise_scale"), ("experiment", "family"), ("experiment", "path"),
    ("search", "algorithm"), ("search", "n_samples"), ("search", "n_trials"), ("search", "seed"),
    ("search", "max_concurrent"), ("search", "scheduler"), ("fusion", "max_members"), ("fusion", "enabled"),
    ("resources", "cpus_per_trial"), ("resources", "gpus_per_trial"), ("autobatch", "max_batch_size"),
    ("autobatch", "steps_per_trial"), ("autobatch", "modes"), ("", "name"), ("", "description"), ("", "spaces"),
]


def _mutated(changes) -> str:
    base = {
        "name": "fuzz",
        "experiment": {"family": "poly_online", "dim": 8, "n_train": 64, "steps": 20, "report_every": 10},
        "space": {"batch_size": [4, 8], "eta": {"pow2": [-3, 0]}, "width": [8, 16], "seed": [0, 1]},
    }
    for (section, key), value in changes:
        if section:
            target = base.setdefault(section, {})
            if not isinstance(target, dict):
                continue
            target[key] = value
        else:
            base[key] = value
    return yaml.safe_dump(base, allow_unicode=True)


_TEXT = st.one_of(
    st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUE), min_size=1, max_size=3).map(_mutated),
    st.just(ALIAS_BOMB),
    st.text(max_size=200),  # not YAML, or YAML of anything
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


@pytest.fixture(scope="module")
def warm_launcher(tmp_path_factory):
    """One valid dry run first: the imports a dry run makes once per process (torch, Ray Tune) are not per spec."""
    from raysweep import launch

    path = tmp_path_factory.mktemp("warm") / "ok.yaml"
    path.write_text(_mutated([]))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert launch.main([str(path), "--dry-run", "--storage", str(path.parent / "r")]) == 0
    return launch


@settings(max_examples=220, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_generated_hostile_specs_exit_0_or_2_in_bounded_time_and_memory(warm_launcher, tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = warm_launcher.main([str(path), "--dry-run", "--storage", str(tmp_path / "r")])
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert rc in (0, 2), (rc, err.getvalue()[-2000:], text[:500])
    if rc == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 2000, lines[:3]
    assert elapsed < 2.0, (elapsed, text[:300])
    assert peak < 200 * 2**20, (peak, text[:300])
    assert not (tmp_path / "r").exists() or rc == 0


def test_the_fuzz_corpus_reaches_both_outcomes(warm_launcher, tmp_path):
    """The generator is not trivially rejecting everything: a sample of it holds valid specs and invalid ones."""
    outcomes = set()
    for i, text in enumerate([_mutated([]), _mutated([(("space", "eta"), {"pow2": [-2, 1], "step": 0.5})]),
                              _mutated([(("space", "seed"), 2**63)]), ALIAS_BOMB]):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(text)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            outcomes.add(warm_launcher.main([str(path), "--dry-run", "--storage", str(tmp_path / "r")]))
    assert outcomes == {0, 2}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_the_gamma_range_is_where_the_centred_target_keeps_y(dtype, parametrization):
    """The trainer's target is t = a f0 + y (raysweep.train); y comes back as t - a f0 to about the documented
    resolution at the lowest gamma of the range, and is lost four decades below it."""
    import torch

    from raysweep import model

    torch_dtype = getattr(torch, dtype)
    width = 64
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(torch_dtype)
    y = torch.randn(512, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(torch_dtype)
    weights = model.init_weights(model.layer_widths(16, width, 3, 1), [3], dtype=torch_dtype)
    raw = model.forward_cached(weights, x, keep=False)[0]
    lowest = limits.gamma_range(dtype, parametrization, width)[0]

    def error(gamma: float) -> float:
        a = model.readout_multiplier(width, torch.tensor([gamma], dtype=torch_dtype), parametrization)
        f0 = raw * a
        recovered = (f0 + y) - f0
        return float((recovered - y).abs().max())

    assert error(lowest) <= 5 * limits.TARGET_RESOLUTION  # the worst of 512 samples: a few times the typical
    assert error(lowest * 1e-4) > 0.3  # y (of order one) is drowned
    with pytest.raises(SpecError, match="space.gamma"):
        parse_spec(spec({"dtype": dtype}, gamma=lowest * 1e-4, width=width, parametrization=parametrization))
    parse_spec(spec({"dtype": dtype}, gamma=lowest * 1.01, width=width, parametrization=parametrization))


def test_out_of_range_specs_exit_2_through_the_launcher_without_ray(tmp_path):
    paths = {}
    for i, (label, (mapping, _, _)) in enumerate(OUT_OF_RANGE.items()):
        paths[label] = tmp_path / f"case{i}.yaml"
        paths[label].write_text(yaml.safe_dump(mapping))
    script = (
        "import contextlib, io, json, sys, raysweep.launch as L\n"
        "out = {}\n"
        "for label, path in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = L.main([path, '--storage', sys.argv[2]])\n"
        "    out[label] = [rc, err.getvalue()]\n"
        "print(json.dumps({'results': out, 'ray': 'ray' in sys.modules}))\n"
    )
    import json

    proc = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in paths.items()}),
                           str(tmp_path / "results")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ray"] is False
    for label, (_, field, _) in OUT_OF_RANGE.items():
        rc, message = report["results"][label]
        assert rc == 2 and message.count("\n") == 1 and re.search(field, message.removeprefix("error: ")), \
            (label, message)
    assert not (tmp_path / "results").exists()
