"""How one field of a search space is read: typed coercion, axis range forms, YAML I/O, and error wording.

Helpers of the spec parser (``raysweep.space``, ``raysweep.search_spec``, ``raysweep.families``). Every check
raises :class:`FieldError` (a :class:`SpecError`) that knows the field's path, e.g. ``space.eta[0]``;
``raysweep.space`` adds the source file when it re-raises. Stdlib and PyYAML only: the launcher validates a spec
without importing Ray or torch.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields
from typing import Any

import yaml

from raysweep import limits
from raysweep.errors import FieldError, SpecError, shown

# A range form may not expand to more values than this: a typo such as pow2: [0, 1000000] must fail, not hang.
MAX_AXIS_VALUES = 100_000
RANGE_FORMS = ("pow2", "logspace", "range", "linspace")


class Marker:
    """A named sentinel default (``<required>``, ``<family default>``) that reads well in signatures."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


NOTHING = Marker("nothing")  # what a missing key "got"


def show(value: Any) -> str:
    """The ``got ...`` part of a message: a bounded repr (:func:`raysweep.errors.shown`), a tuple shown as the YAML
    list it came from."""
    return shown(value)


def fail(path: str, must: str, got: Any, hint: str = "") -> FieldError:
    """``<path>: <must>, got <value><hint>``; callers ``raise fail(...)``. Pass ``NOTHING`` for a missing key."""
    return FieldError(path, f"{must}, got {show(got)}{hint}")


def suggestion(word: Any, choices: Iterable[str]) -> str:
    """``; did you mean 'width'?`` for the closest choice, or '' when none is close."""
    matches = difflib.get_close_matches(str(word).lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    if not matches:
        return ""
    canonical = {c.lower(): c for c in choices}[matches[0]]
    return f"; did you mean {canonical!r}?"


def check_keys(mapping: Mapping, allowed: Iterable[str], prefix: str) -> None:
    """Reject keys outside ``allowed``: ``space.widht: unknown key; did you mean 'width'?``."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            name = key if isinstance(key, str) and len(key) <= 40 else shown(key, 40)
            path = f"{prefix}.{name}" if prefix else name
            hint = (suggestion(key, allowed) if len(name) <= 40 else "") or f"; allowed: {', '.join(allowed)}"
            raise FieldError(path, f"unknown key{hint}")


def section(mapping: Mapping, key: str, allowed: tuple, *, required: bool) -> dict:
    """``mapping[key]`` as a dict with only ``allowed`` keys; a missing optional section is empty."""
    value = mapping.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        got = value if key in mapping else NOTHING
        raise fail(key, "must be a mapping" + (" (it is required)" if required else ""), got)
    check_keys(value, allowed, key)
    return dict(value)


# ------------------------------------------------------------------------------------------- dataclass helpers


class FrozenDict(dict):
    """A read-only, hashable dict. Unlike MappingProxyType it pickles (Ray ships specs to workers), deep-copies
    and survives ``dataclasses.asdict``; it is a dict, so JSON and ``isinstance(x, dict)`` work."""

    def _read_only(self, *args, **kwargs):
        raise TypeError("experiment params are read-only; build a new spec (dataclasses.replace) instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))

    def __reduce__(self):
        return type(self), (dict(self),)


def set_field(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise their own fields in __post_init__


class ShortRepr:
    """A dataclass repr that shows only the fields that differ from their defaults (readable ``--dry-run``)."""

    def _defaults(self) -> dict:
        out = {}
        for fld in fields(self):
            if fld.default is not MISSING:
                out[fld.name] = fld.default
            elif fld.default_factory is not MISSING:
                out[fld.name] = fld.default_factory()
        return out

    def _shown(self) -> dict:
        defaults = self._defaults()
        return {
            fld.name: getattr(self, fld.name)
            for fld in fields(self)
            if fld.repr and (fld.name not in defaults or getattr(self, fld.name) != defaults[fld.name])
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._shown().items())})"


def sample_points(axes: dict[str, tuple], k: int, seed: int, *, keep: Callable, grid: Callable) -> list[dict]:
    """``k`` distinct points, each axis value drawn uniformly with ``random.Random(seed)``, in draw order.

    Repeats and points that ``keep`` rejects are redrawn. ``k`` must not exceed the number of points of
    ``grid()`` (the kept ones); when it is a quarter of the full product or more, ``grid()`` is sampled
    directly instead (no long tail of redraws).
    """
    rng = random.Random(seed)
    n_axes = math.prod(len(v) for v in axes.values())
    if 4 * k >= n_axes:
        return rng.sample(list(grid()), k)
    values = list(axes.values())
    seen, out = set(), []
    while len(out) < k:  # terminates: k < 1/4 of the product and keep rejects at most half of it
        index = tuple(rng.randrange(len(v)) for v in values)
        if index not in seen:
            seen.add(index)
            point = {axis: v[i] for axis, v, i in zip(axes, values, index)}
            if keep(point):
                out.append(point)
    return out


# ---------------------------------------------------------------------------------------------- scalar coercers


def _bound_text(gt=None, ge=None, lt=None, le=None) -> str:
    parts = [f"{op} {x:g}" for op, x in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if x is not None]
    return " and ".join(parts)


def as_int(path: str, value: Any, *, ge: int | None = None, le: int = limits.INT64_MAX) -> int:
    """An integer (a whole float such as 1.0e3 is accepted; a bool is not) in ``[ge, le]``; ``le`` defaults to the
    largest int64, what a Parquet column holds."""
    must = {1: "must be a positive integer", None: "must be an integer"}.get(ge, f"must be an integer >= {ge}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(path, must, value)
    if not isinstance(value, numbers.Integral):
        if not (_finite(value) and float(value).is_integer()):
            raise fail(path, must, value)
    value = int(value)
    if ge is not None and value < ge:
        raise fail(path, must, value)
    if value > le:
        must = (f"must be a positive integer <= {limits.text(le)}" if ge == 1 else
                f"must be an integer from {ge} to {limits.text(le)}" if ge is not None else
                f"must be an integer <= {limits.text(le)}")
        raise fail(path, must, value, limits.why(le))
    return value


def _finite(value: numbers.Real) -> bool:
    """False for NaN, infinities and integers beyond float64's range (math.isfinite would raise on those)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def as_float(path: str, value: Any, *, gt=None, ge=None, lt=None, le=None) -> float:
    """A finite number, stored as a Python float (so 1 and 1.0 are one value), within the given bounds."""
    bound = _bound_text(gt, ge, lt, le)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value):
        raise fail(path, f"must be a finite number {bound}".rstrip(), value)
    number = float(value)
    if (
        (gt is not None and not number > gt)
        or (ge is not None and not number >= ge)
        or (lt is not None and not number < lt)
        or (le is not None and not number <= le)
    ):
        raise fail(path, f"must be {bound}", value)
    return number


def optional(check: Callable[..., Any], path: str, value: Any, **bounds) -> Any:
    """``check(path, value, **bounds)``, except that None passes; the error then says 'or null'."""
    if value is None:
        return None
    try:
        return check(path, value, **bounds)
    except FieldError as err:
        must, _, got = err.text.rpartition(", got ")
        raise FieldError(path, f"{must} or null, got {got}") from None


def as_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(path, "must be true or false", value)
    return value


def as_str(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(path, "must be a non-empty string", value)
    return value


def as_choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``, matched case-insensitively and stored in its canonical spelling ('muP', 'Adam')."""
    canonical = {c.lower(): c for c in choices}
    if isinstance(value, str) and value.lower() in canonical:
        return canonical[value.lower()]
    hint = suggestion(value, choices) if isinstance(value, str) else ""
    raise fail(path, f"must be one of {', '.join(choices)}", value, hint)


# ------------------------------------------------------------------------------------------------- axis values


def _round12(x: float) -> float:
    """12 significant digits, so that logspace(1, 1000, 4) gives 10.0, not 10.000000000000002."""
    return float(f"{x:.12g}")


def _args(path: str, args: Any, shape: str, n: tuple[int, ...]) -> list:
    if not isinstance(args, (list, tuple)) or len(args) not in n:
        raise fail(path, f"must be a list {shape}", args)
    return list(args)


def _pow2(path: str, args: Any, step: Any, kind: str) -> list:
    a, b = (as_int(path, x) for x in _args(path, args, "[a, b] of integer exponents", (2,)))
    if not -1000 <= a <= b <= 1000:
        raise fail(path, "must be [a, b] with integers -1000 <= a <= b <= 1000", [a, b])
    step = 1.0 if step is None else as_float(path.rsplit(".", 1)[0] + ".step", step, gt=0)
    count = (b - a) / step + 1e-9  # a float: a tiny step makes it huge (or inf), never an int overflow
    if count >= MAX_AXIS_VALUES:
        raise fail(path, f"must give at most {MAX_AXIS_VALUES} values", Marker(f"{count:.3g} values (step {step!r})"))
    count = int(math.floor(count)) + 1
    exponents = [a + i * int(step) for i in range(count)] if step.is_integer() else [a + i * step for i in range(count)]
    values = [2**e if isinstance(e, int) else _round12(2.0**e) for e in exponents]
    for e, v in zip(exponents, values):
        if kind == "int" and not float(v).is_integer():
            got = Marker(f"2**{e} = {v}")
            raise fail(path, "must give whole numbers on an integer axis (use whole exponents)", got)
    return values


def _logspace(path: str, args: Any, kind: str) -> list:
    lo, hi, n = _args(path, args, "[lo, hi, n] with lo, hi > 0 and n >= 1", (3,))
    lo, hi, n = as_float(path, lo, gt=0), as_float(path, hi, gt=0), as_int(path, n, ge=1)
    if n > MAX_AXIS_VALUES:
        raise fail(path, f"must give at most {MAX_AXIS_VALUES} values", n)
    # in log space: lo * (hi / lo) ** t overflows when hi / lo exceeds float64's range
    values = [lo] if n == 1 else [_round12(math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)))
                                  for i in range(n)]
    if n > 1:
        values[0], values[-1] = lo, hi
    # Integer axes round half up to the nearest integer; the duplicates this makes are dropped later.
    return [math.floor(v + 0.5) for v in values] if kind == "int" else values


def _range(path: str, args: Any, kind: str) -> list:
    if kind != "int":
        raise fail(path, "range is for integer axes; use pow2, logspace or linspace", args)
    bounds = [as_int(path, x) for x in _args(path, args, "[a, b] or [a, b, step] of integers", (2, 3))]
    if len(bounds) == 3 and bounds[2] == 0:
        raise fail(path, "must have a non-zero step", bounds)
    values = range(*bounds)
    count = max(0, -(-(values.stop - values.start) // values.step))  # len() raises beyond sys.maxsize
    if not count or count > MAX_AXIS_VALUES:
        raise fail(path, f"must give 1 to {MAX_AXIS_VALUES} values (Python range: b is excluded)", bounds)
    return list(values)


def _linspace(path: str, args: Any, kind: str) -> list:
    if kind != "float":
        raise fail(path, "linspace is for float axes; use range, pow2 or logspace", args)
    lo, hi, n = _args(path, args, "[lo, hi, n] with n >= 1", (3,))
    lo, hi, n = as_float(path, lo), as_float(path, hi), as_int(path, n, ge=1)
    if n > MAX_AXIS_VALUES:
        raise fail(path, f"must give at most {MAX_AXIS_VALUES} values", n)
    # lo (1 - t) + hi t: hi - lo may overflow float64, the weighted sum never does
    values = [lo] if n == 1 else [_round12(lo * (1 - i / (n - 1)) + hi * (i / (n - 1))) for i in range(n)]
    if n > 1:
        values[0], values[-1] = lo, hi
    return values


def _range_form(path: str, form: Mapping, kind: str) -> tuple[str, list]:
    check_keys(form, RANGE_FORMS + ("step",), path)
    present = [k for k in RANGE_FORMS if k in form]
    if len(present) != 1:
        raise fail(path, f"a range form must have exactly one of {', '.join(RANGE_FORMS)}", dict(form))
    name = present[0]
    fpath = f"{path}.{name}"
    if "step" in form and name != "pow2":
        raise fail(f"{path}.step", "only pow2 takes a separate step (range takes [a, b, step])", form["step"])
    if name == "pow2":
        return fpath, _pow2(fpath, form[name], form.get("step"), kind)
    return fpath, {"logspace": _logspace, "range": _range, "linspace": _linspace}[name](fpath, form[name], kind)


def expand_axis(path: str, raw: Any, kind: str, coerce: Callable[[str, Any], Any]) -> tuple:
    """The values of one axis: a scalar, a list, or a range form; coerced, de-duplicated keeping order.

    ``kind`` is 'int', 'float' or 'enum'; ``coerce(path, value)`` checks and converts one value. A tuple (what a
    built Space holds) reads like a list, so expanding an expanded axis gives it back unchanged.
    """
    if isinstance(raw, Mapping):
        if kind == "enum":
            raise fail(path, "must be a value or a list of values (range forms are for numeric axes)", dict(raw))
        fpath, values = _range_form(path, raw, kind)
        items = [(fpath, v) for v in values]
    elif isinstance(raw, (list, tuple)):
        if not raw:
            raise fail(path, "must list at least one value", raw)
        items = [(f"{path}[{i}]", v) for i, v in enumerate(raw)]
    else:
        items = [(path, raw)]
    out: dict = {}  # insertion-ordered; a list's `in` made 100,000 values quadratic
    for item_path, value in items:
        out.setdefault(coerce(item_path, value), None)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- YAML I/O


class Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-5`` as a float (YAML 1.2; YAML 1.1 wants ``1.0e-5``) and rejects duplicate
    keys, which plain YAML resolves silently by keeping the last one."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {shown(key, 40)} (YAML would keep only the last)", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: ``eta: [0.25, 0.5, 1.0]`` reads like a hand-written space file."""


Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def yaml_error(err: yaml.YAMLError, text: str, source: str) -> SpecError:
    """A YAML syntax error as a SpecError naming the file, the line and the line's text."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())  # one line: PyYAML's text has several
    if mark is None:
        return SpecError(f"{source}: invalid YAML: {problem[:300]}")
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else ""
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        problem += f", {context} that starts at line {context_mark.line + 1}"
    return SpecError(
        f"{source}: invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        + (f" (line {mark.line + 1}: {shown(line)})" if line else "")
    )


def read_yaml(source: str) -> Any:
    """The parsed content of a search-space file; SpecError when it is missing, unreadable, invalid, empty, larger
    than :data:`raysweep.limits.MAX_SPEC_BYTES` or expanding (YAML aliases included) to more than
    :data:`raysweep.limits.MAX_YAML_NODES` values."""
    try:
        with open(source, "rb") as fh:
            data = fh.read(limits.MAX_SPEC_BYTES + 1)  # never more: the file may be huge, or endless (/dev/zero)
    except FileNotFoundError:
        folder = os.path.dirname(source)
        names = os.listdir(folder or ".") if os.path.isdir(folder or ".") else []
        hint = suggestion(source, [os.path.join(folder, n) for n in names])
        raise SpecError(f"{source}: no such search-space file{hint}") from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, expected a YAML search-space file") from None
    except OSError as err:
        raise SpecError(f"{source}: cannot read the search-space file: {err}") from None
    if len(data) > limits.MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {limits.MAX_SPEC_BYTES:,} bytes, the limit for a search-space file "
                        "(use range forms such as {pow2: [a, b]} instead of long lists)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{source}: cannot read the search-space file: not UTF-8 text ({err.reason} at byte "
                        f"{err.start})") from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """YAML text -> plain values with :class:`Loader`, refusing documents that expand to more than
    :data:`raysweep.limits.MAX_YAML_NODES` values (an alias bomb is a few hundred bytes) before building them."""
    try:
        loader = Loader(text)  # its reader rejects control characters here
    except yaml.YAMLError as err:
        raise yaml_error(err, text, source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{source}: empty file; a search space is a YAML mapping with name, experiment and space")
        n = expanded_size(node)
        if n > limits.MAX_YAML_NODES:
            raise SpecError(f"{source}: the YAML expands to {_count(n)} values (anchors and aliases included), more "
                            f"than the limit of {limits.MAX_YAML_NODES:,}")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise yaml_error(err, text, source) from None
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**12 else f"about 10^{len(str(n)) - 1}"


def expanded_size(root: yaml.Node) -> int:
    """How many values a YAML node graph holds once every alias is expanded: each node counts once per path that
    reaches it. Linear in the number of distinct nodes (shared nodes are counted once, then multiplied)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:  # iterative post-order: a deep document must not exhaust Python's recursion
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if children_done or not kids:
            sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


# ------------------------------------------------------------------------------------------------ canonical JSON


_PLAIN = (str, int, float, bool, type(None))


def _canonical(value: Any) -> Any:
    if type(value) in _PLAIN:  # the common case first: the ABC checks below are slow
        if type(value) is float and not math.isfinite(value):
            return repr(value)
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too, without importing numpy
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else repr(value)  # JSON has no NaN or inf
    raise TypeError(f"cannot put a {type(value).__name__} into a config key: {value!r}")


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, ASCII; ints as ints, floats as their shortest round-trip repr (what json writes),
    tuples as lists: one text per value in every process and Python version."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_pair_json(first: str, first_text: str, second: str, value: Any) -> str:
    """``canonical_json({first: <the value whose canonical_json is first_text>, second: value})`` without
    re-encoding the first value, for ``first < second``: what one config key per point of a large space needs."""
    if not first < second:
        raise ValueError(f"{first!r} must sort before {second!r}")
    return "{" + json.dumps(first) + ":" + first_text + "," + json.dumps(second) + ":" + canonical_json(value) + "}"
