"""The driver's check of a spec's user factories before Ray starts, and the ``--dry-run`` lines they add.

:func:`check_spec` imports the data factory (``custom`` family) and the model factory, calls both (epochs over the
custom family's training set must fit int64), builds the model at the space's smallest and largest
width (a new module per call, with floating parameters), runs forwards on two and three inputs (and one when the
space trains at batch size 1) whose outputs must be tensors of the experiment's dtype shaped as the loss reads
them, infers the base shapes (SP's and muP's rates), and tries one vmapped step (whose failure is no error: the
bundles then train unfused, and the line says why). Any failure is a :class:`~raysweep.errors.FactoryError` (a
SpecError: exit 2) naming the spec field and file.
"""

from __future__ import annotations

from typing import Any

from raysweep import families, limits
from raysweep.custom.factory import MODEL_FIELD, build_model, one_line
from raysweep.custom.spec import is_custom
from raysweep.errors import FactoryError, FieldError

CHECK_BATCH = 2  # inputs of the forward the check runs


def inputs(experiment) -> tuple[tuple[int, ...], int, Any]:
    """``(input_shape, n_out, example_inputs)`` of a typed Experiment's data: the custom family's tensors (built by
    its factory), or a built-in family's ``(dim,)`` features (random inputs; no file is read)."""
    import torch  # the example inputs

    if experiment.family == "custom":
        from raysweep.custom.data import factory_tensors  # torch

        data = factory_tensors({**experiment.params, "data_seed": experiment.data_seed})
        return tuple(data["x_train"].shape[1:]), data["n_out"], data["x_test"][:CHECK_BATCH]
    dim, n_out = families.shape(experiment)
    return (dim,), n_out, torch.randn(CHECK_BATCH, dim, generator=torch.Generator().manual_seed(0))


def check_spec(spec) -> list[str]:
    """Check the spec's factories (module docstring); returns the ``--dry-run`` lines, empty for a spec without
    a model factory."""
    import torch  # the forward

    from raysweep.custom import functional, mup  # torch.func

    exp = spec.experiment
    try:
        input_shape, n_out, x = inputs(exp)
        if exp.family == "custom":
            _check_batches(spec)
        if not is_custom(exp.model):
            return []
        model = exp.model
        dtype = torch.float64 if exp.dtype == "float64" else torch.float32
        x = x.to(dtype) if x.is_floating_point() else x
        point = spec.points()[0]
        lines = [f"model: {model['factory']} (input {tuple(input_shape)}, {n_out} outputs; "
                 f"{'centred f - f0' if model['centred'] else 'uncentred'})"]
        built = []
        for width in sorted({min(spec.space.width), max(spec.space.width)}):
            module = build_model(model, width=width, depth=point["depth"], gamma=point["gamma"],
                                 parametrization=point["parametrization"], input_shape=input_shape, n_out=n_out,
                                 seed=0, dtype=dtype)
            if any(module is other for other in built):
                raise FactoryError(f"{MODEL_FIELD}: {model['factory']} returned the same module object for two "
                                   "calls; it must build a new one per call (each trial's members start from their "
                                   "own seeds)")
            built.append(module)
            _check_parameters(module, width)
            for batch in _check_batch_sizes(spec, x):
                _check_forward(module, batch, width, dtype, _out_shape(exp, n_out))
        scaled = [p for p in spec.space.parametrization if p != "torch_sp"]  # torch_sp: the module as built
        if scaled:  # SP's rates need base shapes too
            shapes = mup.base_shapes(model, depth=point["depth"], gamma=point["gamma"], input_shape=input_shape,
                                     n_out=n_out, parametrization=scaled[0])
            lines.append(f"{' and '.join(scaled)} by base shapes: base width {model['base_width']}, "
                         f"readout {shapes.readout!r}{' (detected)' if model['readout'] is None else ''}; "
                         f"{shapes.summary()}")
    except FactoryError as exc:
        raise FactoryError(f"{exc} ({spec.source})") from None
    except FieldError as exc:
        raise exc.at(spec.source) from None
    module.train()
    reason = functional.vmap_reason(module, x, n_out)
    lines.append("fusion: a bundle's members train as one torch.func.vmap(functional_call) step" if reason is None
                 else f"fusion: off for this model (members train one after another): {reason}")
    return lines


def _check_batches(spec) -> None:
    """Epochs over the custom family's training set fit int64 (the ``samples_seen`` column). A batch size larger
    than the training set is not an error of the spec: that configuration lands as a failed row (``InfeasibleError``,
    never retried), as with the built-in fixed data sets, and the rest of the sweep runs."""
    from raysweep.custom.data import factory_tensors  # torch

    exp = spec.experiment
    data = factory_tensors({**exp.params, "data_seed": exp.data_seed})
    n_train = int(data["x_train"].shape[0])
    if exp.epochs is not None and exp.epochs * n_train > limits.INT64_MAX:
        raise FieldError("experiment.epochs", f"times the training set ({n_train:,} samples) must fit int64 (the "
                         f"samples_seen column), got {exp.epochs}")


def _check_parameters(module, width: int) -> None:
    """At least one parameter, every one floating (trained by gradients)."""
    params = dict(module.named_parameters())
    if not params:
        raise FactoryError(f"{MODEL_FIELD}: the model at width {width} has no parameters (nothing to train)")
    for name, p in params.items():
        if not p.is_floating_point():
            raise FactoryError(f"{MODEL_FIELD}: parameter {name} is {p.dtype}; every parameter must be floating "
                               "(trained by gradients; keep integer state in a buffer: register_buffer)")


def _check_batch_sizes(spec, x) -> list:
    """The check's input batches: ``x`` (:data:`CHECK_BATCH` samples), three samples (a forward whose output
    depends on the batch size), and one sample when the space trains at batch size 1 (batch norm)."""
    sizes = [CHECK_BATCH, CHECK_BATCH + 1] + ([1] if 1 in spec.space.batch_size else [])
    return [x[[i % x.shape[0] for i in range(n)]] for n in sizes]


def _out_shape(experiment, n_out: int) -> tuple[int, ...]:
    """One sample's output shape the loss reads: ``(..., n_out)`` with the labels' (or targets') positions."""
    if experiment.family != "custom":
        return (n_out,)
    from raysweep.custom.data import factory_tensors  # torch

    y = factory_tensors({**experiment.params, "data_seed": experiment.data_seed})["y_test"]
    return tuple(y.shape[1:]) + (n_out,) if not y.is_floating_point() else tuple(y.shape[1:])


def _check_forward(module, x, width: int, dtype, out_shape: tuple[int, ...]) -> None:
    """One forward (no gradients) on ``x``; its output must be a ``dtype`` tensor ``[B, *out_shape]``."""
    import torch  # the forward

    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:  # the user's forward
        raise FactoryError(f"{MODEL_FIELD}: the model's forward failed on inputs {tuple(x.shape)} {x.dtype} "
                           f"(width {width}): {one_line(exc)}") from None
    want = (x.shape[0], *out_shape)
    if not isinstance(out, torch.Tensor) or out.dtype != dtype or tuple(out.shape) != want:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise FactoryError(f"{MODEL_FIELD}: the model's forward must return a {dtype} tensor [B, ..., "
                           f"{out_shape[-1]}] (here {list(want)}: the experiment's dtype, the labels' positions) for "
                           f"inputs {tuple(x.shape)} (width {width}), got {got}")
