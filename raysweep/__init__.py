"""raysweep: batch-size studies of SP/muP MLPs as Ray Tune trials, with every result in Parquet.

The Python API (:mod:`raysweep.api`) is loaded on first use, so that ``import raysweep`` stays light::

    import raysweep

    summary = raysweep.run("search_spaces/quickstart.yaml", raysweep.RunOptions(storage="results"))
    trials = raysweep.read_trials(summary)
"""

from raysweep._version import __version__
from raysweep.errors import (
    CorruptFileError, DataError, InfeasibleError, NotASweepError, NothingFitsError, OptionError, RaysweepError,
    SpecError,
)

_API = ("RunOptions", "Summary", "SweepStatus", "load_spec", "read_curves", "read_trials", "run", "sweep_status")

__all__ = [
    "CorruptFileError",
    "DataError",
    "InfeasibleError",
    "NotASweepError",
    "NothingFitsError",
    "OptionError",
    "RaysweepError",
    "RunOptions",
    "SpecError",
    "Summary",
    "SweepStatus",
    "__version__",
    "load_spec",
    "read_curves",
    "read_trials",
    "run",
    "sweep_status",
]


def __getattr__(name: str):
    """PEP 562: the API's names, imported from :mod:`raysweep.api` when first asked for."""
    if name in _API:
        from raysweep import api  # lazy: `import raysweep` stays light (the API loads the launcher)

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'raysweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
