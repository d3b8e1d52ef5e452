"""The per-sample τ update rules against values worked out by hand (docs/algorithm.md §3)."""
import math

import pytest
import torch

from open_clip_patch.tau_updates import (TAU_UPDATE_RULES, adam_tau_update, clip_tau_gradient,
                                         moving_average_tau_update, reference_adam_tau_update)

F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


def test_adam_step_by_hand():
    # exact mode: Adam bias-corrected by each sample's own update count t (docs/algorithm.md §3).
    # sample 0: t 1→2, g=2, m=0.5, v=1, betas (0.5, 0.75): m=1.25, v=1.75,
    #           m̂ = 1.25/(1−0.25) = 5/3, v̂ = 1.75/(1−0.5625) = 4, τ = 0.3 − 0.1·(5/3)/(2 + 0.25)
    # sample 1: t 0→1, g=−1 from zero moments: m̂ = −1, v̂ = 1, τ = 0.2 + 0.1/1.25 = 0.28 → 0.25
    # sample 2: t 0→1, g=4: m̂ = 4, v̂ = 16, τ = 0.05 − 0.1·4/4.25 = −0.044 → tau_min 0.01
    tau, m, v, steps = adam_tau_update(t(0.3, 0.2, 0.05), t(2.0, -1.0, 4.0), t(0.5, 0.0, 0.0),
                                       t(1.0, 0.0, 0.0), t(1.0, 0.0, 0.0), lr=0.1,
                                       betas=(0.5, 0.75), eps=0.25, tau_min=0.01, tau_max=0.25)
    assert torch.equal(m, t(1.25, -0.5, 2.0))
    assert torch.equal(v, t(1.75, 0.25, 4.0))
    assert torch.equal(steps, t(2.0, 1.0, 1.0))
    expected = [0.3 - 0.1 * (5 / 3) / (2 + 0.25), 0.25, 0.01]
    assert tau.tolist() == pytest.approx(expected, rel=1e-15)


def test_adam_first_update_steps_by_the_gradient_sign_whatever_the_betas():
    # t = 1: m̂ = g, v̂ = g² for any betas, so the step is lr·g/(|g| + eps) ≈ lr·sign(g)
    for betas in ((0.0, 0.0), (0.9, 0.999)):
        tau, m, v, steps = adam_tau_update(t(0.5, 0.5), t(3.0, -0.02), t(0.0, 0.0),
                                           t(0.0, 0.0), t(0.0, 0.0), lr=0.01, betas=betas,
                                           eps=1e-8, tau_min=0.01, tau_max=1.0)
        assert tau.tolist() == pytest.approx([0.49, 0.51], abs=1e-8)


def test_reference_adam_step_by_hand():
    # reference mode: betas 0 in epoch 0, bias correction by the epoch, no square root.
    # epoch 0: m = g = 2, v = g² = 4, τ = 0.3 − 0.1·2/(4 + 0.25)
    tau, m, v = reference_adam_tau_update(t(0.3), t(2.0), t(7.0), t(9.0), lr=0.1,
                                          betas=(0.5, 0.75), eps=0.25, tau_min=0.01,
                                          tau_max=1.0, epoch=0)
    assert (m.item(), v.item()) == (2.0, 4.0)
    assert tau.item() == pytest.approx(0.3 - 0.1 * 2 / 4.25, rel=1e-15)
    # epoch 2: m = 0.5·0.5 + 0.5·2 = 1.25, v = 0.75·1 + 0.25·4 = 1.75,
    #          m̂ = 1.25/(1 − 0.125), v̂ = 1.75/(1 − 0.421875), τ = 0.3 − 0.1·m̂/(v̂ + 0.25)
    tau, m, v = reference_adam_tau_update(t(0.3), t(2.0), t(0.5), t(1.0), lr=0.1,
                                          betas=(0.5, 0.75), eps=0.25, tau_min=0.01,
                                          tau_max=1.0, epoch=2)
    m_hat, v_hat = 1.25 / 0.875, 1.75 / 0.578125
    assert (m.item(), v.item()) == (1.25, 1.75)
    assert tau.item() == pytest.approx(0.3 - 0.1 * m_hat / (v_hat + 0.25), rel=1e-15)
    # τ bounds hold in both directions
    tau, _, _ = reference_adam_tau_update(t(0.02, 0.9), t(5.0, -5.0), t(0.0, 0.0), t(0.0, 0.0),
                                          lr=1.0, betas=(0.9, 0.999), eps=1e-8, tau_min=0.01,
                                          tau_max=1.0, epoch=0)
    assert tau.tolist() == [0.01, 1.0]


def test_moving_average_step_by_hand():
    # a = 0.1·a_old + 0.9·g: 0.1·1 + 0.9·2 = 1.9 and 0.1·(−4) + 0.9·0 = −0.4;
    # τ = 0.03 − 0.01·1.9 = 0.011, 0.03 + 0.004 = 0.034, then clamp to [0.005, 0.032]
    tau, ema = moving_average_tau_update(t(0.03, 0.03), t(2.0, 0.0), t(1.0, -4.0), lr=0.01,
                                         tau_min=0.005, tau_max=0.032)
    assert ema.tolist() == pytest.approx([1.9, -0.4], rel=1e-15)
    assert tau.tolist() == pytest.approx([0.011, 0.032], rel=1e-14)
    # the newest gradient's weight is an option (LibAUC uses 0.9)
    _, ema = moving_average_tau_update(t(0.03), t(2.0), t(1.0), lr=0.01, tau_min=0.005,
                                       tau_max=0.05, new_grad_weight=0.5)
    assert ema.item() == pytest.approx(1.5)


def test_gradient_clip_is_five_on_both_sides():
    assert clip_tau_gradient(t(-7.0, -5.0, 0.3, 5.0, 12.0)).tolist() == [-5, -5, 0.3, 5, 5]
    assert clip_tau_gradient(t(-1e6)).item() == -5 and clip_tau_gradient(t(1e6)).item() == 5


def test_registry_lists_each_rules_state_and_options():
    assert TAU_UPDATE_RULES["adam"].update is adam_tau_update
    assert TAU_UPDATE_RULES["adam"].state_columns == ("tau_m", "tau_v", "tau_steps")
    assert TAU_UPDATE_RULES["adam-reference"].update is reference_adam_tau_update
    assert TAU_UPDATE_RULES["adam-reference"].state_columns == ("tau_m", "tau_v")
    assert TAU_UPDATE_RULES["moving-average"].update is moving_average_tau_update
    assert TAU_UPDATE_RULES["moving-average"].state_columns == ("tau_grad_ema",)
    # every rule runs on exactly its state columns and options, as the loss calls it
    available = {"betas": (0.9, 0.999), "eps": 1e-8, "epoch": 1}
    for rule in TAU_UPDATE_RULES.values():
        state = [t(0.0, 0.0) for _ in rule.state_columns]
        out = rule.update(t(0.1, 0.2), t(1.0, -1.0), *state, lr=0.01, tau_min=0.01, tau_max=1.0,
                          **{k: available[k] for k in rule.options})
        assert len(out) == 1 + len(rule.state_columns)
