"""--storage as a local path, a file:// URI or an object store (s3:// against a moto server on 127.0.0.1): parsing,
atomic writes, the multi-node refusal, the Parquet writer and the launcher end to end, and Tune's experiment folder
on S3. The S3 tests skip, saying so, when moto is not installed (pip install "moto[server]")."""

from __future__ import annotations

import contextlib
import io
import os

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from raysweep import driver, launch, storage
from raysweep.results import CURVES, TRIALS, ResultsWriter, read_curves, read_trials, to_table
from raysweep.schema import CURVES_SCHEMA
from raysweep.space import load_spec
from raysweep.storage import Location, StorageError
from tests.support import ROOT


def row(key: str, **extra) -> dict:
    return {"config_key": key, "batch_size": 8, "eta": 0.5, "status": "completed", "steps": 10, **extra}


def small_space(path, name: str, etas=(0.25, 0.5)):
    spec = {
        "name": name,
        "experiment": {"family": "poly_online", "dim": 8, "n_train": 256, "steps": 40, "report_every": 20},
        "space": {"batch_size": [16], "eta": list(etas), "width": 16, "depth": 3},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


# ------------------------------------------------------------------------------------------------ parsing


def test_paths_and_file_uris_are_local_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = storage.resolve("results")
    assert rel.is_posix and rel.path == str(tmp_path / "results") and rel.uri == rel.path
    uri = storage.resolve(f"file://{tmp_path}/results")
    assert uri.is_posix and uri.path == rel.path and isinstance(uri.fs, pafs.LocalFileSystem)
    assert storage.resolve(tmp_path / "x").join("sweep", "trials").path == str(tmp_path / "x" / "sweep" / "trials")
    assert storage.resolve(rel) is rel
    assert rel.join("s").local_dir == tmp_path / "results" / "s"


def test_bad_storage_uris_name_the_uri_and_the_accepted_forms():
    with pytest.raises(StorageError, match=r"foo://b/p: cannot open it with pyarrow\.fs.*s3://bucket/prefix"):
        storage.resolve("foo://b/p")
    with pytest.raises(StorageError, match="must name a local path"):
        storage.resolve("file://otherhost/data")


def test_object_store_locations_keep_no_query_and_use_a_local_folder_for_posix_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSWEEP_LOCAL_DIR", str(tmp_path / "local"))
    loc = Location(pafs.LocalFileSystem(), "bucket/prefix", "s3://bucket/prefix", "s3").join("sweep")
    assert not loc.is_posix and loc.uri == "s3://bucket/prefix/sweep" and loc.name == "sweep"
    assert loc.local_dir == tmp_path / "local" / "s3" / "bucket" / "prefix" / "sweep"
    with pytest.raises(StorageError, match="not a local path"):
        os.fspath(loc)  # Path(location) of an object store fails loudly instead of making a local "s3:" folder


# ------------------------------------------------------------------------------------------------ multi-node


def test_a_local_path_on_several_nodes_is_refused_naming_both_fixes(tmp_path):
    local = storage.resolve(tmp_path / "r")
    storage.check_cluster(local, 1, shared_storage=False)  # one node: the local disk is the only disk
    storage.check_cluster(local, 3, shared_storage=True)  # the user says it is a shared mount
    storage.check_cluster(Location(local.fs, "b/p", "s3://b/p", "s3"), 3, shared_storage=False)
    with pytest.raises(StorageError) as err:
        storage.check_cluster(local, 2, shared_storage=False, address="head:6379")
    message = str(err.value)
    for needle in (str(tmp_path / "r"), "head:6379 has 2 nodes", "s3://", "gs://", "--shared-storage", "NFS"):
        assert needle in message, (needle, message)


# ------------------------------------------------------------------------------------------------ writing


def test_atomic_write_on_posix_leaves_the_old_file_or_the_new_one(tmp_path):
    target = storage.resolve(tmp_path / "f.bin")
    storage.write_bytes_atomic(target, b"old")

    def broken(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        storage.write_atomic(target, broken)
    assert (tmp_path / "f.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_file_uri_sweep_is_the_same_folder_as_its_path(tmp_path):
    uri = f"file://{tmp_path}/s"
    with ResultsWriter(uri, "s") as w:
        assert w.sweep_dir == tmp_path / "s" and w.local_dir == tmp_path / "s"
        w.add(row("a"), [{"step": 1, "train_loss": 1.0}])
    assert read_trials(uri).equals(read_trials(tmp_path / "s")) and read_curves(uri).num_rows == 1
    with ResultsWriter(tmp_path / "s", "s") as w:  # the lock and the keys are shared whatever the spelling
        assert w.keys == {"a"}
        with pytest.raises(Exception, match="another raysweep process"):
            ResultsWriter(uri, "s")


def test_dry_run_says_where_results_go_and_what_the_storage_guarantees(tmp_path):
    path = small_space(tmp_path / "s.yaml", "dry")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launch.main([str(path), "--storage", f"file://{tmp_path}/r", "--dry-run"]) == 0
    assert f"storage: {tmp_path}/r/dry (a local path: a cluster of more than one node needs --shared-storage" in out.getvalue()
    assert not (tmp_path / "r").exists()


def test_file_uri_end_to_end(ray_cluster, tmp_path, run_cli):
    path = small_space(tmp_path / "s.yaml", "fileuri")
    uri = f"file://{tmp_path}/store"
    proc = run_cli("raysweep.launch", str(path), "--storage", uri, "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    assert f"results in {tmp_path}/store/fileuri" in proc.stdout
    assert read_trials(f"{uri}/fileuri").num_rows == 2 == read_trials(tmp_path / "store" / "fileuri").num_rows
    assert (tmp_path / "store" / "fileuri" / "spec.yaml").exists()


# ------------------------------------------------------------------------------------------------ S3 (moto)


def _objects(location: Location) -> list[str]:
    infos = location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(location.path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_s3_writer_puts_final_names_and_readers_skip_uncommitted_batches(s3, tmp_path):
    sweep = storage.resolve(s3).join("s")
    with ResultsWriter(sweep, "s") as w:
        assert w.location.uri == f"{s3}/s" and w.local_dir == tmp_path / "local" / "s3" / sweep.path
        assert w.add(row("a"), [{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.5}])
        w.flush()
        assert not w.add(row("a"))
    names = _objects(sweep)
    assert len(names) == 2 and not any(n.rsplit("/", 1)[-1].startswith(".") for n in names), names
    assert not any(".lock" in n for n in names)  # no lock on an object store

    # a batch whose curves landed but whose trials file (the commit) never did: invisible to readers
    orphan = sweep.join(CURVES, "part-99999999999999999999-1-00000.parquet")
    with orphan.fs.open_output_stream(orphan.path) as out:
        pq.write_table(to_table([{"config_key": "b", "step": 1}], CURVES_SCHEMA), out)
    assert read_curves(s3 + "/s").num_rows == 2 and read_trials(s3 + "/s").column("config_key").to_pylist() == ["a"]
    with ResultsWriter(s3 + "/s", "s") as w:  # a relaunch: keys from S3; the orphan is left alone (no lock)
        assert w.keys == {"a"} and w.add(row("b"))
    assert sorted(read_trials(sweep).column("config_key").to_pylist()) == ["a", "b"]
    assert len(sweep.join(TRIALS).files(".parquet")) == 2


def test_s3_spec_is_saved_and_a_changed_experiment_refused(s3):
    from raysweep.errors import SpecError

    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    sweep = storage.resolve(s3).join("spec")
    driver.check_saved_spec(sweep, spec)  # nothing saved yet
    driver.save_spec(sweep, spec)
    assert yaml.safe_load(sweep.join("spec.yaml").read_text())["name"] == "quickstart"
    driver.check_saved_spec(sweep, spec)
    import dataclasses

    changed = dataclasses.replace(spec, experiment=dataclasses.replace(spec.experiment, steps=301))
    with pytest.raises(SpecError, match="experiment: differs"):
        driver.check_saved_spec(sweep, changed)


def test_s3_sweep_end_to_end_exactly_once(ray_cluster, s3, s3_server, tmp_path, run_cli):
    path = small_space(tmp_path / "s.yaml", "s3sweep", etas=(0.125, 0.25, 0.5))
    env = {**s3_server, "RAYSWEEP_LOCAL_DIR": str(tmp_path / "local")}
    proc = run_cli("raysweep.launch", str(path), "--storage", s3, "--address", ray_cluster, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"results in {s3}/s3sweep" in proc.stdout
    trials = read_trials(f"{s3}/s3sweep").to_pandas()
    assert sorted(trials.eta) == [0.125, 0.25, 0.5] and trials.config_key.is_unique
    assert set(read_curves(f"{s3}/s3sweep").to_pandas().config_key) == set(trials.config_key)
    assert "spec.yaml" in _objects(storage.resolve(f"{s3}/s3sweep"))
    from raysweep.status import read_status  # the manifest is one PUT there, and the status reads the store

    (status,) = read_status(s3, name="s3sweep")
    assert (status.planned, status.n_landed, status.missing, status.launches) == (3, 3, 0, 1)
    assert status.last_launch["end"] is not None and sum(status.last_launch["counts"].values()) == 3
    proc = run_cli("raysweep.launch", str(path), "--storage", s3, "--address", ray_cluster, env=env)
    assert proc.returncode == 0 and "all 3 configurations already have a row" in proc.stdout, proc.stderr
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launch.main([str(path), "--storage", s3, "--dry-run"]) == 0
    assert "3 configurations, 3 already have a row, 0 to run" in out.getvalue()  # the keys, read from S3
    assert f"storage: {s3}/s3sweep (object store: each file is one atomic PUT; no lock" in out.getvalue()


def test_tune_experiment_folder_on_s3(ray_cluster, s3, tmp_path):
    """What run_tuner passes to Tune (storage.tune_storage): Tune keeps its experiment there, and it is removed."""
    from ray import tune

    sweep = storage.resolve(s3).join("tune")
    where = storage.tune_storage(sweep)
    assert where.filesystem is sweep.fs and where.path.startswith(sweep.join(storage.TUNE_DIR).path + "/")

    def trainable(config):
        tune.report({"x": config["x"]})

    tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([1])},
                       run_config=tune.RunConfig(name="t", storage_path=where.path, storage_filesystem=where.filesystem,
                                                 verbose=0))
    results = tuner.fit()
    assert not results.errors and [r.metrics["x"] for r in results] == [1]
    assert any(n.startswith(f"{storage.TUNE_DIR}/") for n in _objects(sweep))
    where.remove()
    assert not _objects(sweep)

    local = storage.tune_storage(storage.resolve(tmp_path / "local-sweep"))  # POSIX: a plain folder
    assert local.filesystem is None and os.path.isdir(local.path)
    local.remove()
    assert not os.path.exists(local.path)


def test_a_missing_bucket_is_an_error_message_not_a_traceback(s3, tmp_path, capsys):
    path = small_space(tmp_path / "s.yaml", "nobucket")
    assert launch.main([str(path), "--storage", "s3://no-such-bucket/prefix"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: OSError:") and "no-such-bucket" in err and "Traceback" not in err


def test_s3_snapshots_round_trip_exactly(s3):
    import numpy as np

    from raysweep import snapshots

    sweep = storage.resolve(s3).join("snap")
    rng = np.random.default_rng(1)
    widths = [4, 8, 1]
    theta0 = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(widths[:-1], widths[1:])]
    deltas = {0: [np.zeros_like(w) for w in theta0], 7: [rng.standard_normal(w.shape).astype(np.float32)
                                                          for w in theta0]}
    snapshots.write_init(sweep, 2, widths, "float32", theta0)
    snapshots.write_member(sweep, "k1", seed=2, widths=widths, dtype="float32", point={"seed": 2}, deltas=deltas)
    assert snapshots.member_keys(s3 + "/snap") == ["k1"]
    back = snapshots.read_member(s3 + "/snap", "k1")
    assert back.steps == (0, 7) and all(np.array_equal(a, b) for a, b in zip(theta0, back.theta0))
    assert all(np.array_equal(a, b) for a, b in zip(deltas[7], back.deltas[7]))
    assert sorted(_objects(sweep)) == ["snapshots/k1.safetensors", "snapshots/theta0/2_4x8x1_float32.safetensors"]
