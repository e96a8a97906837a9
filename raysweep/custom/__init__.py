"""Bring your own model: any ``torch.nn.Module`` and data set in a sweep, beside the hand-written MLP fast path.

- :mod:`raysweep.custom.spec`: the spec's ``experiment.model: {factory: "pkg.mod:function", ...}`` mapping and the
  ``custom`` data family's keys, checked without importing the user's code (stdlib only);
- :mod:`raysweep.custom.factory`: import-path loading, the calls of the model and data factories, and the driver's
  check (import, build, one forward) before Ray starts;
- :mod:`raysweep.custom.data`: :class:`~raysweep.custom.data.CustomTask`, the task a data factory's tensors make;
- :mod:`raysweep.custom.mup`: SP (NTK) and muP by base shapes (per-parameter learning-rate and readout multipliers);
- :mod:`raysweep.custom.functional`: the members' parameters stacked (``torch.func.stack_module_state``), one
  ``vmap(grad(functional_call))`` step, or one member at a time when the model cannot be vmapped;
- :mod:`raysweep.custom.train`: the training loop, with :mod:`raysweep.train`'s reports and divergence rules;
- :mod:`raysweep.custom.curvature`: ``experiment.curvature`` by exact Hessian-vector products of the trained loss.

This package imports no torch at import time.
"""
