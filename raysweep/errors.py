"""The error classes users catch. Every message says what must hold, what was given, and where."""

from __future__ import annotations


class RaysweepError(Exception):
    """Base class of every error raysweep raises on purpose."""


class SpecError(RaysweepError, ValueError):
    """A search space (YAML) is invalid. The message names the field by its path, e.g.
    ``space.eta[0]: must be > 0, got 0.0 (search_spaces/quickstart.yaml)``."""


class DataError(RaysweepError, ValueError):
    """A data set is missing or malformed; the message names the file and the expected layout."""


class InfeasibleError(RaysweepError, ValueError):
    """A configuration cannot run as asked (e.g. a batch larger than the training set)."""


class NothingFitsError(RaysweepError, RuntimeError):
    """No batch size / GPU share fits the memory budget. ``evidence`` holds what was tried and measured."""

    def __init__(self, message: str, evidence: dict | None = None):
        super().__init__(message)
        self.evidence = dict(evidence or {})
