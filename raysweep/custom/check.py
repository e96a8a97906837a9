"""The driver's check of a spec's user factories before Ray starts, and the ``--dry-run`` lines they add.

:func:`check_spec` imports the data factory (``custom`` family) and the model factory, calls both, builds the model
at the space's smallest and largest width, runs one forward on two inputs, infers the base shapes (SP's and muP's
rates), and tries one vmapped step (whose failure is no error: the bundles then train unfused, and the line says
why). Any failure is a :class:`~raysweep.errors.FactoryError` (a SpecError: exit 2) naming the spec field and file.
"""

from __future__ import annotations

from typing import Any

from raysweep import families
from raysweep.custom.factory import MODEL_FIELD, build_model
from raysweep.custom.spec import is_custom
from raysweep.errors import FactoryError

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
        if not is_custom(exp.model):
            return []
        model = exp.model
        dtype = torch.float64 if exp.dtype == "float64" else torch.float32
        x = x.to(dtype) if x.is_floating_point() else x
        point = spec.points()[0]
        lines = [f"model: {model['factory']} (input {tuple(input_shape)}, {n_out} outputs; "
                 f"{'centred f - f0' if model['centred'] else 'uncentred'})"]
        for width in sorted({min(spec.space.width), max(spec.space.width)}):
            module = build_model(model, width=width, depth=point["depth"], gamma=point["gamma"],
                                 parametrization=point["parametrization"], input_shape=input_shape, n_out=n_out,
                                 seed=0, dtype=dtype)
            try:
                with torch.no_grad():
                    out = module(x)
            except Exception as exc:  # the user's forward
                raise FactoryError(f"{MODEL_FIELD}: the model's forward failed on inputs {tuple(x.shape)} {x.dtype} "
                                   f"(width {width}): {type(exc).__name__}: {exc}") from None
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.shape[:1] != x.shape[:1] \
                    or out.shape[-1] != n_out:
                got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise FactoryError(f"{MODEL_FIELD}: the model's forward must return a float tensor [B, ..., {n_out}] "
                                   f"for inputs {tuple(x.shape)}, got {got}")
        scaled = [p for p in spec.space.parametrization if p != "torch_sp"]  # torch_sp: the module as built
        if scaled:  # SP's rates need base shapes too
            shapes = mup.base_shapes(model, depth=point["depth"], gamma=point["gamma"], input_shape=input_shape,
                                     n_out=n_out, parametrization=scaled[0])
            lines.append(f"{' and '.join(scaled)} by base shapes: base width {model['base_width']}, "
                         f"readout {shapes.readout!r}{' (detected)' if model['readout'] is None else ''}; "
                         f"{shapes.summary()}")
    except FactoryError as exc:
        raise FactoryError(f"{exc} ({spec.source})") from None
    module.train()
    reason = functional.vmap_reason(module, x, n_out)
    lines.append("fusion: a bundle's members train as one torch.func.vmap(functional_call) step" if reason is None
                 else f"fusion: off for this model (members train one after another): {reason}")
    return lines
