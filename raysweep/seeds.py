"""Seeds: every random stream of raysweep derives from a trial's ``seed`` or an experiment's ``data_seed`` here.

- :func:`init_seed`, :func:`data_seed`: the weight-init and data-order generators of a trial ``seed`` (small
  integers ``2 seed + 1`` and ``2 seed + 2``, so they never collide);
- :func:`noise_seed`: the trial's gradient-noise batches (a 63-bit hash, colliding with no init or data seed);
- :func:`curvature_seed`: the trial's curvature batch and its probes (the same kind of hash, another tag);
- :func:`derive_seed`: a named stream of any seed (``data_seed``'s teacher, eval set, split, subset...).

Pure: stdlib only.
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for the stream ``tag`` of ``seed``: the first 8 bytes of sha256(f"{seed}:{tag}"), big-endian,
    top bit cleared. Distinct tags give unrelated streams, and no stream collides with a generator seeded
    with ``seed`` itself (e.g. the trial's)."""
    digest = hashlib.sha256(f"{int(seed)}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def init_seed(seed: int) -> int:
    """The weight-init generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 1


def data_seed(seed: int) -> int:
    """The data-order (permutations, online blocks) generator's seed for a trial ``seed``."""
    return 2 * int(seed) + 2


def noise_seed(seed: int) -> int:
    """The seed of the generator of a trial ``seed``'s gradient-noise batches: a 63-bit hash of the seed, so it
    collides with no trial's init or data seed (small integers)."""
    return derive_seed(seed, "grad_noise")


def curvature_seed(seed: int) -> int:
    """The seed of the generator of a trial ``seed``'s curvature batch (raysweep.sharpness): a 63-bit hash of the
    seed, like :func:`noise_seed`, under a tag of its own."""
    return derive_seed(seed, "curvature")
