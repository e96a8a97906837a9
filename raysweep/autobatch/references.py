"""User code named by reference: ``"package.module:function"`` resolved to the callable, and a callable's own
reference when importing it gives it back (what crosses into a fresh trial process as plain data)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from raysweep.errors import UserModelError

__all__ = ["reference_of", "resolve"]


def resolve(ref: str, argument: str) -> Callable:
    """The callable that ``"package.module:function"`` (``function`` may be dotted) names; UserModelError naming
    ``argument`` when it does not import, does not exist or is not callable."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UserModelError(argument, f"must be package.module:function, got {ref!r}")
    try:
        obj = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure to import is the user's path (or bug)
        raise UserModelError(argument, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserModelError(argument, f"{module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    if not callable(obj):
        raise UserModelError(argument, f"{ref!r} is not callable (a {type(obj).__name__})")
    return obj


def reference_of(obj: Any) -> str | None:
    """``"module:qualname"`` when importing it gives back ``obj`` itself (a module-level function or class), else
    None (a lambda, a closure, a bound method, a partial)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    try:
        return f"{module}:{qualname}" if resolve(f"{module}:{qualname}", "") is obj else None
    except UserModelError:
        return None
