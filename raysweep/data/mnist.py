"""MNIST and MNIST-1M from local files (never downloaded): IDX or .npz readers, a small decode cache, the families.

Every family here: ``x = pixels / 255`` flattened to 784 features, labels 0..9, classification with 10 outputs.
Decoded arrays (uint8 ``[n, 784]`` images, int64 labels) are cached per process, keyed by (resolved path,
mtime, size) of every file read, for the last `CACHE_SIZE` sources: a second trial in the same worker does not
re-parse. Tensors are built per call; cached arrays are never handed out.
"""

from __future__ import annotations

import gzip
import struct
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from raysweep import families
from raysweep.data._base import Options, Task, eval_indices, stratified_choice, to_tensor_labels, to_tensor_x
from raysweep.errors import DataError
from raysweep.seeds import derive_seed

N_PIXELS = 784
CACHE_SIZE = 4
IDX_FILES = {  # key -> (standard name, IDX ndim)
    "x_train": ("train-images-idx3-ubyte", 3),
    "y_train": ("train-labels-idx1-ubyte", 1),
    "x_test": ("t10k-images-idx3-ubyte", 3),
    "y_test": ("t10k-labels-idx1-ubyte", 1),
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_LAYOUT = ("an .npz with x_train, y_train, x_test, y_test (uint8 images [n, 28, 28] or [n, 784], "
              "integer labels 0..9)")
MNIST_LAYOUT = ("expected the four IDX files of MNIST (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz), or {NPZ_LAYOUT}")
MNIST1M_LAYOUT = (f"expected {NPZ_LAYOUT}, as written by `python -m raysweep.data.mnist1m SRC_DIR OUT.npz`, "
                  "or a folder holding mnist1m.npz")


class Arrays(NamedTuple):
    """Decoded images (uint8 ``[n, 784]``) and labels (int64 ``[n]``) of a train/test pair."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


_cache: OrderedDict[tuple, Arrays] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded data set (frees their memory)."""
    with _cache_lock:
        _cache.clear()


def _cached(files: list[Path], load: Callable[[], Arrays]) -> Arrays:
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        arrays = load()
        _cache[key] = arrays
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return arrays


def read_idx(path: Path, ndim: int, family: str = "mnist") -> np.ndarray:
    """One IDX file of unsigned bytes (gzip-compressed when its name ends in .gz) as a uint8 array.

    The rule: magic ``00 00 08 <ndim>``, then ``ndim`` big-endian uint32 sizes, then exactly their product of bytes.
    Anything else (bad magic, wrong ndim, truncated or trailing data, broken gzip) raises DataError.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{family}: cannot read {path}: {exc}; {MNIST_LAYOUT}") from exc
    magic = bytes([0, 0, 8, ndim])
    if data[:4] != magic:
        raise DataError(f"{family}: {path} is not an IDX file of {ndim}-d unsigned bytes: magic number "
                        f"{data[:4].hex() or '(empty file)'}, expected {magic.hex()}; {MNIST_LAYOUT}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{family}: {path} is truncated inside its header ({len(data)} bytes); {MNIST_LAYOUT}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"{family}: {path} is truncated or has trailing bytes: its header says {dims} "
                        f"({int(np.prod(dims))} bytes of data), the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _checked(family: str, source: Path, raw: dict[str, np.ndarray], layout: str) -> Arrays:
    """Flatten images to uint8 ``[n, 784]`` and labels to int64 ``[n]``, or DataError saying what is wrong."""
    out = {}
    for part in ("train", "test"):
        x, y = raw[f"x_{part}"], raw[f"y_{part}"]
        where = f"{family}: {source}: x_{part}"
        if x.ndim not in (2, 3) or int(np.prod(x.shape[1:])) != N_PIXELS or x.shape[0] == 0:
            raise DataError(f"{where} must be [n, 28, 28] or [n, 784] with n >= 1, got {list(x.shape)}; {layout}")
        if x.dtype != np.uint8:
            if x.dtype.kind not in "iu" or x.min() < 0 or x.max() > 255:
                raise DataError(f"{where} must hold uint8 pixels 0..255, got {x.dtype}; {layout}")
            x = x.astype(np.uint8)
        if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "iu":
            raise DataError(f"{family}: {source}: y_{part} must be {x.shape[0]} integer labels (one per image), "
                            f"got {y.dtype} {list(y.shape)}; {layout}")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{family}: {source}: y_{part} labels must be in 0..9, got {y.min()}..{y.max()}")
        out[f"x_{part}"] = x.reshape(x.shape[0], N_PIXELS)
        out[f"y_{part}"] = y.astype(np.int64)
    return Arrays(**out)


def _read_npz(family: str, path: Path, layout: str) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{family}: {path} lacks {', '.join(missing)} (holds {', '.join(z.files) or 'nothing'})"
                                f"; {layout}")
            raw = {k: z[k] for k in NPZ_KEYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{family}: cannot read {path} as .npz: {exc}; {layout}") from exc
    return _checked(family, path, raw, layout)


def _idx_file(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``folder``, also with the ``.idx`` spelling of some mirrors."""
    for stem in (name, name.replace("-idx", ".idx")):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def load_mnist(path: str | Path) -> Arrays:
    """MNIST's arrays from ``path``: a folder with the four IDX files (each optionally .gz; tried first), an .npz
    file, or a folder holding ``mnist.npz``. Cached (see module docstring)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix != ".npz":
            raise DataError(f"mnist: {path} is a file but not an .npz; give its folder instead; {MNIST_LAYOUT}")
        return _cached([path], lambda: _read_npz("mnist", path, MNIST_LAYOUT))
    if not path.is_dir():
        raise DataError(f"mnist: no file or folder {path}; {MNIST_LAYOUT}")
    found = {key: _idx_file(path, name) for key, (name, _) in IDX_FILES.items()}
    if all(found.values()):
        files = [found[k] for k in IDX_FILES]
        return _cached(files, lambda: _checked("mnist", path, {
            key: read_idx(found[key], ndim) for key, (_, ndim) in IDX_FILES.items()}, MNIST_LAYOUT))
    if (path / "mnist.npz").is_file():
        return load_mnist(path / "mnist.npz")
    missing = next(name for key, (name, _) in IDX_FILES.items() if found[key] is None)
    others = " (the other IDX files are there)" if any(found.values()) else f" or {path / 'mnist.npz'}"
    raise DataError(f"mnist: no file {path / missing}[.gz]{others}; {MNIST_LAYOUT}")


def load_mnist1m(path: str | Path, family: str = "mnist1m") -> Arrays:
    """MNIST-1M's arrays from an .npz file, or a folder holding ``mnist1m.npz``. Cached (see module docstring)."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "mnist1m.npz").is_file():
        path = path / "mnist1m.npz"
    if not path.is_file():
        raise DataError(f"{family}: no file {path}; {MNIST1M_LAYOUT}")
    return _cached([path], lambda: _read_npz(family, path, MNIST1M_LAYOUT))


# ------------------------------------------------------------------------------------- checked on the driver
def check_experiment_source(experiment) -> int:
    """:func:`check_source` of a flat experiment mapping (``family``, ``path``, ``max_train_samples``)."""
    return check_source(experiment["family"], experiment["path"], experiment.get("max_train_samples"))


def check_source(family: str, path: str | Path, max_train_samples: int | None = None) -> int:
    """Check the files of an MNIST family without decoding the images (what the launcher does before any trial
    starts): the file or folder exists and is readable, holds the four arrays with matching ``[n, 28, 28]`` /
    ``[n, 784]`` images and ``[n]`` labels in 0..9, and ``max_train_samples`` fits its training set. Returns the
    training-set size; DataError saying what is wrong otherwise. Image files are read as far as their headers
    (and sized); labels are read whole (they are small)."""
    layout = MNIST_LAYOUT if family == "mnist" else MNIST1M_LAYOUT
    path = Path(path).expanduser()
    if family == "mnist" and path.is_dir():
        found = {key: _idx_file(path, name) for key, (name, _) in IDX_FILES.items()}
        if all(found.values()):
            shapes = {key: _idx_shape(found[key], ndim) for key, (_, ndim) in IDX_FILES.items()}
            labels = {key: read_idx(found[key], 1) for key in ("y_train", "y_test")}
            return _check_shapes(family, path, shapes, labels, layout, max_train_samples)
        if not (path / "mnist.npz").is_file():
            load_mnist(path)  # raises the DataError naming the missing file
        path = path / "mnist.npz"
    elif family != "mnist" and path.is_dir() and (path / "mnist1m.npz").is_file():
        path = path / "mnist1m.npz"
    if not path.is_file():
        raise DataError(f"{family}: no file {path}; {layout}")
    if path.suffix != ".npz":
        raise DataError(f"{family}: {path} is a file but not an .npz; {layout}")
    try:
        with zipfile.ZipFile(path) as z:
            members = {name.removesuffix(".npy"): name for name in z.namelist()}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise DataError(f"{family}: {path} lacks {', '.join(missing)} (holds "
                                f"{', '.join(members) or 'nothing'}); {layout}")
            shapes = {}
            for key in ("x_train", "x_test"):
                with z.open(members[key]) as fh:
                    shapes[key] = _npy_header(fh)
        with np.load(path, allow_pickle=False) as npz:
            labels = {key: npz[key] for key in ("y_train", "y_test")}
            for key, header in shapes.items():
                if header is None:  # a .npy format version without a public header reader: read the array
                    shapes[key] = (npz[key].shape, npz[key].dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{family}: cannot read {path} as .npz: {exc}; {layout}") from exc
    shapes.update({key: (labels[key].shape, labels[key].dtype) for key in labels})
    return _check_shapes(family, path, shapes, labels, layout, max_train_samples)


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` from the header of a .npy stream, or None for a format version numpy reads only whole."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    reader = readers.get(np.lib.format.read_magic(fh))
    if reader is None:
        return None
    shape, _, dtype = reader(fh)
    return tuple(shape), dtype


def _idx_shape(path: Path, ndim: int) -> tuple[tuple[int, ...], np.dtype]:
    """The dims an IDX file's header gives (uint8 data), with its length checked when it is not compressed."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"mnist: cannot read {path}: {exc}; {MNIST_LAYOUT}") from exc
    magic = bytes([0, 0, 8, ndim])
    if head[:4] != magic or len(head) < 4 + 4 * ndim:
        raise DataError(f"mnist: {path} is not an IDX file of {ndim}-d unsigned bytes; {MNIST_LAYOUT}")
    dims = struct.unpack(f">{ndim}I", head[4:])
    if path.suffix != ".gz" and path.stat().st_size != len(head) + int(np.prod(dims)):
        raise DataError(f"mnist: {path} is truncated or has trailing bytes: its header says {dims}")
    return dims, np.dtype(np.uint8)


def _check_shapes(family: str, source: Path, shapes: dict, labels: dict, layout: str,
                  max_train_samples: int | None) -> int:
    """The rules of :func:`_checked`, on shapes and dtypes (images) and arrays (labels)."""
    for part in ("train", "test"):
        (xs, xt), y = shapes[f"x_{part}"], labels[f"y_{part}"]
        if len(xs) not in (2, 3) or int(np.prod(xs[1:])) != N_PIXELS or xs[0] == 0:
            raise DataError(f"{family}: {source}: x_{part} must be [n, 28, 28] or [n, 784] with n >= 1, got "
                            f"{list(xs)}; {layout}")
        if np.dtype(xt).kind not in "iu":
            raise DataError(f"{family}: {source}: x_{part} must hold uint8 pixels 0..255, got {xt}; {layout}")
        if y.ndim != 1 or y.shape[0] != xs[0] or y.dtype.kind not in "iu":
            raise DataError(f"{family}: {source}: y_{part} must be {xs[0]} integer labels (one per image), got "
                            f"{y.dtype} {list(y.shape)}; {layout}")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{family}: {source}: y_{part} labels must be in 0..9, got {y.min()}..{y.max()}")
    n_train = int(shapes["x_train"][0][0])
    if max_train_samples is not None and max_train_samples > n_train:
        raise DataError(f"{family}: max_train_samples must be <= {n_train} (the training set of {source}), got "
                        f"{max_train_samples}")
    return n_train


def _task(label: str, arrays: Arrays, train: np.ndarray | None, opts: Options, seed: int, device, dtype) -> Task:
    n_eval = opts.optional_int("eval_samples", families.get(opts.family).eval_default)
    ev = eval_indices(arrays.y_test, n_eval, seed)
    x_train, y_train = (arrays.x_train, arrays.y_train) if train is None else (
        arrays.x_train[train], arrays.y_train[train])
    return Task(
        dataset=label, kind="classification", dim=N_PIXELS, n_out=10,
        x_eval=to_tensor_x(arrays.x_test[ev], device, dtype), y_eval=to_tensor_labels(arrays.y_test[ev], device),
        x_train=to_tensor_x(x_train, device, dtype), y_train=to_tensor_labels(y_train, device),
        params={"family": opts.family, "data_seed": seed, **opts.resolved, "n_test": len(arrays.y_test)},
    )


def build_mnist(experiment, *, device="cpu", dtype=torch.float32) -> Task:
    """MNIST from ``path`` (see `load_mnist`). Train: the whole training set, file order. Eval: the test set,
    capped by ``eval_samples`` (default 10,000) as in `eval_indices`. Label: ``mnist``."""
    opts = Options(experiment, "mnist")
    seed = opts.seed()
    return _task("mnist", load_mnist(opts.path()), None, opts, seed, device, dtype)


def build_mnist1m(experiment, *, sampled: bool = False, device="cpu", dtype=torch.float32) -> Task:
    """MNIST-1M from ``path`` (see `load_mnist1m`). Eval: as for mnist. Label ``mnist1m``.

    ``mnist1m_sampled`` (``sampled=True``): the training set is ``stratified_choice(y_train, max_train_samples,
    derive_seed(data_seed, "subset"))`` (file order kept); label ``mnist1m[<max_train_samples>]``.
    """
    family = "mnist1m_sampled" if sampled else "mnist1m"
    opts = Options(experiment, family)
    seed = opts.seed()
    path = opts.path()
    m = opts.int("max_train_samples", required=True) if sampled else None
    arrays = load_mnist1m(path, family)
    train = None
    if m is not None:
        if m > len(arrays.y_train):
            raise DataError(f"experiment.max_train_samples: must be <= {len(arrays.y_train)} (the training set of "
                            f"{path}), got {m} (family {family})")
        train = stratified_choice(arrays.y_train, m, derive_seed(seed, "subset"))
    label = f"mnist1m[{m}]" if sampled else "mnist1m"
    return _task(label, arrays, train, opts, seed, device, dtype)
