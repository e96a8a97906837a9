"""What the tests share that is not a fixture: the repository's paths, the fake device of the autobatch tests, the
tiny specs of the search tests and the training helpers of the trainer tests. Plain modules, never test modules.

This folder is also put on the PYTHONPATH of the Ray workers the test session starts, for ``sitecustomize.py``."""

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]  # the repository: the CLI tests run from it and the workers import raysweep from it
