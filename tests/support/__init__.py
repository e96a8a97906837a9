"""What the tests share that is not a fixture: the repository's paths, the fake device of the autobatch tests, the
tiny specs of the search tests and the trainer tests' helpers. Plain modules, never test modules.

``workers/`` is put on the PYTHONPATH of the Ray workers the test session starts (``workers/sitecustomize.py``),
and holds nothing else, so that no module of this package shadows another there."""

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]  # the repository: the CLI tests run from it and the workers import raysweep from it
WORKERS = SUPPORT / "workers"
