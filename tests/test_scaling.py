"""raysweep.scaling against a hand-written table of per-layer learning rates.

Effective LR = eta * gamma_mult * width_mult (DESIGN.md):
SGD gamma_mult = gamma^2 (gamma <= 1) or gamma^(2/L); Adam gamma (gamma <= 1) or gamma^(1/L);
width_mult muP: N (SGD), sqrt(N) (Adam); SP: 1. ``mup_adam`` (muP Adam only): input and readout eta * gamma_mult,
hidden eta * gamma_mult / sqrt(N). ``raw``: eta * width_mult, no gamma.

The table uses eta = 0.5, N = 64 (sqrt(N) = 8, so 1/N and 1/sqrt(N) differ by 8x), L = 3 and gamma in
{0.1, 1, 10}: gamma applied twice, on the wrong side of 1, or 1/N instead of 1/sqrt(N) all change an entry.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raysweep.scaling import LearningRates, gamma_mult, learning_rates, temperature, width_mult

ETA, WIDTH, DEPTH = 0.5, 64, 3
C_SGD = 10 ** (2 / 3)  # gamma = 10 > 1, SGD: gamma^(2/L) with L = 3
C_ADAM = 10 ** (1 / 3)  # gamma = 10 > 1, Adam: gamma^(1/L) with L = 3

# (optimizer, parametrization, gamma, lr_rule) -> per-layer LR (input, hidden, readout), by hand.
TABLE = {
    # --- study: every layer eta * gamma_mult * width_mult
    ("SGD", "SP", 0.1, "study"): (0.005, 0.005, 0.005),  # 0.5 * 0.1^2
    ("SGD", "SP", 1.0, "study"): (0.5, 0.5, 0.5),
    ("SGD", "SP", 10.0, "study"): (0.5 * C_SGD,) * 3,
    ("SGD", "muP", 0.1, "study"): (0.32, 0.32, 0.32),  # 0.5 * 0.01 * 64
    ("SGD", "muP", 1.0, "study"): (32.0, 32.0, 32.0),
    ("SGD", "muP", 10.0, "study"): (32.0 * C_SGD,) * 3,
    ("Adam", "SP", 0.1, "study"): (0.05, 0.05, 0.05),  # 0.5 * 0.1
    ("Adam", "SP", 1.0, "study"): (0.5, 0.5, 0.5),
    ("Adam", "SP", 10.0, "study"): (0.5 * C_ADAM,) * 3,
    ("Adam", "muP", 0.1, "study"): (0.4, 0.4, 0.4),  # 0.5 * 0.1 * 8
    ("Adam", "muP", 1.0, "study"): (4.0, 4.0, 4.0),
    ("Adam", "muP", 10.0, "study"): (4.0 * C_ADAM,) * 3,
    # --- mup_adam: differs from study only for muP Adam
    ("SGD", "SP", 0.1, "mup_adam"): (0.005, 0.005, 0.005),
    ("SGD", "SP", 1.0, "mup_adam"): (0.5, 0.5, 0.5),
    ("SGD", "SP", 10.0, "mup_adam"): (0.5 * C_SGD,) * 3,
    ("SGD", "muP", 0.1, "mup_adam"): (0.32, 0.32, 0.32),
    ("SGD", "muP", 1.0, "mup_adam"): (32.0, 32.0, 32.0),
    ("SGD", "muP", 10.0, "mup_adam"): (32.0 * C_SGD,) * 3,
    ("Adam", "SP", 0.1, "mup_adam"): (0.05, 0.05, 0.05),
    ("Adam", "SP", 1.0, "mup_adam"): (0.5, 0.5, 0.5),
    ("Adam", "SP", 10.0, "mup_adam"): (0.5 * C_ADAM,) * 3,
    ("Adam", "muP", 0.1, "mup_adam"): (0.05, 0.00625, 0.05),  # hidden 0.05 / 8
    ("Adam", "muP", 1.0, "mup_adam"): (0.5, 0.0625, 0.5),
    ("Adam", "muP", 10.0, "mup_adam"): (0.5 * C_ADAM, 0.0625 * C_ADAM, 0.5 * C_ADAM),
    # --- raw: eta * width_mult, no gamma
    ("SGD", "SP", 0.1, "raw"): (0.5, 0.5, 0.5),
    ("SGD", "SP", 1.0, "raw"): (0.5, 0.5, 0.5),
    ("SGD", "SP", 10.0, "raw"): (0.5, 0.5, 0.5),
    ("SGD", "muP", 0.1, "raw"): (32.0, 32.0, 32.0),
    ("SGD", "muP", 1.0, "raw"): (32.0, 32.0, 32.0),
    ("SGD", "muP", 10.0, "raw"): (32.0, 32.0, 32.0),
    ("Adam", "SP", 0.1, "raw"): (0.5, 0.5, 0.5),
    ("Adam", "SP", 1.0, "raw"): (0.5, 0.5, 0.5),
    ("Adam", "SP", 10.0, "raw"): (0.5, 0.5, 0.5),
    ("Adam", "muP", 0.1, "raw"): (4.0, 4.0, 4.0),
    ("Adam", "muP", 1.0, "raw"): (4.0, 4.0, 4.0),
    ("Adam", "muP", 10.0, "raw"): (4.0, 4.0, 4.0),
}


def test_table_is_complete():
    assert len(TABLE) == 2 * 2 * 3 * 3


@pytest.mark.parametrize("key", sorted(TABLE, key=str), ids=lambda k: "-".join(map(str, k)))
def test_learning_rates_match_hand_table(key):
    optimizer, parametrization, gamma, rule = key
    rates = learning_rates(eta=ETA, gamma=gamma, width=WIDTH, depth=DEPTH, parametrization=parametrization,
                           optimizer=optimizer, lr_rule=rule)
    assert isinstance(rates, LearningRates)
    assert rates.rule == rule
    assert len(rates.per_layer) == DEPTH
    assert rates.per_layer == pytest.approx(TABLE[key], rel=1e-12)
    assert rates.effective == pytest.approx(TABLE[key][0], rel=1e-12)
    assert rates.hidden == pytest.approx(TABLE[key][1], rel=1e-12)


@pytest.mark.parametrize(
    "optimizer,gamma,want",
    [("SGD", 0.1, 0.01), ("SGD", 0.5, 0.25), ("SGD", 1.0, 1.0), ("SGD", 8.0, 4.0),  # 8^(2/3) = 4
     ("Adam", 0.1, 0.1), ("Adam", 0.5, 0.5), ("Adam", 1.0, 1.0), ("Adam", 8.0, 2.0)],  # 8^(1/3) = 2
)
def test_gamma_mult_closed_form(optimizer, gamma, want):
    assert gamma_mult(optimizer, gamma, 3) == pytest.approx(want, rel=1e-12)


def test_gamma_mult_uses_depth_above_one_only():
    assert gamma_mult("SGD", 16.0, 2) == pytest.approx(16.0)  # 16^(2/2)
    assert gamma_mult("SGD", 16.0, 4) == pytest.approx(4.0)  # 16^(2/4)
    assert gamma_mult("Adam", 16.0, 4) == pytest.approx(2.0)  # 16^(1/4)
    assert gamma_mult("SGD", 0.25, 4) == pytest.approx(0.0625)  # below 1: gamma^2 whatever L
    assert gamma_mult("Adam", 0.25, 4) == pytest.approx(0.25)


def test_width_mult_closed_form():
    assert width_mult("SGD", 256, "muP") == 256.0
    assert width_mult("Adam", 256, "muP") == 16.0
    assert width_mult("SGD", 256, "SP") == 1.0
    assert width_mult("Adam", 256, "SP") == 1.0


@pytest.mark.parametrize("depth,want", [(2, (0.5, 0.5)), (4, (0.5, 0.0625, 0.0625, 0.5))])
def test_mup_adam_hidden_layers_only(depth, want):
    """Depth 2 has no N x N layer; depth 4 has two. Input and readout keep eta * gamma_mult."""
    rates = learning_rates(eta=ETA, gamma=1.0, width=WIDTH, depth=depth, parametrization="muP", optimizer="Adam",
                           lr_rule="mup_adam")
    assert rates.per_layer == pytest.approx(want, rel=1e-12)
    assert rates.hidden == (None if depth == 2 else pytest.approx(0.0625))


def test_temperature_uses_base_eta():
    assert temperature(0.5, 32) == 0.015625
    assert temperature(1e-3, 1) == 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [({"optimizer": "RMSprop"}, "optimizer"), ({"lr_rule": "mup"}, "lr_rule")],
)
def test_unknown_names_raise(kwargs, match):
    args = dict(eta=ETA, gamma=1.0, width=WIDTH, depth=DEPTH, parametrization="muP", optimizer="SGD", lr_rule="study")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        learning_rates(**args)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 8192),
    gamma=st.floats(1e-4, 1.0),
    eta=st.floats(1e-6, 1e3),
    depth=st.integers(2, 6),
    optimizer=st.sampled_from(["SGD", "Adam"]),
)
def test_sp_equals_mup_at_gamma_over_sqrt_width(width, gamma, eta, depth, optimizer):
    """SP(N, gamma, eta) and muP(N, gamma / sqrt(N), eta) train at the same rates (study rule, gamma <= 1): the
    scaling half of the step-for-step equivalence."""
    sp = learning_rates(eta=eta, gamma=gamma, width=width, depth=depth, parametrization="SP", optimizer=optimizer,
                        lr_rule="study")
    mup = learning_rates(eta=eta, gamma=gamma / math.sqrt(width), width=width, depth=depth, parametrization="muP",
                         optimizer=optimizer, lr_rule="study")
    assert mup.per_layer == pytest.approx(sp.per_layer, rel=1e-12)


# torch_sp (PyTorch's default init, no multipliers): layer l trains at eta * gamma_mult * fan_in_l (SGD) or
# eta * gamma_mult * sqrt(fan_in_l) (Adam), the rate on the N(0, 1) weights that the unscaled step implies.
@pytest.mark.parametrize(
    "optimizer, gamma, lr_rule, expected",
    [
        ("SGD", 1.0, "study", (0.5 * 16, 0.5 * 64, 0.5 * 64)),
        ("SGD", 0.1, "study", (0.5 * 0.01 * 16, 0.5 * 0.01 * 64, 0.5 * 0.01 * 64)),
        ("SGD", 0.1, "raw", (0.5 * 16, 0.5 * 64, 0.5 * 64)),
        ("Adam", 1.0, "study", (0.5 * 4, 0.5 * 8, 0.5 * 8)),
        ("Adam", 10.0, "study", (0.5 * 10 ** (1 / 3) * 4, 0.5 * 10 ** (1 / 3) * 8, 0.5 * 10 ** (1 / 3) * 8)),
    ],
)
def test_torch_sp_rates_grow_with_fan_in(optimizer, gamma, lr_rule, expected):
    rates = learning_rates(eta=0.5, gamma=gamma, width=64, depth=3, parametrization="torch_sp",
                           optimizer=optimizer, lr_rule=lr_rule, dim=16)
    assert rates.per_layer == pytest.approx(expected, rel=1e-12)
    assert rates.effective == pytest.approx(expected[-1]) and rates.hidden == pytest.approx(expected[1])


def test_torch_sp_without_dim_has_no_input_rate():
    rates = learning_rates(eta=0.5, gamma=1.0, width=64, depth=2, parametrization="torch_sp", optimizer="SGD",
                           lr_rule="study")
    assert math.isnan(rates.per_layer[0]) and rates.per_layer[1] == 32.0


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_torch_sp_steps_match_pytorch_default_training(optimizer):
    """torch_sp is PyTorch's default MLP: W_t ~ N(0, 1/fan_in), no multipliers, trained at eta on W_t. Training
    raysweep's N(0, 1) weights at the torch_sp rates must give W' / sqrt(fan_in) == W_t after every step (exactly
    for SGD; for Adam up to its eps, which enters as eps * sqrt(fan_in) on the rescaled gradients)."""
    import torch

    from raysweep import model

    torch.manual_seed(0)
    dim, width, depth, eta = 8, 32, 3, 0.01
    widths = model.layer_widths(dim, width, depth, 1)
    w_ours = [w.double() for w in model.init_weights(widths, [1], dtype=torch.float64)]
    w_torch = [(w[0] / math.sqrt(w.shape[1])).clone().requires_grad_(True) for w in w_ours]
    w_ours = [w.clone().requires_grad_(True) for w in w_ours]
    rates = learning_rates(eta=eta, gamma=1.0, width=width, depth=depth, parametrization="torch_sp",
                           optimizer=optimizer, lr_rule="study", dim=dim).per_layer
    mult = model.readout_multiplier(width, torch.ones(1, dtype=torch.float64), "torch_sp")
    opt_t = (torch.optim.SGD if optimizer == "SGD" else torch.optim.Adam)(w_torch, lr=eta)
    opt_o = (torch.optim.SGD if optimizer == "SGD" else torch.optim.Adam)(
        [{"params": [w], "lr": lr} for w, lr in zip(w_ours, rates)])
    for _ in range(3):
        x = torch.randn(16, dim, dtype=torch.float64)
        y = (x.sum(1, keepdim=True)) ** 2 / dim
        h = x
        for w in w_torch[:-1]:
            h = torch.relu(h @ w)
        loss_t = 0.5 * ((h @ w_torch[-1] - y) ** 2).sum(1).mean()
        loss_o = 0.5 * ((model.forward(w_ours, x, mult)[0] - y) ** 2).sum(1).mean()
        assert loss_o.item() == pytest.approx(loss_t.item(), rel=1e-10 if optimizer == "SGD" else 1e-4)
        for opt, loss in ((opt_t, loss_t), (opt_o, loss_o)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for w_o, w_t in zip(w_ours, w_torch):
        tol = dict(rtol=1e-9, atol=1e-12) if optimizer == "SGD" else dict(rtol=1e-2, atol=1e-4)
        torch.testing.assert_close(w_o.detach()[0] / math.sqrt(w_o.shape[1]), w_t.detach(), **tol)
