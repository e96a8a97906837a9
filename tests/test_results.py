"""The Parquet writer: typed columns, atomic files, exactly one row per key, recovery after a crash."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from raysweep.errors import RaysweepError
from raysweep.results import CURVES, TRIALS, ResultsWriter, read_curves, read_trials, to_table
from raysweep.schema import TRIALS_SCHEMA


def row(key: str, **extra) -> dict:
    return {"config_key": key, "batch_size": 8, "eta": 0.5, "status": "completed", "steps": 10, **extra}


def test_rows_land_typed_with_their_curves(tmp_path):
    with ResultsWriter(tmp_path, "s") as w:
        assert w.add(row("a"), [{"step": 5, "train_loss": 1.0}, {"step": 10, "train_loss": 0.5}])
    trials, curves = read_trials(tmp_path), read_curves(tmp_path)
    assert trials.schema == TRIALS_SCHEMA and trials.num_rows == 1
    assert trials.column("sweep").to_pylist() == ["s"] and trials.column("eta").type == "double"
    assert curves.column("step").to_pylist() == [5, 10] and set(curves.column("config_key").to_pylist()) == {"a"}


def test_unknown_column_is_an_error():
    with pytest.raises(ValueError, match="not in the schema"):
        to_table([{"config_key": "a", "etaa": 1.0}], TRIALS_SCHEMA)


def test_a_key_gets_one_row_within_and_across_writers(tmp_path):
    with ResultsWriter(tmp_path, "s") as w:
        assert w.add(row("a"))
        assert not w.add(row("a", eta=9.0))
        w.flush()
        assert not w.add(row("a"))
    with ResultsWriter(tmp_path, "s") as w:
        assert w.keys == {"a"}
        assert not w.add(row("a"))
        assert w.add(row("b"))
    assert sorted(read_trials(tmp_path).column("config_key").to_pylist()) == ["a", "b"]


def test_rows_are_batched_into_few_files(tmp_path):
    with ResultsWriter(tmp_path, "s", flush_every_s=3600) as w:
        for i in range(500):
            w.add(row(f"k{i}"), [{"step": 1, "train_loss": 1.0}])
            w.maybe_flush()
    assert len(list((tmp_path / TRIALS).glob("*.parquet"))) == 1
    assert read_trials(tmp_path).num_rows == 500 and read_curves(tmp_path).num_rows == 500


def test_a_crash_between_the_two_renames_leaves_no_visible_orphan_after_restart(tmp_path):
    with ResultsWriter(tmp_path, "s") as w:
        w.add(row("a"), [{"step": 1, "train_loss": 1.0}])
    # simulate a batch whose curves landed but whose trials file (the commit) never did, plus a stray temp file
    orphan = tmp_path / CURVES / "part-99999999999999999999-1-00000.parquet"
    pq.write_table(to_table([{"config_key": "b", "step": 1}], read_curves(tmp_path).schema), orphan)
    (tmp_path / TRIALS / ".part-x.parquet.tmp").write_bytes(b"partial")
    assert read_curves(tmp_path).num_rows == 1  # readers ignore the uncommitted batch
    with ResultsWriter(tmp_path, "s") as w:
        assert w.keys == {"a"}
    assert not orphan.exists() and not list((tmp_path / TRIALS).glob(".*"))


def test_a_second_writer_on_the_same_sweep_is_refused(tmp_path):
    with ResultsWriter(tmp_path, "s"):
        with pytest.raises(RaysweepError, match="another raysweep process"):
            ResultsWriter(tmp_path, "s")
    ResultsWriter(tmp_path, "s").close()  # the lock is released on close


def test_readers_never_see_a_partial_file_while_writing(tmp_path):
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                read_trials(tmp_path)
                read_curves(tmp_path)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    with ResultsWriter(tmp_path, "s") as w:
        for i in range(200):
            w.add(row(f"k{i}"), [{"step": s, "train_loss": 1.0} for s in range(20)])
            w.flush()
    stop.set()
    thread.join()
    assert not errors, errors[:3]
    assert read_trials(tmp_path).num_rows == 200


# ------------------------------------------------------------------------------------ hostile and broken files
def test_retry_failed_removes_only_failures_outside_the_configuration_with_their_curves(tmp_path):
    from raysweep.results import retry_failed, retryable

    with ResultsWriter(tmp_path, "s") as w:
        w.add(row("ok"), [{"step": 1, "train_loss": 1.0}])
        w.add(row("lost", status="failed", error="trial lost: the worker died"), [{"step": 1, "train_loss": 2.0}])
        w.add(row("bad", status="failed", error="InfeasibleError: batch_size 128 is larger than the training set"))
        w.flush()
        w.add(row("oom", status="failed", error="oom: OutOfMemoryError: CUDA out of memory"))
        w.add(row("full", status="failed", error="infeasible: needs 9 GiB, budget 4 GiB"))
    assert [retryable({"status": "failed", "error": e}) for e in ("DataError: x", "infeasible: x", None)] == \
        [True, False, True]
    assert not retryable({"status": "diverged", "error": None})
    assert retry_failed(tmp_path) == {"lost", "oom"}
    trials = read_trials(tmp_path).to_pandas()
    assert sorted(trials.config_key) == ["bad", "full", "ok"]
    assert sorted(read_curves(tmp_path).to_pandas().config_key) == ["ok"]  # the retried row's curves went with it
    assert len(list((tmp_path / TRIALS).glob("*.parquet"))) == 2  # a file left with no row is gone, not empty
    assert retry_failed(tmp_path) == set()
    with ResultsWriter(tmp_path, "s") as w:
        assert w.keys == {"bad", "full", "ok"} and w.add(row("lost"))


def test_corrupt_and_foreign_files_are_named_and_quarantine_moves_them_with_their_batch(tmp_path):
    import pandas as pd

    from raysweep.errors import CorruptFileError
    from raysweep.results import corrupt_files, quarantine

    with ResultsWriter(tmp_path, "s") as w:
        w.add(row("a"), [{"step": 1, "train_loss": 1.0}])
        w.flush()
        w.add(row("b"), [{"step": 1, "train_loss": 1.0}])
    first = sorted((tmp_path / TRIALS).glob("*.parquet"))[0]
    first.write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptFileError, match="not a readable Parquet file") as err:
        read_trials(tmp_path)
    assert err.value.path == str(first) and "--quarantine" in str(err.value)
    # a curves file written by another tool with compatible kinds (large_string, int32) reads fine
    pd.DataFrame({"config_key": ["b"], "step": pd.array([2], dtype="int32")}).to_parquet(
        tmp_path / CURVES / "part-z.parquet")
    found = corrupt_files(tmp_path)
    assert [p.name for p, _ in found] == [first.name] and found[0][1].startswith("not a readable Parquet file")
    assert quarantine(tmp_path) == [f"{CURVES}/{first.name}", f"{TRIALS}/{first.name}"]
    assert (tmp_path / "quarantine" / TRIALS / first.name).exists()
    assert read_trials(tmp_path).column("config_key").to_pylist() == ["b"]
    assert corrupt_files(tmp_path) == []


def test_a_storage_root_is_not_read_as_an_empty_sweep(tmp_path):
    from raysweep.errors import NotASweepError

    for name in ("a", "b"):
        with ResultsWriter(tmp_path / name, name) as w:
            w.add(row("k"))
    with pytest.raises(NotASweepError, match=r"storage root holding the sweeps a, b"):
        read_trials(tmp_path)
    with pytest.raises(NotASweepError):
        read_curves(tmp_path)
    assert read_trials(tmp_path / "missing").num_rows == 0  # a sweep not started yet reads as empty
    assert read_trials(tmp_path / "a").num_rows == 1
