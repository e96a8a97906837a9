"""The hand-written training pass (raysweep.model.forward_cached / backward, raysweep.step.loss_and_dfa) against
autograd through the public rule (raysweep.model.forward, raysweep.train.loss_per_member), in float64.

Gradients must equal autograd's to 1e-12 relative; the fused SGD update must equal ``W - lr * grad`` (autograd's
grad) to the same tolerance; one Adam step from the hand gradients must equal torch.optim.Adam's from autograd's.
Every case: SP and muP, L = 1, 2 and 3, a scalar readout (the mul-and-sum path) and 10 outputs (the bmm path), MSE
(both conventions) and cross-entropy, inputs shared by the members ``[B, D]`` and per member ``[K, B, D]``, members
with different gammas and learning rates. The shapes are all different (D=5, N=7, B=6, K=3) so that a transposed
operand or a fan_in / fan_out mix-up cannot cancel out.
"""

from __future__ import annotations

import math

import pytest
import torch

from raysweep import model, train
from raysweep.step import (
    ADAM_BETAS,
    ADAM_EPS,
    CHUNK_MEMBERS,
    forward_chunked,
    loss_and_dfa,
    loss_coefficients,
    loss_per_member,
    update,
)

D, N, B = 5, 7, 6
GAMMAS = [0.5, 1.0, 3.0]
K = len(GAMMAS)
RTOL = 1e-12


def make_case(depth: int, n_out: int, loss: str, parametrization: str, shared: bool, seed: int = 0):
    """Weights moved away from their init (so relu masks and f - f0 are not trivial), inputs, targets, f0, a."""
    gen = torch.Generator().manual_seed(seed)
    widths = model.layer_widths(D, N, depth, n_out)
    init = model.init_weights(widths, [11, 12, 13], dtype=torch.float64)
    weights = [w + 0.3 * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in init]
    x = torch.randn((B, D) if shared else (K, B, D), generator=gen, dtype=torch.float64)
    a = model.readout_multiplier(N, torch.tensor(GAMMAS, dtype=torch.float64), parametrization)
    with torch.no_grad():
        f0 = model.forward(init, x, a)
    if loss == "xent":
        y = torch.randint(0, n_out, (B,) if shared else (K, B), generator=gen)
    else:
        y = torch.randn((B, n_out) if shared else (K, B, n_out), generator=gen, dtype=torch.float64)
    return weights, x, y, f0, a


def autograd_reference(weights, x, y, f0, a, loss: str, convention: str):
    """Per-member losses and d(sum_k loss_k)/dW by autograd through model.forward and loss_per_member."""
    params = [w.clone().requires_grad_(True) for w in weights]
    losses = loss_per_member(model.forward(params, x, a) - f0, y, loss, convention)
    grads = torch.autograd.grad(losses.sum(), params)
    return losses.detach(), [g.detach() for g in grads]


def hand_pass(weights, x, y, f0, a, loss: str, convention: str):
    """What the trainer computes: forward_cached, the loss and a * dloss/df, ready for model.backward."""
    n_out = weights[-1].shape[-1]
    loss_coef, df_coef = loss_coefficients(loss, convention, B, n_out)
    t = f0 if loss == "xent" else f0 + y
    raw, acts = model.forward_cached(weights, x)
    losses, dfa = loss_and_dfa(raw, a, t, y if loss == "xent" else None, loss_coef, a * df_coef)
    return losses, acts, dfa


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = float(want.abs().max())
    assert scale > 0.0, what  # a zero gradient would make the comparison vacuous
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


CASES = [
    pytest.param(depth, n_out, loss, convention, id=f"L{depth}-out{n_out}-{loss}-{convention}")
    for depth in (1, 2, 3)
    for n_out, loss, convention in ((1, "mse", "half_sum"), (1, "mse", "study"), (10, "mse", "half_sum"),
                                    (10, "mse", "study"), (10, "xent", "half_sum"))
]


@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "member_x"])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize("depth,n_out,loss,convention", CASES)
def test_gradients_equal_autograd(depth, n_out, loss, convention, parametrization, shared):
    """model.backward (the Adam path: explicit gradients) == autograd, and the losses == loss_per_member."""
    weights, x, y, f0, a = make_case(depth, n_out, loss, parametrization, shared)
    want_losses, want = autograd_reference(weights, x, y, f0, a, loss, convention)
    losses, acts, dfa = hand_pass(weights, x, y, f0, a, loss, convention)
    assert_close(losses, want_losses, "losses")
    grads = model.backward(weights, acts, dfa)
    assert [g.shape for g in grads] == [w.shape for w in weights]
    for l, (g, w) in enumerate(zip(grads, want)):
        assert_close(g, w, f"grad of layer {l}")


@pytest.mark.parametrize("same_rate_every_layer", [True, False], ids=["one_rate", "per_layer_rates"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "member_x"])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize("depth,n_out,loss,convention", CASES)
def test_fused_sgd_update_equals_w_minus_lr_grad(depth, n_out, loss, convention, parametrization, shared,
                                                   same_rate_every_layer):
    """model.backward(sgd_lr=...) (the SGD path: the update inside the gradient's bmm) moves every weight by
    -lr * grad (autograd's grad), each member at its own rate: one tensor for every layer (the rate is folded into
    dfa) or one per layer (it goes on the smaller operand of each bmm)."""
    weights, x, y, f0, a = make_case(depth, n_out, loss, parametrization, shared, seed=1)
    _, want = autograd_reference(weights, x, y, f0, a, loss, convention)
    # rates that move each weight by ~10% of its size: the delta then keeps ~15 significant digits
    base = [0.1 * float(w.abs().max()) / float(g.abs().max()) for w, g in zip(weights, want)]
    member = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64).reshape(-1, 1, 1)
    if same_rate_every_layer:
        lrs = [member * min(base)] * depth
    else:
        lrs = [member * b for b in base]
    moved = [w.clone() for w in weights]
    _, acts, dfa = hand_pass(moved, x, y, f0, a, loss, convention)
    assert model.backward(moved, acts, dfa, sgd_lr=lrs) == []
    for l, (w0, w1, g, lr) in enumerate(zip(weights, moved, want, lrs)):
        assert_close(w1 - w0, -lr * g, f"update of layer {l}")


@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "member_x"])
@pytest.mark.parametrize("parametrization", ["SP", "muP"])
@pytest.mark.parametrize("depth,n_out,loss,convention", CASES)
def test_adam_step_from_hand_gradients_equals_torch_adam(depth, n_out, loss, convention, parametrization, shared):
    """Two Adam steps: hand gradients + step.update == autograd gradients + torch.optim.Adam, per member and layer."""
    weights, x, y, f0, a = make_case(depth, n_out, loss, parametrization, shared, seed=2)
    rates = [[1e-2 * (l + 1) * (k + 1) for l in range(depth)] for k in range(K)]
    lrs = [torch.tensor([rates[k][l] for k in range(K)], dtype=torch.float64).reshape(-1, 1, 1)
           for l in range(depth)]
    ours = [w.clone() for w in weights]
    state = [(torch.zeros_like(w), torch.zeros_like(w)) for w in ours]
    params = [[w[k].clone().requires_grad_(True) for w in weights] for k in range(K)]
    opts = [torch.optim.Adam([{"params": [p], "lr": rates[k][l]} for l, p in enumerate(params[k])],
                             betas=ADAM_BETAS, eps=ADAM_EPS) for k in range(K)]
    for step in (1, 2):
        _, acts, dfa = hand_pass(ours, x, y, f0, a, loss, convention)
        update(ours, model.backward(ours, acts, dfa), lrs, state, step)
        _, ref = autograd_reference([torch.stack([params[k][l].detach() for k in range(K)]) for l in range(depth)],
                                    x, y, f0, a, loss, convention)
        for k in range(K):
            for l, p in enumerate(params[k]):
                p.grad = ref[l][k].clone()
            opts[k].step()
    for l in range(depth):
        assert_close(ours[l], torch.stack([params[k][l].detach() for k in range(K)]), f"layer {l}")


@pytest.mark.parametrize("n_out", [1, 10])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "member_x"])
def test_forward_cached_is_the_rule_and_member_independent(n_out, shared, monkeypatch):
    """forward_cached's raw output times the readout multiplier is model.forward (to rounding); its layer inputs are
    x and the post-activations; a member's numbers are bit-identical alone and in the bundle, and the chunked no-grad
    forward (members in groups, samples in pieces) gives the same bits as one call."""
    weights, x, _, _, a = make_case(3, n_out, "mse", "muP", shared)
    raw, acts = model.forward_cached(weights, x)
    hidden: list[torch.Tensor] = []
    want = model.forward(weights, x, a, hidden=hidden)
    torch.testing.assert_close(raw * a, want, rtol=RTOL, atol=RTOL * float(want.abs().max()))
    assert acts[0] is x and len(acts) == 3
    for got_h, want_h in zip(acts[1:], hidden):
        torch.testing.assert_close(got_h, want_h, rtol=RTOL, atol=1e-14)
    for k in range(K):
        alone, _ = model.forward_cached([w[k:k + 1] for w in weights], x if shared else x[k:k + 1])
        assert torch.equal(alone[0], raw[k])
    monkeypatch.setattr("raysweep.step.CHUNK_ELEMENTS", CHUNK_MEMBERS * N * 500)  # pieces of 500 samples
    many = torch.randn(3000, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    big = [w.repeat(7, 1, 1) for w in weights]  # 21 members: three groups of the chunked forward
    chunked = forward_chunked(big, many)
    for k in (0, 10, 20):
        assert torch.equal(chunked[k], forward_chunked([w[k:k + 1] for w in big], many)[0])
    torch.testing.assert_close(chunked, model.forward_cached(big, many, keep=False)[0], rtol=RTOL,
                               atol=RTOL * float(chunked.abs().max()))


def test_backward_handles_dead_units_and_nan_like_autograd():
    """A unit that is off for every sample gets exactly zero gradient (relu mask on the post-activation, as autograd's
    threshold_backward), and a NaN weight makes that member's gradients NaN without touching the other members."""
    weights, x, y, f0, a = make_case(3, 1, "mse", "muP", True, seed=3)
    weights[0][0, :, 2] = 0.0  # member 0: unit 2 of layer 1 is off (pre-activation exactly 0) for every sample
    weights[1][1, 0, 0] = math.nan
    losses, acts, dfa = hand_pass(weights, x, y, f0, a, "mse", "half_sum")
    grads = model.backward(weights, acts, dfa)
    _, want = autograd_reference(weights, x, y, f0, a, "mse", "half_sum")
    assert torch.equal(grads[0][0, :, 2], torch.zeros(D, dtype=torch.float64))
    assert math.isnan(float(losses[1])) and torch.isfinite(losses[[0, 2]]).all()
    for g, w in zip(grads, want):
        assert torch.isnan(g[1]).any() and torch.isnan(w[1]).any()
        for k in (0, 2):
            assert_close(g[k], w[k], "healthy member")


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
@pytest.mark.parametrize("seeds", [[0, 0, 0, 0, 0], [0, 1, 0, 2, 1]], ids=["one_stream", "three_streams"])
def test_members_in_groups_equal_one_group(monkeypatch, optimizer, seeds):
    """Large models train their members a cache-sized group at a time (step.STEP_GROUP_BYTES): the curves are
    bit-identical to one group, divergence included (the last member's eta diverges)."""
    from raysweep.data import build_task

    exp = {"family": "poly_online", "dim": 8, "n_train": 64, "steps": 30, "report_every": 10, "dtype": "float64",
           "data_seed": 0}
    task = build_task(exp, dtype=torch.float64)
    base = 0.05 if optimizer == "SGD" else 3e-3
    points = [{"batch_size": 8, "eta": base * (k + 1) if k < 4 else 1e6, "width": 16, "gamma": 1.0 + 0.5 * k,
               "depth": 3, "seed": s, "parametrization": "muP", "optimizer": optimizer, "loss": "mse",
               "lr_rule": "study"} for k, s in enumerate(seeds)]

    def curves():
        return [(r.step, r.members, r.train_loss, r.eval_loss, r.diverged)
                for r in train.train_bundle(task, exp, points)]

    whole = curves()
    monkeypatch.setattr("raysweep.step.STEP_GROUP_BYTES", 1)  # one member per group
    alone = curves()
    monkeypatch.setattr("raysweep.step.STEP_GROUP_BYTES",
                        2 * 8 * (8 * 16 + 16 * 16 + 16) * (3 if optimizer == "Adam" else 1))
    pairs = curves()  # groups of two
    assert any(4 in r[4] for r in whole) and whole[-1][0] == 30  # eta = 1e6 diverges; the others run to the end
    assert whole == alone == pairs
