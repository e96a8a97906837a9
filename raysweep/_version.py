"""raysweep's version, in a module of its own so that modules the package's ``__init__`` loads lazily (the plan
stamps it on every trial) need not import the package's ``__init__``."""

__version__ = "0.1.0"
