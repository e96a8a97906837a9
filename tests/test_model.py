"""raysweep.model against closed forms written out by hand with numpy matmuls.

The rule (DESIGN.md): L weight matrices, widths ``[D] + [N] * (L - 1) + [out]``, no biases, weights ~ N(0, 1);
hidden layers (the first included) ``h = relu(h W / sqrt(fan_in))``; readout SP ``f = h W_out / (gamma sqrt N)``,
muP ``f = h W_out / (gamma N)``; the trained function is ``f(x; theta) - f(x; theta_0)``.

D, N and out are all different (D=5, N=7, out in {1, 3}) so that fan_in / fan_out and 1/N / 1/sqrt(N) mix-ups
give different numbers, and gamma spans 0.01..100 so that gamma on the wrong side of the fraction is caught.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysweep import model

D, N, B = 5, 7, 11


def hand_forward(ws: list[np.ndarray], x: np.ndarray, gamma: float, parametrization: str, width: int):
    """The rule of DESIGN.md, one member, plain numpy: returns (f, hidden post-activations)."""
    h, hidden = x, []
    for w in ws[:-1]:
        fan_in = w.shape[0]
        h = np.maximum(h @ w / math.sqrt(fan_in), 0.0)
        hidden.append(h)
    denom = gamma * math.sqrt(width) if parametrization == "SP" else gamma * width
    return h @ ws[-1] / denom, hidden


def test_layer_widths():
    assert model.layer_widths(5, 7, 1, 3) == [5, 3]
    assert model.layer_widths(5, 7, 2, 3) == [5, 7, 3]
    assert model.layer_widths(5, 7, 3, 1) == [5, 7, 7, 1]
    assert model.layer_widths(784, 128, 4, 10) == [784, 128, 128, 128, 10]
    with pytest.raises(ValueError, match="depth"):
        model.layer_widths(5, 7, 0, 1)


def test_init_weights_shapes_and_standard_normal():
    """Stacked ``[K, fan_in, fan_out]`` and N(0, 1) entries: catches an init that already carries 1/sqrt(fan_in)
    (that scaling belongs to the forward pass) or a shared draw across members."""
    ws = model.init_weights([64, 256, 256, 3], [1, 2], dtype=torch.float64)
    assert [tuple(w.shape) for w in ws] == [(2, 64, 256), (2, 256, 256), (2, 256, 3)]
    assert all(w.dtype == torch.float64 for w in ws)
    big = ws[1]  # 2 * 65536 samples: mean within 0.02 and std within 0.01 of N(0, 1) by a wide margin
    assert abs(float(big.mean())) < 0.02
    assert abs(float(big.std()) - 1.0) < 0.01
    assert not torch.equal(ws[1][0], ws[1][1])


def test_init_weights_member_independent_of_bundle_and_dtype():
    """A member's weights depend only on its seed (alone or in any bundle, any position); float32 is float64 rounded."""
    widths = [D, N, N, 3]
    alone = model.init_weights(widths, [7], dtype=torch.float64)
    bundle = model.init_weights(widths, [3, 7, 9], dtype=torch.float64)
    single = model.init_weights(widths, [7], dtype=torch.float32)
    for a, b, s in zip(alone, bundle, single):
        assert torch.equal(a[0], b[1])
        assert torch.equal(s[0], a[0].to(torch.float32))
    assert not torch.equal(bundle[0][0], bundle[0][1])


@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_readout_multiplier_closed_form(parametrization):
    gammas = [0.01, 1.0, 100.0]
    got = model.readout_multiplier(N, torch.tensor(gammas, dtype=torch.float64), parametrization)
    assert got.shape == (3, 1, 1)
    want = [1 / (g * math.sqrt(N)) if parametrization == "SP" else 1 / (g * N) for g in gammas]
    np.testing.assert_allclose(got.reshape(-1).numpy(), want, rtol=1e-15)


def test_readout_multiplier_rejects_unknown_parametrization():
    with pytest.raises(ValueError, match="parametrization"):
        model.readout_multiplier(N, torch.tensor([1.0]), "NTK")


@pytest.mark.parametrize("n_out", [1, 3])  # 1 takes the scalar-readout code path, 3 the matmul one
@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("gamma", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_forward_matches_hand_formula(parametrization, gamma, depth, n_out):
    """forward == the DESIGN.md formula by numpy matmuls, for shared ``[B, D]`` and per-member ``[K, B, D]`` inputs.

    Catches: readout 1/N instead of 1/sqrt(N) (or the reverse), gamma multiplied instead of divided, the hidden
    scaling by fan_out instead of fan_in (D != N), a missing relu on the first layer or a relu on the readout."""
    seeds = [11, 12]
    widths = [D] + [N] * (depth - 1) + [n_out]
    ws = model.init_weights(widths, seeds, dtype=torch.float64)
    rng = np.random.default_rng(0)
    x_shared = rng.standard_normal((B, D))
    x_member = rng.standard_normal((len(seeds), B, D))
    mult = model.readout_multiplier(N, torch.full((len(seeds),), gamma, dtype=torch.float64), parametrization)

    hidden: list[torch.Tensor] = []
    f_shared = model.forward(ws, torch.from_numpy(x_shared), mult, hidden=hidden)
    f_member = model.forward(ws, torch.from_numpy(x_member), mult)
    assert f_shared.shape == f_member.shape == (len(seeds), B, n_out)
    assert len(hidden) == depth - 1

    for k in range(len(seeds)):
        member = [w[k].numpy() for w in ws]
        want, want_hidden = hand_forward(member, x_shared, gamma, parametrization, N)
        np.testing.assert_allclose(f_shared[k].numpy(), want, rtol=1e-12, atol=1e-300)
        for got_h, want_h in zip(hidden, want_hidden):
            np.testing.assert_allclose(got_h[k].numpy(), want_h, rtol=1e-12, atol=1e-15)
        want_m, _ = hand_forward(member, x_member[k], gamma, parametrization, N)
        np.testing.assert_allclose(f_member[k].numpy(), want_m, rtol=1e-12, atol=1e-300)


def test_forward_scale_with_gamma_is_exactly_inverse():
    """f(gamma) * gamma is the same function for every gamma (readout only): a gamma applied twice or squared fails."""
    ws = model.init_weights([D, N, N, 1], [0], dtype=torch.float64)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = {g: model.forward(ws, x, model.readout_multiplier(N, torch.tensor([g], dtype=torch.float64), "muP"))
            for g in (0.01, 1.0, 100.0)}
    np.testing.assert_allclose((outs[0.01] * 0.01).numpy(), outs[1.0].numpy(), rtol=1e-12)
    np.testing.assert_allclose((outs[100.0] * 100.0).numpy(), outs[1.0].numpy(), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
def test_centred_output_is_exactly_zero_at_init(parametrization, gamma):
    """At theta_0 the trained function is the zero predictor, exactly (not approximately), for every gamma; away
    from theta_0 it is f(theta) - f(theta_0)."""
    ws = model.init_weights([D, N, N, 2], [0, 1], dtype=torch.float64)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mult = model.readout_multiplier(N, torch.tensor([gamma, gamma], dtype=torch.float64), parametrization)
    f0 = model.forward(ws, x, mult)
    assert float(f0.abs().max()) > 0.0  # the raw output is not zero: centring does the work
    c = model.centred(ws, x, mult, f0)
    assert torch.equal(c, torch.zeros_like(c))

    moved = [w + 0.1 for w in ws]
    hand = []
    for k in range(2):
        f_new, _ = hand_forward([w[k].numpy() for w in moved], x.numpy(), gamma, parametrization, N)
        f_old, _ = hand_forward([w[k].numpy() for w in ws], x.numpy(), gamma, parametrization, N)
        hand.append(f_new - f_old)
    np.testing.assert_allclose(model.centred(moved, x, mult, f0).numpy(), np.stack(hand), rtol=1e-9, atol=1e-12)


def test_member_output_independent_of_bundle():
    """A member's output is bit-identical alone and inside a bundle (the fused-trial guarantee starts here)."""
    widths = [D, N, N, 1]
    alone = model.init_weights(widths, [5], dtype=torch.float64)
    bundle = model.init_weights(widths, [4, 5, 6], dtype=torch.float64)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    f_alone = model.forward(alone, x, model.readout_multiplier(N, torch.tensor([0.5], dtype=torch.float64), "SP"))
    f_bundle = model.forward(bundle, x, model.readout_multiplier(
        N, torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64), "SP"))
    assert torch.equal(f_alone[0], f_bundle[1])
