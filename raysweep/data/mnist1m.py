"""Build the MNIST-1M .npz from its raw per-class image zips (the one file-writing job of `raysweep.data`).

    python -m raysweep.data.mnist1m SRC_DIR OUT.npz [--test-size 50000] [--seed 0]

Input rule: every ``*.zip`` directly in SRC_DIR is one class. Its name (without .zip), split on anything that
is not a letter or a digit, must have exactly one token that is a single digit 0-9: that digit is the class
(``3.zip``, ``class_3.zip``, ``3_images.zip``, ``mnist1m-3.zip``). Two zips of one class, or a zip no class can
be read from, is an error. Inside a zip, every .png/.jpg/.jpeg/.bmp/.gif/.tif/.tiff member at any depth is an
image (``__MACOSX/`` and dot-files skipped), read in sorted name order; each becomes grayscale
(PIL ``convert("L")``) and, if not 28x28, is resized to 28x28 with Lanczos filtering.

Output: an .npz (uncompressed, so loading is fast) with ``x_train``/``x_test`` uint8 ``[n, 28, 28]`` and
``y_train``/``y_test`` int64 ``[n]``. The test set has exactly ``test_size`` images,
``stratified_choice(labels, test_size, derive_seed(seed, "test"))``; both sets are then shuffled with
``np.random.default_rng(derive_seed(seed, "shuffle"))``. The file appears atomically (a dot-prefixed temporary
file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from raysweep.data._base import stratified_choice
from raysweep.errors import DataError
from raysweep.seeds import derive_seed

# PIL is needed only to convert the raw zips, once; reading the .npz never imports it

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
SIDE = 28
LAYOUT = ("expected one zip per class named by its digit (0.zip ... 9.zip, or e.g. class_3.zip, 3_images.zip), "
          "each holding the class's images (png/jpg/bmp, subfolders allowed)")


def class_of(zip_name: str) -> int | None:
    """The class a zip's file name stands for (see the module docstring), or None when it names none or several."""
    tokens = re.split(r"[^0-9A-Za-z]+", Path(zip_name).stem)
    digits = [t for t in tokens if len(t) == 1 and t.isdigit()]
    return int(digits[0]) if len(digits) == 1 else None


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (not name.endswith("/") and not name.startswith("__MACOSX/") and not base.startswith(".")
            and base.lower().endswith(IMAGE_SUFFIXES))


def read_class_zip(path: Path) -> np.ndarray:
    """The images of one class zip as uint8 ``[n, 28, 28]`` (rules in the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if _is_image(n))
            if not names:
                raise DataError(f"mnist1m: {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); {LAYOUT}")
            out = np.empty((len(names), SIDE, SIDE), dtype=np.uint8)
            for i, name in enumerate(names):
                try:
                    with Image.open(io.BytesIO(zf.read(name))) as img:
                        gray = img.convert("L")
                except (UnidentifiedImageError, OSError, ValueError) as exc:
                    raise DataError(f"mnist1m: {path}: cannot decode image {name}: {exc}") from exc
                if gray.size != (SIDE, SIDE):
                    gray = gray.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
                out[i] = np.asarray(gray, dtype=np.uint8)
            return out
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"mnist1m: cannot read {path} as a zip: {exc}; {LAYOUT}") from exc


def find_class_zips(src_dir: Path) -> dict[int, Path]:
    """``{class: zip path}`` for the zips directly in ``src_dir``; DataError when none or a name is unreadable."""
    if not src_dir.is_dir():
        raise DataError(f"mnist1m: no folder {src_dir}; {LAYOUT}")
    zips: dict[int, Path] = {}
    for path in sorted(src_dir.glob("*.zip")):
        digit = class_of(path.name)
        if digit is None:
            raise DataError(f"mnist1m: cannot tell the class of {path}: its name must hold exactly one "
                            f"single-digit token; {LAYOUT}")
        if digit in zips:
            raise DataError(f"mnist1m: two zips for class {digit}: {zips[digit]} and {path}")
        zips[digit] = path
    if not zips:
        raise DataError(f"mnist1m: no class zips in {src_dir}; {LAYOUT}")
    return dict(sorted(zips.items()))


def convert_mnist1m(src_dir: str | Path, out_npz: str | Path, *, test_size: int = 50_000, seed: int = 0) -> Path:
    """Convert the class zips in ``src_dir`` into ``out_npz`` (rules in the module docstring); returns its path.

    ``test_size`` must be in ``[1, n_images - 1]``. Classes absent from ``src_dir`` are simply absent from the data.
    """
    src_dir, out_npz = Path(src_dir).expanduser(), Path(out_npz).expanduser()
    zips = find_class_zips(src_dir)
    images = [read_class_zip(path) for path in zips.values()]
    x = np.concatenate(images)
    y = np.concatenate([np.full(len(imgs), digit, dtype=np.int64) for digit, imgs in zip(zips, images)])
    del images
    if not 1 <= test_size < len(y):
        raise DataError(f"mnist1m: test_size must be in [1, {len(y) - 1}] for the {len(y)} images in {src_dir}, "
                        f"got {test_size}")
    test = stratified_choice(y, test_size, derive_seed(seed, "test"))
    train = np.setdiff1d(np.arange(len(y)), test)
    rng = np.random.default_rng(derive_seed(seed, "shuffle"))
    train, test = rng.permutation(train), rng.permutation(test)

    out_npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_npz.with_name(f".{out_npz.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez(f, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_npz)
    finally:
        tmp.unlink(missing_ok=True)
    return out_npz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysweep.data.mnist1m",
                                     description="Build the MNIST-1M .npz from its per-class image zips.")
    parser.add_argument("src_dir", help="folder with one zip per class (0.zip ... 9.zip)")
    parser.add_argument("out_npz", help="the .npz to write")
    parser.add_argument("--test-size", type=int, default=50_000, help="images in the test set (default 50000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the shuffle (default 0)")
    args = parser.parse_args(argv)
    try:
        out = convert_mnist1m(args.src_dir, args.out_npz, test_size=args.test_size, seed=args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with np.load(out) as z:
        n_train, n_test = len(z["y_train"]), len(z["y_test"])
    print(f"wrote {out}: {n_train} train, {n_test} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
