"""The per-sample τ update rules against values worked out by hand (docs/algorithm.md §3)."""
import math

import pytest
import torch

from open_clip_patch.tau_updates import (TAU_UPDATE_RULES, adam_tau_update, clip_tau_gradient,
                                         moving_average_tau_update)

F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


def test_adam_step_by_hand():
    # sample 0: g=2, m=0.5, v=1, betas (0.5, 0.75): m=0.5·0.5+0.5·2=1.25, v=0.75·1+0.25·4=1.75,
    #           τ = 0.3 − 0.1·1.25/(√1.75 + 0.25)
    # sample 1: g=−1 from zero moments: m=−0.5, v=0.25, τ = 0.2 + 0.1·0.5/(0.5 + 0.25) = 0.2667,
    #           above tau_max 0.25: clamped
    # sample 2: g=4 from zero moments: m=2, v=4, τ = 0.05 − 0.1·2/(2 + 0.25) = −0.0389 → tau_min
    tau, m, v = adam_tau_update(t(0.3, 0.2, 0.05), t(2.0, -1.0, 4.0), t(0.5, 0.0, 0.0),
                                t(1.0, 0.0, 0.0), lr=0.1, betas=(0.5, 0.75), eps=0.25,
                                tau_min=0.01, tau_max=0.25)
    assert torch.equal(m, t(1.25, -0.5, 2.0))
    assert torch.equal(v, t(1.75, 0.25, 4.0))
    expected = [0.3 - 0.1 * 1.25 / (math.sqrt(1.75) + 0.25), 0.25, 0.01]
    assert tau.tolist() == pytest.approx(expected, rel=1e-15)


def test_adam_with_zero_betas_steps_by_the_gradient_sign():
    # betas 0 (v2's first epoch): m = g, v = g², so the step is lr·g/(|g| + eps) ≈ lr·sign(g)
    tau, m, v = adam_tau_update(t(0.5, 0.5), t(3.0, -0.02), t(7.0, 7.0), t(9.0, 9.0), lr=0.01,
                                betas=(0.0, 0.0), eps=1e-8, tau_min=0.01, tau_max=1.0)
    assert torch.equal(m, t(3.0, -0.02)) and torch.equal(v, t(9.0, 0.02 ** 2))
    assert tau.tolist() == pytest.approx([0.49, 0.51], abs=1e-8)


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


def test_gradient_clip_is_five():
    assert clip_tau_gradient(t(-7.0, -5.0, 0.3, 5.0, 12.0)).tolist() == [-5, -5, 0.3, 5, 5]


def test_registry_lists_each_rules_state_and_options():
    assert TAU_UPDATE_RULES["adam"].update is adam_tau_update
    assert TAU_UPDATE_RULES["adam"].state_columns == ("tau_m", "tau_v")
    assert TAU_UPDATE_RULES["moving-average"].update is moving_average_tau_update
    assert TAU_UPDATE_RULES["moving-average"].state_columns == ("tau_grad_ema",)
    # every rule runs on exactly its state columns and options, as the loss calls it
    available = {"betas": (0.9, 0.999), "eps": 1e-8}
    for rule in TAU_UPDATE_RULES.values():
        state = [t(0.0, 0.0) for _ in rule.state_columns]
        out = rule.update(t(0.1, 0.2), t(1.0, -1.0), *state, lr=0.01, tau_min=0.01, tau_max=1.0,
                          **{k: available[k] for k in rule.options})
        assert len(out) == 1 + len(rule.state_columns)
