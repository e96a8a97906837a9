"""The error classes users catch. Every message says what must hold, what was given, and where."""

from __future__ import annotations

import reprlib
import signal

_SHOWN = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
for _name, _limit in (("maxlevel", 3), ("maxtuple", 6), ("maxlist", 6), ("maxarray", 6), ("maxdict", 6),
                      ("maxset", 6), ("maxfrozenset", 6), ("maxdeque", 6), ("maxstring", 60), ("maxlong", 40),
                      ("maxother", 60)):
    setattr(_SHOWN, _name, _limit)


def shown(value: object, limit: int = 80) -> str:
    """The ``got ...`` part of a message: a repr cut to ``limit`` characters, built in bounded time and memory
    (a value nested or shared a million times over, e.g. a YAML alias bomb, is never formatted whole)."""
    if isinstance(value, tuple):
        value = list(value)  # a validated axis holds a tuple; the user wrote a YAML list
    text = _SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RaysweepError(Exception):
    """Base class of every error raysweep raises on purpose."""


class SpecError(RaysweepError, ValueError):
    """A search space (YAML) is invalid. The message names the field by its path, e.g.
    ``space.eta[0]: must be > 0, got 0.0 (search_spaces/quickstart.yaml)``."""


class FieldError(SpecError):
    """A SpecError that knows its field path; ``at(source)`` gives the user-facing error with the file name."""

    def __init__(self, path: str, text: str):
        self.path, self.text = path, text
        super().__init__(f"{path}: {text}")

    def at(self, source: str) -> SpecError:
        return SpecError(f"{self.path}: {self.text} ({source})")


class StorageError(RaysweepError, ValueError):
    """``--storage`` cannot be used as asked; the message says why and how to fix it."""


class NoResultsError(RaysweepError, FileNotFoundError):
    """There are no trial rows to analyse where the user pointed (the message says where and what was expected)."""


class DataError(RaysweepError, ValueError):
    """A data set is missing or malformed; the message names the file and the expected layout."""


class FactoryError(SpecError):
    """A model or data factory named by import path (raysweep.custom) cannot be imported, called, or does not return
    what it must; the message names the spec field (``experiment.model.factory``, ``experiment.factory``)."""


class InfeasibleError(RaysweepError, ValueError):
    """A configuration cannot run as asked (e.g. a batch larger than the training set)."""


class CorruptFileError(RaysweepError, OSError):
    """A results file (``trials/*.parquet``, ``curves/*.parquet``) cannot be read, or is not one raysweep wrote.
    ``path`` is the file; the message says what to do with it."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class NotASweepError(RaysweepError, ValueError):
    """A folder given as a sweep is a storage root holding sweeps (or nothing raysweep wrote)."""


class OptionError(RaysweepError, ValueError):
    """A command-line option is invalid (exit 2, like an invalid spec); the message names the option."""


class NothingFitsError(RaysweepError, RuntimeError):
    """No batch size / GPU share fits the memory budget. ``evidence`` holds what was tried and measured."""

    def __init__(self, message: str, evidence: dict | None = None):
        super().__init__(message)
        self.evidence = dict(evidence or {})


class UserModelError(RaysweepError, ValueError):
    """A user's model, batch, loss or optimizer (or another argument of
    :func:`raysweep.autobatch.module.find_batch_size`) cannot be used as given. ``argument`` names it as the Python
    API spells it (``make_model``, ``make_batch``, ``loss_fn``, ``optimizer``, ...); ``text`` says what must hold
    and what was given. The standalone CLI prints it under its option name (``--model: ...``) and exits 2."""

    def __init__(self, argument: str, text: str):
        self.argument, self.text = argument, text
        super().__init__(f"{argument}: {text}")


class NoCachedModelError(RaysweepError):
    """Autobatch has no memory model of this sweep on this device yet (none cached): probe first."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside the Tuner's loop (or a second one inside it): the launch stops where it is.
    A BaseException, like KeyboardInterrupt: ``except Exception`` does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
