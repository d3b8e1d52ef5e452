"""Reference mode (docs/algorithm.md §3, §9) against an independent float64 re-derivation of the
reference implementation's formulas, written here in its own terms (linear u·e^(−b), a running
max b per sample, ε and the 1e-35 reset on the shifted u, Adam bias-corrected by the epoch with
no square root, no τᵢ prefactor, the updated τ in the negative part, ½[anchor + negative]).

    python -m pytest -q tests/test_losses_reference.py
"""
import math

import pytest
import torch

from test_losses import (EPS, F64, ThreadComm, ThreadGroup, assert_close, inner_functions,
                         make_loss, on_ranks, unit_rows)

SIDES = ("image", "text")


class ReferenceV2:
    """The reference's v2 state and step for the whole global batch, as loops of formulas.
    Stores, per sample and side: u_s = u·e^(−b), b, τ, m, v."""

    def __init__(self, data_size, tau0, rho, lr, betas, adam_eps, eps=EPS):
        self.rho, self.lr, self.betas, self.adam_eps, self.eps = rho, lr, betas, adam_eps, eps
        self.u = {s: torch.zeros(data_size, dtype=F64) for s in SIDES}
        self.b = {s: torch.zeros(data_size, dtype=F64) for s in SIDES}
        self.tau = {s: torch.full((data_size,), tau0, dtype=F64) for s in SIDES}
        self.m = {s: torch.zeros(data_size, dtype=F64) for s in SIDES}
        self.v = {s: torch.zeros(data_size, dtype=F64) for s in SIDES}

    @staticmethod
    def differences(img, txt, side, i):
        """d_ij for anchor i over all j of the global batch (0 at j = i)."""
        if side == "image":
            return img[i] @ txt.T - img[i] @ txt[i]
        return img @ txt[i] - img[i] @ txt[i]

    def step(self, img, txt, ids, gamma, epoch):
        """Update every anchor of the global batch; returns the τ each had before."""
        n = img.shape[0]
        before = {s: self.tau[s][ids].clone() for s in SIDES}
        beta1, beta2 = (0.0, 0.0) if epoch == 0 else self.betas
        for side in SIDES:
            for i in range(n):
                k = int(ids[i])
                z = self.differences(img, txt, side, i) / self.tau[side][k]
                b_old, b_new = self.b[side][k].item(), max(self.b[side][k].item(), z.max().item())
                others = [j for j in range(n) if j != i]
                g = sum(math.exp(z[j] - b_new) for j in others) / (n - 1)
                u_old = self.u[side][k].item()
                stale = gamma < 1 and (u_old < 1e-35 or not math.isfinite(u_old))
                if gamma == 1 or stale:
                    u = g
                else:
                    u = (1 - gamma) * u_old * math.exp(b_old - b_new) + gamma * g
                weighted = sum(math.exp(z[j] - b_new) * z[j] for j in others)
                grad = -weighted / (u + self.eps) / (n - 1) + math.log(u + self.eps) + b_new \
                    + self.rho
                grad = min(max(grad, -5.0), 5.0)
                m = beta1 * self.m[side][k].item() + (1 - beta1) * grad
                v = beta2 * self.v[side][k].item() + (1 - beta2) * grad ** 2
                m_hat, v_hat = m / (1 - beta1 ** (epoch + 1)), v / (1 - beta2 ** (epoch + 1))
                tau = self.tau[side][k].item() - self.lr * m_hat / (v_hat + self.adam_eps)
                self.tau[side][k] = min(max(tau, 0.01), 1.0)
                self.u[side][k], self.b[side][k] = u, b_new
                self.m[side][k], self.v[side][k] = m, v
        return before

    def rank_surrogate(self, img, txt, ids, tau_before, rank, world):
        """One rank's loss: ½[mean over its anchors of g_s/(u_s+ε) + the negative half], with
        gradient through its local rows only (the others arrive gathered, without gradient)."""
        n = img.shape[0]
        b = n // world
        local = range(rank * b, (rank + 1) * b)
        fixed_img, fixed_txt = img.detach(), txt.detach()
        anchor = negative = 0.0
        for side in SIDES:
            for i in local:
                k = int(ids[i])
                if side == "image":   # live: the anchor and its positive, not the negatives
                    d = img[i] @ fixed_txt.T - img[i] @ txt[i]
                else:
                    d = fixed_img @ txt[i] - img[i] @ txt[i]
                z = d / tau_before[side][i] - self.b[side][k]
                mask = torch.arange(n) != i
                anchor = anchor + torch.exp(z[mask]).sum() / (n - 1) / (self.u[side][k] + self.eps)
            for a in range(n):          # every anchor, against this rank's negatives
                k = int(ids[a])
                positive = fixed_img[a] @ fixed_txt[a]
                for j in local:
                    if j == a:
                        continue
                    sim = fixed_img[a] @ txt[j] if side == "image" else img[j] @ fixed_txt[a]
                    z = (sim - positive) / self.tau[side][k] - self.b[side][k]
                    negative = negative + torch.exp(z) / (b * (n - 1) / n) / n \
                        / (self.u[side][k] + self.eps)
        return 0.5 * (anchor / b + negative)


def run_rank_losses(losses, img, txt, ids):
    """Each simulated rank's loss on its slice."""
    b = img.shape[0] // len(losses)
    parts = [slice(r * b, (r + 1) * b) for r in range(len(losses))]
    return on_ranks(losses, lambda r, loss: loss(img[parts[r]], txt[parts[r]], None, ids[parts[r]]))


def v2_losses(world, data_size, **kwargs):
    if world == 1:
        return [make_loss("v2", data_size, fcco_mode="reference", **kwargs)]
    group = ThreadGroup(world)
    return [make_loss("v2", data_size, fcco_mode="reference", comm=ThreadComm(group, r), **kwargs)
            for r in range(world)]


@pytest.mark.parametrize("world", [1, 2])
def test_v2_reference_mode_follows_the_reference_tau_and_u_over_four_epochs(world):
    """Four epochs of two steps, γ 1 → 0.7 → 0.4 → 0.25, every sample seen once an epoch: the
    stored τ, u·e^(−b), b and moments follow the reference's recursion, and the averaged
    per-rank feature gradients equal the reference's. Two samples start with a large shift
    b = 30 (ε·e^b ≫ u: the shifted ε matters), one later gets b = 150 (u·e^(−b) < 1e-35: reset)."""
    data_size, n, d = 8, 4, 6
    rho, lr, betas, adam_eps = 6.0, 0.0133, (0.9, 0.999), 1e-8
    losses = v2_losses(world, data_size, rho=rho, lr_tau=lr, tau_betas=betas, tau_eps=adam_eps)
    reference = ReferenceV2(data_size, 0.03, rho, lr, betas, adam_eps)
    for loss in losses:
        loss.state.column("u_shift_image")[[1, 6]] = 30.0
    reference.b["image"][[1, 6]] = 30.0
    gen = torch.Generator().manual_seed(3)
    checked_reset = False
    for epoch, gamma in enumerate([1.0, 0.7, 0.4, 0.25]):
        if epoch == 2:   # a shift far above log u (same true u): the reference resets it to g
            for loss in losses:
                loss.state.column("u_shift_text")[5] = 150.0
            reference.u["text"][5] *= math.exp(reference.b["text"][5].item() - 150.0)
            reference.b["text"][5] = 150.0
            assert 0 < reference.u["text"][5] < 1e-35
            checked_reset = True
        order = torch.randperm(data_size, generator=gen)
        for step in range(data_size // n):
            ids = order[step * n:(step + 1) * n]
            img = unit_rows(n, d, 100 * epoch + step).requires_grad_()
            txt = unit_rows(n, d, 100 * epoch + step + 50).requires_grad_()
            for loss in losses:
                loss.gamma = gamma
                loss.set_epoch(epoch)
            outputs = run_rank_losses(losses, img, txt, ids)
            (sum(outputs) / world).backward()
            got_img, got_txt = img.grad.clone(), txt.grad.clone()
            img.grad = txt.grad = None
            before = reference.step(img.detach(), txt.detach(), ids, gamma, epoch)
            expected = sum(reference.rank_surrogate(img, txt, ids, before, r, world)
                           for r in range(world)) / world
            expected.backward()
            assert_close(got_img, img.grad, tol=1e-9)
            assert_close(got_txt, txt.grad, tol=1e-9)
            state = losses[0].state
            for side in SIDES:
                shift = state.column(f"u_shift_{side}")
                assert_close(shift, reference.b[side], tol=1e-12)
                log_shifted_u = state.column(f"log_u_{side}") - shift
                seen = reference.u[side] > 0
                assert torch.equal(seen, log_shifted_u > -math.inf)
                assert_close(log_shifted_u[seen], reference.u[side][seen].log(), tol=1e-9)
                assert_close(state.column(f"tau_{side}"), reference.tau[side], tol=1e-9)
                assert_close(state.column(f"tau_m_{side}"), reference.m[side], tol=1e-9)
                assert_close(state.column(f"tau_v_{side}"), reference.v[side], tol=1e-9)
        for loss in losses[1:]:
            assert torch.equal(loss.state.values, losses[0].state.values)
    assert checked_reset
    moved = (reference.tau["image"] - 0.03).abs().max().item()
    assert moved > 1e-3   # τ really moved, so the trajectories are not trivially equal


def test_reference_shift_changes_only_the_shifted_samples_effective_eps():
    """Reference mode, the same step with and without a large shift b = 30 on sample 1: its ε
    becomes ε·e^30 ≈ 0.1, which moves its τ; the other samples' τ are bit-identical. Exact mode
    keeps no shift columns."""
    ids = torch.arange(4)
    img, txt = unit_rows(4, 6, 0), unit_rows(4, 6, 1)
    plain, shifted = (make_loss("v2", 8, rho=0.0, fcco_mode="reference") for _ in range(2))
    shifted.state.column("u_shift_image")[1] = 30.0
    plain(img, txt, None, ids)
    shifted(img, txt, None, ids)
    assert "u_shift_image" not in make_loss("v2", 8).state.columns
    tau_plain, tau_shifted = (loss.state.column("tau_image")[:4] for loss in (plain, shifted))
    assert abs(tau_plain[1] - tau_shifted[1]) > 1e-5   # float64: far above rounding
    assert torch.equal(tau_plain[[0, 2, 3]], tau_shifted[[0, 2, 3]])


@pytest.mark.parametrize("version", ["v0", "v1", "v3", "sogclr"])
def test_reference_scale_halves_every_global_tau_version(version):
    """Feature gradients in reference mode are ½ of exact mode's, K = 1 (no other change
    reaches the features of a global-τ version; θ's extra term is test_losses'
    test_reference_mode_doubles_only_the_tau_dg_term)."""
    img, txt = unit_rows(6, 5, 2), unit_rows(6, 5, 3)
    ids = torch.arange(6)
    grads = {}
    for mode in ("exact", "reference"):
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = make_loss(version, 6, fcco_mode=mode)
        loss(a, b, torch.tensor(1 / 0.1, dtype=F64), ids).backward()
        grads[mode] = (a.grad, b.grad)
    assert_close(grads["reference"][0], 0.5 * grads["exact"][0], tol=1e-12)
    assert_close(grads["reference"][1], 0.5 * grads["exact"][1], tol=1e-12)


def test_v3_reference_tau_term_takes_log_u_without_eps():
    """RGCL-g in reference mode: θ's gradient from the τ term uses log u, not log(ε+u). With a
    large ε (1e-2, comparable to u) the two modes' θ-gradients then differ by more than the
    τ·∂g term and the ½ scale explain."""
    img, txt = unit_rows(6, 5, 4), unit_rows(6, 5, 5)
    ids = torch.arange(6)
    theta = torch.tensor(math.log(1 / 0.1), dtype=F64)
    grads = {}
    for mode in ("exact", "reference"):
        t = theta.clone().requires_grad_()
        loss = make_loss("v3", 6, fcco_mode=mode, eps=1e-2, rho=0.5)
        loss(img, txt, t.exp(), ids).backward()
        grads[mode] = t.grad.item()
    # Written from the formulas: exact θ-gradient of τ(mean log(ε+g₁)+log(ε+g₂)) + 2ρτ (g→u at
    # γ = 1); reference ½·[that with log u for log(ε+u) in the τ term, + the τ·∂g term again].
    t = theta.clone().requires_grad_()
    tau = 1 / t.exp()
    g1, g2 = inner_functions(img, txt, tau.expand(6), tau.expand(6))
    tau_bar = tau.detach()
    anchor = tau_bar * ((g1 / (1e-2 + g1.detach())).mean() + (g2 / (1e-2 + g2.detach())).mean())
    term_ref = tau * ((torch.log(g1.detach()) + torch.log(g2.detach())).mean() + 2 * 0.5)
    (0.5 * (2 * anchor + term_ref)).backward()
    assert grads["reference"] == pytest.approx(t.grad.item(), rel=1e-10)
