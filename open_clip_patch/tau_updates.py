"""Per-sample temperature update rules of RGCL (docs/algorithm.md §3), as pure functions.

    python -m pytest -q tests/test_tau_updates.py

Each rule maps (τ, its clipped gradient, the rule's state columns) to new values, elementwise over
the batch's samples; the loss reads and writes the state rows (as lion-pytorch keeps ``update_fn``
apart from its optimizer class). A rule's record names the state columns it keeps per sample (one
per side, e.g. ``tau_m_image``) and the options it takes beyond lr and the τ bounds. A version
names its rule for each FCCO mode (versions.py: ``tau_update``, ``reference_tau_update``).
"""
from dataclasses import dataclass
from typing import Callable, Tuple

# The per-sample τ gradient is clipped to [-5, 5] before any rule sees it (FastCLIP-v2 and
# LibAUC's iSogCLR alike).
TAU_GRAD_CLIP = 5.0
# LibAUC's iSogCLR moving average of the τ gradient: weight of the newest gradient.
ISOGCLR_NEW_GRAD_WEIGHT = 0.9


def clip_tau_gradient(tau_gradients):
    return tau_gradients.clamp(-TAU_GRAD_CLIP, TAU_GRAD_CLIP)


def adam_tau_update(tau, grad, m, v, steps, *, lr, betas, eps, tau_min, tau_max):
    """FastCLIP-v2, exact mode: Adam on each sample's τ, bias-corrected by that sample's own
    update count (Adam's t), then clamp τ.

    t ← t+1, m ← β₁m + (1-β₁)g, v ← β₂v + (1-β₂)g², m̂ = m/(1-β₁ᵗ), v̂ = v/(1-β₂ᵗ),
    τ ← clamp(τ − lr·m̂/(√v̂ + eps), tau_min, tau_max). Returns (τ, m, v, t)."""
    beta1, beta2 = betas
    steps = steps + 1
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad.square()
    m_hat = m / (1 - beta1 ** steps)
    v_hat = v / (1 - beta2 ** steps)
    tau = (tau - lr * (m_hat / (v_hat.sqrt() + eps))).clamp(tau_min, tau_max)
    return tau, m, v, steps


def reference_adam_tau_update(tau, grad, m, v, *, lr, betas, eps, tau_min, tau_max, epoch):
    """FastCLIP-v2 as the reference implementation steps it (reference mode): betas 0 in epoch
    0, moments bias-corrected by the epoch, and no square root on v̂.

    β = (0, 0) if epoch = 0, m ← β₁m + (1-β₁)g, v ← β₂v + (1-β₂)g²,
    m̂ = m/(1-β₁^(epoch+1)), v̂ = v/(1-β₂^(epoch+1)), τ ← clamp(τ − lr·m̂/(v̂ + eps)).
    Returns (τ, m, v)."""
    beta1, beta2 = (0.0, 0.0) if epoch == 0 else betas
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad.square()
    m_hat = m / (1 - beta1 ** (epoch + 1))
    v_hat = v / (1 - beta2 ** (epoch + 1))
    tau = (tau - lr * (m_hat / (v_hat + eps))).clamp(tau_min, tau_max)
    return tau, m, v


def moving_average_tau_update(tau, grad, grad_ema, *, lr, tau_min, tau_max,
                              new_grad_weight=ISOGCLR_NEW_GRAD_WEIGHT):
    """iSogCLR (LibAUC): a plain step along a moving average of the gradient, then clamp τ.

    a ← (1-w)a + w·g,  τ ← clamp(τ − lr·a, tau_min, tau_max).  Returns (τ, a)."""
    grad_ema = (1 - new_grad_weight) * grad_ema + new_grad_weight * grad
    tau = (tau - lr * grad_ema).clamp(tau_min, tau_max)
    return tau, grad_ema


@dataclass(frozen=True)
class TauUpdateRule:
    update: Callable            # (tau, grad, *state, lr=, tau_min=, tau_max=, **options)
    state_columns: Tuple[str, ...]   # per-sample state the rule keeps, in argument order
    options: Tuple[str, ...] = ()    # keyword options beyond lr and the τ bounds


TAU_UPDATE_RULES = {
    "adam": TauUpdateRule(adam_tau_update, ("tau_m", "tau_v", "tau_steps"),
                          options=("betas", "eps")),
    "adam-reference": TauUpdateRule(reference_adam_tau_update, ("tau_m", "tau_v"),
                                    options=("betas", "eps", "epoch")),
    "moving-average": TauUpdateRule(moving_average_tau_update, ("tau_grad_ema",)),
}
