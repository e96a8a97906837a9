"""raysweep: batch-size studies of SP/muP MLPs as Ray Tune trials, with every result in Parquet."""

from raysweep.errors import (
    CorruptFileError, DataError, InfeasibleError, NotASweepError, NothingFitsError, OptionError, RaysweepError,
    SpecError,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptFileError",
    "DataError",
    "InfeasibleError",
    "NotASweepError",
    "NothingFitsError",
    "OptionError",
    "RaysweepError",
    "SpecError",
    "__version__",
]
