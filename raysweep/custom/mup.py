"""muP and SP (the NTK parametrization) for any model by base shapes: per-parameter learning-rate multipliers and
a readout multiplier, inferred from the parameters' shapes at two widths.

The method of microsoft/mup (Yang et al., "Tensor Programs V", 2022, Table 3 as reparametrized in the package's
``MuReadout``, ``MuSGD`` and ``MuAdam``), implemented here because the ``mup`` package works on modules in place
(``set_base_shapes`` writes an ``infshape`` on every parameter) while raysweep trains stacked functional parameters.
The factory builds the model at the base width ``N0`` and at ``2 N0``: a dimension of a parameter whose size
differs is *infinite* (it scales with width), the others are finite. At width N a dimension's ``width_mult`` is its
size over its base size (``N / N0`` for a width dimension). With ``fan_out`` dimension 0 and ``fan_in``
dimension 1 (``nn.Linear``, ``nn.Conv*``; an ``nn.Embedding`` ``[vocab, d]`` is then vector-like, as it should).
Learning rate of each parameter, eta times:

=========================  =================  ========================  ====================  ================
parameter                  muP Adam / AdamW   muP SGD                   SP Adam / AdamW       SP SGD
=========================  =================  ========================  ====================  ================
no infinite dimension      1                  1                         1                     1
vector-like (one), but     1                  width_mult (of that       1                     1
the readout weight                            dimension)
readout weight             1                  fanin_mult                1 / sqrt(fanin_mult)  1 / fanin_mult
matrix-like (two)          1 / fanin_mult     fanin_mult / fanout_mult  1 / sqrt(fanin_mult)  1 / fanin_mult
=========================  =================  ========================  ====================  ================

(vector-like: input weights, embeddings, biases, norms; matrix-like: hidden weights.) The readout is named in
the spec, or detected: the last ``nn.Linear`` whose input dimension is infinite and whose output dimension is
finite (a model none of whose inputs scale with width, e.g. a linear model, has none and needs none). Under muP it multiplies its weight by ``1 / fanin_mult`` in the forward (``MuReadout``'s
``x / width_mult``; the bias is not scaled). Initialisation stays PyTorch's (variance ~ 1/fan_in), which with these
multipliers is Table 3's: the readout's effective variance ~ 1/fan_in^2.

SP is the project's SP, the NTK parametrization (``raysweep.coordcheck``): weights ``w ~ N(0, 1)`` with
``1 / sqrt(fan_in)`` in the forward and one global eta. A PyTorch-initialised ``W = w / sqrt(fan_in)`` has the same
initial function, and trains as the NTK's ``w`` at eta when its own rate is ``eta / fan_in`` (SGD: ``dW = dw /
sqrt(fan_in)`` and ``grad_W = sqrt(fan_in) grad_w``) or ``eta / sqrt(fan_in)`` (Adam, whose update of ``w`` is
~eta per entry); no forward multiplier. Relative to the base width this is the table's SP columns: every
parameter whose fan_in is infinite (the matrix-like ones and the readout weight) at ``eta / fanin_mult`` (SGD) or
``eta / sqrt(fanin_mult)`` (Adam), every other one at eta. With SGD the hidden features' updates then shrink like
``N^-1/2`` (lazy training), with Adam they grow like ``N^1/2``.

Weight decay keeps one timescale per parameter (``lambda / lr_mult`` with the ``lr`` scaling: MuSGD's
``weight_decay / width_mult``, MuAdam's ``weight_decay * width_mult``; under SP exactly the NTK's ``lambda`` on
``w`` with SGD and with decoupled decay). At the base width every multiplier is 1 (both parametrizations train the
model as built, every parameter at eta): the finite per-layer constants are the factory's.

What this cannot see: a multiplier inside the forward (attention's ``1 / d_head`` instead of ``1 / sqrt(d_head)``
under muP is the factory's, which receives ``parametrization``), and parameters with more than two infinite
dimensions (an error). Pure: torch; no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raysweep.custom.factory import build_model
from raysweep.errors import FactoryError

READOUT_FIELD = "experiment.model.readout"


@dataclass(frozen=True)
class BaseShapes:
    """Per parameter name: its base shape and which dimensions are infinite; and the readout module's name."""

    base: Mapping[str, tuple[int, ...]]
    infinite: Mapping[str, tuple[bool, ...]]
    readout: str | None  # None: no parameter's input scales with width (nothing to treat as a readout)

    @property
    def readout_weight(self) -> str | None:
        """The readout's weight parameter name (``weight`` when the readout is the model itself)."""
        return None if self.readout is None else _weight(self.readout)

    def kind(self, name: str) -> str:
        n = sum(self.infinite[name])
        return ("finite", "vector-like", "matrix-like")[n] if n <= 2 else f"{n} infinite dimensions"

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for name in self.infinite:
            counts[self.kind(name)] = counts.get(self.kind(name), 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + " parameters"

    def width_mults(self, name: str, shape: tuple[int, ...]) -> tuple[float, float]:
        """``(fanout_mult, fanin_mult)`` of a parameter of ``shape`` (1 for finite dimensions and for a vector)."""
        mults = [s / b if inf else 1.0 for s, b, inf in zip(shape, self.base[name], self.infinite[name])]
        return (mults[0] if mults else 1.0), (mults[1] if len(mults) > 1 else 1.0)

    def vector_mult(self, name: str, shape: tuple[int, ...]) -> float:
        """The width_mult of a vector-like parameter's infinite dimension."""
        for s, b, inf in zip(shape, self.base[name], self.infinite[name]):
            if inf:
                return s / b
        return 1.0


def base_shapes(model: Mapping[str, Any], *, depth: int, gamma: float, input_shape, n_out: int,
                parametrization: str = "muP") -> BaseShapes:
    """Build the factory at the base width and twice it (meta-free, on the CPU) and infer :class:`BaseShapes`."""
    import torch  # nn.Linear for the readout

    base_width = int(model["base_width"])
    build = dict(depth=depth, gamma=gamma, parametrization=parametrization, input_shape=input_shape, n_out=n_out)
    base = build_model(model, width=base_width, **build)
    delta = build_model(model, width=2 * base_width, **build)
    b = {n: tuple(p.shape) for n, p in base.named_parameters()}
    d = {n: tuple(p.shape) for n, p in delta.named_parameters()}
    if set(b) != set(d) or any(len(b[n]) != len(d[n]) for n in b):
        raise FactoryError(f"experiment.model.factory: the model's parameters differ in name or rank between width "
                           f"{base_width} and {2 * base_width}; muP by base shapes needs the same parameters at "
                           "every width")
    infinite = {n: tuple(x != y for x, y in zip(b[n], d[n])) for n in b}
    for n, inf in infinite.items():
        if sum(inf) > 2:
            raise FactoryError(f"experiment.model.factory: parameter {n} has {sum(inf)} dimensions that scale with "
                               "width; muP by base shapes handles at most two (fan_out, fan_in)")
    readout = model.get("readout")
    modules = dict(base.named_modules())
    if readout is not None:
        if readout not in modules or _weight(readout) not in b or len(b[_weight(readout)]) != 2:
            raise FactoryError(f"{READOUT_FIELD}: {readout!r} must name a module with a 2-d weight (e.g. an "
                               f"nn.Linear); the model's modules: {', '.join(n for n in modules if n)[:300]}")
        if infinite[_weight(readout)] != (False, True):
            raise FactoryError(f"{READOUT_FIELD}: {readout!r} must map width-scaled features to outputs that do not "
                               f"scale (its weight's input dimension grows with width, its output dimension does "
                               f"not), got a weight of shape {b[_weight(readout)]} at width {base_width} and "
                               f"{d[_weight(readout)]} at {2 * base_width}")
    else:
        found = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)
                 and infinite[_weight(n)] == (False, True)]
        if found:
            readout = found[-1]
        elif any(len(inf) > 1 and inf[1] for inf in infinite.values()):
            raise FactoryError(f"{READOUT_FIELD}: no readout detected (an nn.Linear whose input scales with width and "
                               "whose output does not); name it: experiment.model.readout")
    return BaseShapes(b, infinite, readout)


def _weight(module: str) -> str:
    return f"{module}.weight" if module else "weight"


def eps_multipliers(shapes: BaseShapes, named_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
    """Adam's eps per parameter under muP with ``eps_scaling: mup``, as a factor of the spec's eps (Everett et al.
    2024, the MLP path's :func:`raysweep.scaling.epsilons` by base shapes): a vector-like parameter (an input layer,
    the readout, an embedding, a bias or norm whose dimension scales) ``1 / width_mult``, a matrix-like one (a hidden
    weight) ``1 / fanin_mult^(3/2)``, a finite one 1; all 1 at the base width."""
    out = {}
    for name, shape in named_shapes.items():
        n_inf = sum(shapes.infinite[name])
        if n_inf == 2:
            out[name] = 1.0 / shapes.width_mults(name, shape)[1] ** 1.5
        elif n_inf == 1:
            out[name] = 1.0 / shapes.vector_mult(name, shape)
        else:
            out[name] = 1.0
    return out


def multipliers(shapes: BaseShapes | None, named_shapes: Mapping[str, tuple[int, ...]], optimizer: str,
                parametrization: str = "muP") -> tuple[dict[str, float], dict[str, float]]:
    """``(lr_mult, forward_mult)`` per parameter name at the model's shapes, under ``parametrization`` (``muP``,
    ``SP``, the NTK parametrization, or ``torch_sp``, the module as built with every parameter at eta: PyTorch's
    default, ``shapes`` unused; module docstring)."""
    lr = {n: 1.0 for n in named_shapes}
    forward: dict[str, float] = {}
    if parametrization == "torch_sp":
        return lr, forward
    weight = shapes.readout_weight
    if parametrization == "SP":
        for name, shape in named_shapes.items():
            if sum(shapes.infinite[name]) == 2 or name == weight:
                fanin = shapes.width_mults(name, shape)[1]
                lr[name] = 1.0 / fanin if optimizer == "SGD" else 1.0 / fanin ** 0.5
        return lr, forward
    if parametrization != "muP":
        raise ValueError(f"parametrization {parametrization!r}: base shapes give SP, muP or torch_sp")
    for name, shape in named_shapes.items():
        n_inf = sum(shapes.infinite[name])
        fanout, fanin = shapes.width_mults(name, shape)
        if n_inf == 2:
            lr[name] = 1.0 / fanin if optimizer != "SGD" else fanin / fanout
        elif n_inf == 1 and optimizer == "SGD":
            lr[name] = shapes.vector_mult(name, shape)
    if weight is not None:
        forward[weight] = 1.0 / shapes.width_mults(weight, named_shapes[weight])[1]
    return lr, forward
