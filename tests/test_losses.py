"""FCCO losses against objectives written directly from their definitions (docs/algorithm.md §1-§3).

All math checks run in float64 with float64 state, so agreement is to rounding error.
"""
import io
import math
import threading

import pytest
import torch

from open_clip_patch.losses import FastCLIPLoss

F64 = torch.float64
EPS = 1e-14


def unit_rows(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x / x.norm(dim=1, keepdim=True)


def inner_functions(img, txt, tau_img, tau_txt):
    """g₁ᵢ = mean_{j≠i} exp((e₁ᵢ·e₂ⱼ − e₁ᵢ·e₂ᵢ)/τ₁ᵢ), g₂ᵢ = mean_{j≠i} exp((e₁ⱼ·e₂ᵢ − e₁ᵢ·e₂ᵢ)/τ₂ᵢ),
    as plain loops over pairs."""
    n = img.shape[0]
    g1, g2 = [], []
    for i in range(n):
        pos = img[i] @ txt[i]
        g1.append(sum(torch.exp((img[i] @ txt[j] - pos) / tau_img[i])
                      for j in range(n) if j != i) / (n - 1))
        g2.append(sum(torch.exp((img[j] @ txt[i] - pos) / tau_txt[i])
                      for j in range(n) if j != i) / (n - 1))
    return torch.stack(g1), torch.stack(g2)


def per_sample(tau, n):
    return tau.expand(n) if tau.dim() == 0 else tau


def mean_log_objective(img, txt, tau, eps=EPS):
    """(1/n) Σ log(ε+g₁ᵢ) + log(ε+g₂ᵢ): GCL/τ, whose gradient v0 and v1 follow (§3)."""
    n = img.shape[0]
    g1, g2 = inner_functions(img, txt, per_sample(tau, n), per_sample(tau, n))
    return (torch.log(eps + g1) + torch.log(eps + g2)).mean()


def rgcl_objective(img, txt, tau_img, tau_txt, rho, eps=EPS):
    """(1/n) Σ τ₁ᵢ(log(ε+g₁ᵢ(τ₁ᵢ)) + ρ) + τ₂ᵢ(log(ε+g₂ᵢ(τ₂ᵢ)) + ρ)."""
    g1, g2 = inner_functions(img, txt, tau_img, tau_txt)
    return (tau_img * (torch.log(eps + g1) + rho) + tau_txt * (torch.log(eps + g2) + rho)).mean()


def rgcl_g_objective(img, txt, tau, rho, eps=EPS):
    """(τ/n) Σ [log(ε+g₁ᵢ) + log(ε+g₂ᵢ)] + 2ρτ."""
    return tau * mean_log_objective(img, txt, tau, eps) + 2 * rho * tau


def make_loss(version, data_size=16, **kwargs):
    kwargs.setdefault("state_dtype", F64)
    return FastCLIPLoss(version, data_size, **kwargs)


def set_individual_tau(loss, ids, tau_img, tau_txt):
    loss.state.column("tau_image")[ids] = tau_img
    loss.state.column("tau_text")[ids] = tau_txt


def loss_gradients(loss, img, txt, theta, ids):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    theta = theta.clone().requires_grad_()
    out = loss(img, txt, theta.exp(), ids, output_dict=True)
    out["contrastive_loss"].backward()
    return out, img.grad, txt.grad, theta.grad


def objective_gradients(objective, img, txt, theta):
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
    theta = theta.clone().requires_grad_()
    value = objective(img, txt, 1.0 / theta.exp())
    value.backward()
    return value.detach(), img.grad, txt.grad, theta.grad


def assert_close(actual, expected, tol=1e-10):
    error = (actual - expected).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    assert error <= tol * scale, f"max error {error:.3e} (scale {scale:.3e})"
    return error


N, D = 7, 5
IDS = torch.tensor([11, 2, 5, 0, 15, 8, 3])
THETA = torch.tensor(math.log(1 / 0.1), dtype=F64)     # τ = 0.1
IMG, TXT = unit_rows(N, D, 0), unit_rows(N, D, 1)


# ε = 0.05 is comparable to g at τ = 0.1, so using u for ε+u anywhere shows at once.
@pytest.mark.parametrize("eps", [EPS, 0.05])
@pytest.mark.parametrize("version", ["v0", "v1", "sogclr", "v3"])
def test_global_tau_gradient_matches_objective(version, eps):
    loss = make_loss(version, eps=eps)
    out, g_img, g_txt, g_theta = loss_gradients(loss, IMG, TXT, THETA, IDS)
    rho = loss.spec.rho
    if version == "v3":
        objective, factor = (lambda i, t, tau: rgcl_g_objective(i, t, tau, rho, eps)), 1.0
    elif version == "v0":   # v0 follows the gradient of mean log(ε+g), τ included (§3)
        objective, factor = (lambda i, t, tau: mean_log_objective(i, t, tau, eps)), 1.0
    else:                   # constant τ: GCL = τ·mean log(ε+g); the surrogate drops the τ
        objective, factor = (lambda i, t, tau: tau * mean_log_objective(i, t, tau, eps)), 1 / 0.1
    value, e_img, e_txt, e_theta = objective_gradients(objective, IMG, TXT, THETA)
    assert_close(g_img, factor * e_img)
    assert_close(g_txt, factor * e_txt)
    if version in ("v0", "v3"):
        assert_close(g_theta, factor * e_theta)
    else:
        assert g_theta is None    # a constant τ receives no gradient
    # The reported value is the objective whose gradient the surrogate carries (GCL/τ for GCL).
    assert_close(out["contrastive_loss"].detach(), factor * value)


@pytest.mark.parametrize("eps", [EPS, 1e-3])
@pytest.mark.parametrize("version", ["v2", "isogclr"])
def test_individual_tau_gradient_matches_rgcl(version, eps):
    loss = make_loss(version, rho=1.5, eps=eps)
    tau_img = torch.linspace(0.02, 0.04, N, dtype=F64)   # inside both versions' clamp range
    tau_txt = torch.linspace(0.045, 0.012, N, dtype=F64)
    set_individual_tau(loss, IDS, tau_img, tau_txt)
    out, g_img, g_txt, g_theta = loss_gradients(loss, IMG, TXT, THETA, IDS)
    objective = lambda i, t, _: rgcl_objective(i, t, tau_img, tau_txt, 1.5, eps)  # noqa: E731
    value, e_img, e_txt, _ = objective_gradients(objective, IMG, TXT, THETA)
    assert_close(g_img, e_img)    # exact weighting τᵢ·∇log gᵢ: factor 1, no extra 1/τᵢ
    assert_close(g_txt, e_txt)
    assert g_theta is None        # the per-sample versions ignore logit_scale
    assert_close(out["contrastive_loss"].detach(), value)


def per_sample_tau_gradients(rho):
    """∂/∂τᵢ of τᵢ(log(ε+gᵢ(τᵢ)) + ρ) for both sides (each term depends on its own τᵢ only)."""
    tau_img = torch.linspace(0.05, 0.3, N, dtype=F64).requires_grad_()
    tau_txt = torch.linspace(0.25, 0.04, N, dtype=F64).requires_grad_()
    g1, g2 = inner_functions(IMG, TXT, tau_img, tau_txt)
    terms = tau_img * (torch.log(EPS + g1) + rho) + tau_txt * (torch.log(EPS + g2) + rho)
    grad_img, grad_txt = torch.autograd.grad(terms.sum(), (tau_img, tau_txt))
    return tau_img.detach(), tau_txt.detach(), grad_img, grad_txt


@pytest.mark.parametrize("epoch", [0, 3])
def test_v2_per_sample_adam_uses_the_exact_tau_gradient(epoch):
    """Exact mode: Adam bias-corrected by each sample's update count, whatever the epoch."""
    rho, lr, betas, adam_eps = 0.5, 0.01, (0.8, 0.99), 1e-8
    tau_img, tau_txt, grad_img, grad_txt = per_sample_tau_gradients(rho)
    assert grad_img.abs().max() < 5 and grad_txt.abs().max() < 5   # not clipped here
    loss = make_loss("v2", rho=rho, lr_tau=lr, tau_betas=betas, tau_eps=adam_eps)
    loss.set_epoch(epoch)
    set_individual_tau(loss, IDS, tau_img, tau_txt)
    previous_steps = torch.arange(N, dtype=F64)     # sample k has had k updates
    m0 = torch.linspace(-0.3, 0.3, N, dtype=F64)
    v0 = torch.linspace(0.01, 0.2, N, dtype=F64)
    for side in ("image", "text"):
        loss.state.column(f"tau_steps_{side}")[IDS] = previous_steps
        loss.state.column(f"tau_m_{side}")[IDS] = m0
        loss.state.column(f"tau_v_{side}")[IDS] = v0
    loss(IMG, TXT, None, IDS)
    beta1, beta2 = betas
    steps = previous_steps + 1
    for side, tau, grad in (("image", tau_img, grad_img), ("text", tau_txt, grad_txt)):
        m, v = beta1 * m0 + (1 - beta1) * grad, beta2 * v0 + (1 - beta2) * grad ** 2
        assert_close(loss.state.column(f"tau_m_{side}")[IDS], m)
        assert_close(loss.state.column(f"tau_v_{side}")[IDS], v)
        assert torch.equal(loss.state.column(f"tau_steps_{side}")[IDS], steps)
        m_hat, v_hat = m / (1 - beta1 ** steps), v / (1 - beta2 ** steps)
        expected_tau = (tau - lr * m_hat / (v_hat.sqrt() + adam_eps)).clamp(0.01, 1.0)
        assert_close(loss.state.column(f"tau_{side}")[IDS], expected_tau)


def test_v2_tau_gradient_is_clipped_to_five():
    rho = 60.0
    tau_img, tau_txt, grad_img, _ = per_sample_tau_gradients(rho)
    assert grad_img.min() > 5
    loss = make_loss("v2", rho=rho)
    set_individual_tau(loss, IDS, tau_img, tau_txt)
    loss(IMG, TXT, None, IDS)
    # first update: m = (1 − β₁)·clip(ĝ) with β₁ = 0.9
    assert_close(loss.state.column("tau_m_image")[IDS], torch.full((N,), 0.5, dtype=F64))


ONE_HOT = torch.eye(N, dtype=F64)   # orthogonal features: zᵢⱼ = −1/τ for every negative


@pytest.mark.parametrize("version", ["v2", "isogclr"])
def test_per_sample_tau_gradient_is_clipped_at_minus_five(version):
    """A large ε makes log(ε+u) ≈ log ε = −9.2 the whole of ĝ (u = e^(−20) ≪ ε at τ = 0.05),
    so ĝ is clipped to −5: v2's first m is (1−β₁)·(−5), iSogCLR's average 0.9·(−5)."""
    tau = torch.full((N,), 0.05, dtype=F64)
    loss = make_loss(version, rho=0.0, eps=1e-4)
    set_individual_tau(loss, IDS, tau, tau)
    out = loss(ONE_HOT, ONE_HOT, None, IDS, output_dict=True)
    assert out["fcco_tau_grad_mean"].item() == pytest.approx(-5.0, abs=1e-12)
    column, value = ("tau_m_image", -0.5) if version == "v2" else ("tau_grad_ema_image", -4.5)
    assert_close(loss.state.column(column)[IDS], torch.full((N,), value, dtype=F64))


@pytest.mark.parametrize("version,bounds", [("v2", (0.01, 1.0)), ("isogclr", (0.005, 0.05))])
def test_per_sample_tau_is_clamped_to_its_bounds_inside_the_loss(version, bounds):
    """ĝ = +5 (ρ = 60) with lr_τ = 1 pushes τ far below τ_min; ĝ = −5 (ε = 1e-4, ρ = 0) far
    above τ_max: the stored τ sit exactly on the version's bounds."""
    tau = torch.full((N,), 0.03, dtype=F64)
    low = make_loss(version, rho=60.0, lr_tau=1.0)
    set_individual_tau(low, IDS, tau, tau)
    low(ONE_HOT, ONE_HOT, None, IDS)
    high = make_loss(version, rho=0.0, eps=1e-4, lr_tau=1.0)
    set_individual_tau(high, IDS, tau, tau)
    high(ONE_HOT, ONE_HOT, None, IDS)
    for side in ("image", "text"):
        assert torch.equal(low.state.column(f"tau_{side}")[IDS], torch.full((N,), bounds[0], dtype=F64))
        assert torch.equal(high.state.column(f"tau_{side}")[IDS], torch.full((N,), bounds[1], dtype=F64))


def test_isogclr_moving_average_tau_step():
    rho, lr = 0.5, 0.01
    tau_img, tau_txt, grad_img, grad_txt = per_sample_tau_gradients(rho)
    loss = make_loss("isogclr", rho=rho, lr_tau=lr, tau_min=0.001, tau_max=1.0)
    set_individual_tau(loss, IDS, tau_img, tau_txt)
    previous = torch.linspace(-1, 1, N, dtype=F64)
    loss.state.column("tau_grad_ema_image")[IDS] = previous
    loss(IMG, TXT, None, IDS)
    average = 0.1 * previous + 0.9 * grad_img    # LibAUC: newest gradient weighted 0.9
    assert_close(loss.state.column("tau_grad_ema_image")[IDS], average)
    assert_close(loss.state.column("tau_image")[IDS], (tau_img - lr * average).clamp(0.001, 1))
    assert_close(loss.state.column("tau_grad_ema_text")[IDS], 0.9 * grad_txt)


def test_reference_mode_doubles_only_the_tau_dg_term():
    tau = 1.0 / THETA.exp()
    for version in ("v3", "v0"):
        _, ex_img, ex_txt, ex_theta = loss_gradients(make_loss(version), IMG, TXT, THETA, IDS)
        _, rf_img, rf_txt, rf_theta = loss_gradients(
            make_loss(version, tau_grad_mode="reference"), IMG, TXT, THETA, IDS)
        # the reference's loss scale: ½[anchor half + negative half]
        assert_close(rf_img, 0.5 * ex_img)
        assert_close(rf_txt, 0.5 * ex_txt)
        # The extra θ-gradient is that of τ̄·mean log(ε+g(τ)) (v3) / mean log(ε+g(τ)) (v0),
        # with τ̄ a constant: the τ·∂g/(ε+u) term once more (docs/algorithm.md §3).
        prefactor = tau if version == "v3" else 1.0
        _, _, _, dg_term = objective_gradients(
            lambda i, t, tau_live: prefactor * mean_log_objective(i, t, tau_live), IMG, TXT, THETA)
        assert_close(2 * rf_theta - ex_theta, dg_term)
        assert abs(dg_term.item()) > 1e-3


def plain_u_recursion(version, batches, gamma_per_step, tau_global, data_size):
    """u₁, u₂ by the definition: u ← (1-γ)u + γg, restarting from g where u < 1e-35/inf/nan."""
    loss = make_loss(version, data_size)
    u = {side: torch.zeros(data_size, dtype=F64) for side in ("image", "text")}
    # Corrupted entries, first met in a γ < 1 step, must restart from g like u = 0 does.
    u["image"][7], u["text"][6] = float("nan"), float("inf")
    loss.state.column("log_u_image")[7] = float("nan")
    loss.state.column("log_u_text")[6] = float("inf")
    for (ids, img, txt), gamma in zip(batches, gamma_per_step):
        if loss.individual_tau:
            tau_img = loss.state.column("tau_image")[ids].clone()
            tau_txt = loss.state.column("tau_text")[ids].clone()
        else:
            tau_img = tau_txt = tau_global.expand(len(ids))
        g = dict(zip(("image", "text"), inner_functions(img, txt, tau_img, tau_txt)))
        before = loss.state.values.clone()
        loss.gamma = gamma
        loss(img, txt, 1.0 / tau_global, ids)
        untouched = torch.ones(data_size, dtype=torch.bool)
        untouched[ids] = False
        assert torch.equal(loss.state.values[untouched].nan_to_num(),
                           before[untouched].nan_to_num())
        for side in ("image", "text"):
            old = u[side][ids]
            fresh = (old < 1e-35) | ~torch.isfinite(old) | (gamma == 1.0)
            u[side][ids] = torch.where(fresh, g[side], (1 - gamma) * old + gamma * g[side])
    return loss, u


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_u_follows_the_moving_average_and_only_batch_ids_change(version):
    data_size = 10
    id_sets = [[0, 1, 2, 3, 4], [2, 3, 5, 6, 4], [0, 6, 7, 2, 9], [2, 3, 5, 6, 4]]
    batches = [(torch.tensor(ids), unit_rows(5, D, 10 + k), unit_rows(5, D, 20 + k))
               for k, ids in enumerate(id_sets)]
    loss, u = plain_u_recursion(version, batches, [1.0, 0.6, 0.3, 0.3],
                                torch.tensor(0.2, dtype=F64), data_size)
    for side in ("image", "text"):
        stored = loss.state.column(f"log_u_{side}").exp()
        assert_close(stored, u[side], tol=1e-12)
        assert stored[8] == 0      # never in a batch: still u = 0


class ThreadGroup:
    """K simulated ranks as threads; gathers concatenate the ranks' tensors in rank order."""

    def __init__(self, world_size):
        self.world_size = world_size
        self.slots = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=60)

    def all_gather(self, rank, tensor):
        self.slots[rank] = tensor.detach().clone()
        self.barrier.wait()
        gathered = torch.cat(self.slots)
        self.barrier.wait()         # nobody overwrites a slot before everyone has read it
        return gathered


class ThreadComm:
    def __init__(self, group, rank):
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_gather_no_grad(self, tensor):
        return self.group.all_gather(self.rank, tensor)

    def all_gather_scalars(self, tensor):
        return self.group.all_gather(self.rank, tensor)


class TinyEncoders:
    """Shared parameters (one replica per rank): linear maps to normalised features + θ."""

    def __init__(self, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(6, D, generator=gen, dtype=F64),
                       torch.randn(4, D, generator=gen, dtype=F64),
                       torch.tensor(math.log(1 / 0.07), dtype=F64)]

    def replica(self):
        return [p.clone().requires_grad_() for p in self.params]

    @staticmethod
    def step(loss, params, x_img, x_txt, ids):
        w_img, w_txt, theta = params
        img, txt = x_img @ w_img, x_txt @ w_txt
        img = img / img.norm(dim=1, keepdim=True)
        txt = txt / txt.norm(dim=1, keepdim=True)
        loss(img, txt, theta.exp(), ids).backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        for p in params:
            p.grad = None
        return grads


def on_ranks(losses, work):
    """``work(r, loss)`` for every simulated rank in its own thread (the gathers block);
    returns the results in rank order and re-raises the first error."""
    results, errors = [None] * len(losses), []

    def worker(r):
        try:
            results[r] = work(r, losses[r])
        except Exception as error:   # surfaced in the main thread below
            errors.append(error)
            losses[r].comm.group.barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(len(losses))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run_ranks(world_size, losses, replicas, x_img, x_txt, ids):
    b = len(ids) // world_size
    parts = [slice(r * b, (r + 1) * b) for r in range(world_size)]
    results = on_ranks(losses, lambda r, loss: TinyEncoders.step(
        loss, replicas[r], x_img[parts[r]], x_txt[parts[r]], ids[parts[r]]))
    return [torch.stack(per_rank).mean(0) for per_rank in zip(*results)]


@pytest.mark.parametrize("version,tau_grad_mode,world_size", [
    ("v1", "exact", 2), ("v2", "exact", 3), ("v3", "exact", 2), ("v3", "reference", 3),
    ("v0", "reference", 2)])
def test_ranks_average_to_the_single_process_gradient(version, tau_grad_mode, world_size):
    data_size, n = 20, 6
    gen = torch.Generator().manual_seed(5)
    encoders = TinyEncoders()
    single = make_loss(version, data_size, tau_grad_mode=tau_grad_mode)
    group = ThreadGroup(world_size)
    ranks = [make_loss(version, data_size, tau_grad_mode=tau_grad_mode, comm=ThreadComm(group, r))
             for r in range(world_size)]
    if single.individual_tau:   # distinct per-sample τ, the same in every replica
        tau = 0.02 + 0.3 * torch.rand(data_size, generator=gen, dtype=F64)
        for loss in [single, *ranks]:
            set_individual_tau(loss, torch.arange(data_size), tau, tau.flip(0))
    single_params = encoders.replica()
    rank_params = [encoders.replica() for _ in range(world_size)]
    errors = []
    for step, gamma in enumerate([1.0, 0.7, 0.35]):
        for loss in [single, *ranks]:
            loss.gamma = gamma
            loss.set_epoch(step)
        ids = torch.randperm(data_size, generator=gen)[:n]
        x_img = torch.randn(n, 6, generator=gen, dtype=F64)
        x_txt = torch.randn(n, 4, generator=gen, dtype=F64)
        expected = TinyEncoders.step(single, single_params, x_img, x_txt, ids)
        averaged = run_ranks(world_size, ranks, rank_params, x_img, x_txt, ids)
        errors += [assert_close(a, e) for a, e in zip(averaged, expected)]
        for loss in ranks:
            assert torch.equal(loss.state.values, ranks[0].state.values)
        assert_close(ranks[0].state.values.nan_to_num(neginf=0.0),
                     single.state.values.nan_to_num(neginf=0.0), tol=1e-12)
    print(f"{version}/{tau_grad_mode} K={world_size}: "
          f"max |avg rank grad - single| {max(errors):.1e}")


def test_state_dict_round_trip_resumes_identically():
    first = make_loss("v2", data_size=16)
    first.gamma = 0.7
    for k in range(2):
        first(unit_rows(N, D, 30 + k), unit_rows(N, D, 40 + k), None, IDS.roll(k))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_loss("v2", data_size=16)
    second.gamma = 0.7
    second.load_state_dict(torch.load(buffer))
    assert torch.equal(second.state.values, first.state.values)
    outputs = [loss(IMG, TXT, None, IDS) for loss in (first, second)]
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(second.state.values, first.state.values)
    with pytest.raises(ValueError, match="columns"):
        make_loss("v3", data_size=16).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="data_size=17"):
        make_loss("v2", data_size=17).load_state_dict(first.state_dict())


def test_checkpoint_with_the_former_isogclr_column_name_loads():
    """The iSogCLR gradient average was stored as tau_grad_avg_* before it became
    tau_grad_ema_*; such checkpoints still resume."""
    first = make_loss("isogclr")
    first(IMG, TXT, None, IDS)
    saved = first.state_dict()
    state = saved["_extra_state"]["state"]
    assert "tau_grad_ema_image" in state["columns"]
    state["columns"] = [name.replace("tau_grad_ema", "tau_grad_avg") for name in state["columns"]]
    second = make_loss("isogclr")
    second.load_state_dict(saved)
    assert second.state.columns == first.state.columns
    assert torch.equal(second.state.values, first.state.values)


@pytest.mark.parametrize("bad_id", [16, -1, 10**12])
def test_id_outside_data_size_raises_naming_it(bad_id):
    loss = make_loss("v1", data_size=16)
    ids = IDS.clone()
    ids[3] = bad_id
    with pytest.raises(ValueError, match=rf"sample id {bad_id} .*data_size=16"):
        loss(IMG, TXT, THETA.exp(), ids)
    assert torch.all(loss.state.values == -math.inf)
    with pytest.raises(ValueError, match="integer"):
        loss(IMG, TXT, THETA.exp(), IDS.double())
    with pytest.raises(ValueError, match="6 sample ids"):
        loss(IMG, TXT, THETA.exp(), IDS[:6])


@pytest.mark.parametrize("version", ["v3", "v2"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_nonfinite_features_raise_before_state_update(version, poison):
    loss = make_loss(version)
    loss(IMG, TXT, THETA.exp(), IDS)
    before = loss.state.values.clone()
    txt = TXT.clone()
    txt[2, 1] = poison
    with pytest.raises(ValueError, match="non-finite .*text features of rank 0"):
        loss(IMG, txt, THETA.exp(), IDS)
    assert torch.equal(loss.state.values, before)


def adversarial_pairs(n, d, seed):
    """Positives far apart, some negatives aligned: exp(dᵢⱼ/0.01) far beyond float32."""
    base = unit_rows(n, d, seed)
    img = base + 0.05 * unit_rows(n, d, seed + 1)
    # text i points away from image i and towards image i-1
    txt = base.roll(1, 0) - 1.9 * base + 0.05 * unit_rows(n, d, seed + 2)
    return (img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_small_tau_and_low_precision_stay_finite_and_accurate(dtype):
    img64, txt64 = adversarial_pairs(8, 6, 7)
    img_lp, txt_lp = img64.to(dtype), txt64.to(dtype)
    scale = torch.tensor(100.0)                                  # τ = 0.01
    results = []
    for img, txt in ((img_lp, txt_lp), (img_lp.double(), txt_lp.double())):
        img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = FastCLIPLoss("v3", 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(img, txt, scale.to(img.dtype), torch.arange(8))
        value.backward()
        results.append((value, img.grad, txt.grad))
    (value, g_img, g_txt), (value64, g_img64, g_txt64) = results
    sim = img64 @ txt64.T
    assert (sim - sim.diagonal()[:, None]).max() / 0.01 > 100     # exp overflows float32 at 88.7
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(g_img).all() and torch.isfinite(g_txt).all()
    assert abs(value.item() - value64.item()) <= 1e-5 * abs(value64.item())
    # Gradients come back in the leaves' dtype: allow that rounding on top of float32 error.
    tol = 1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    assert_close(g_img.double(), g_img64, tol=tol)
    assert_close(g_txt.double(), g_txt64, tol=tol)


def test_output_dict_diagnostics_are_detached_scalars():
    for version in ("v3", "v2"):
        loss = make_loss(version)
        loss.gamma = 0.8
        theta = THETA.clone().requires_grad_()
        out = loss(IMG.clone().requires_grad_(), TXT, theta.exp(), IDS, output_dict=True)
        assert [k for k in out if k.endswith("loss")] == ["contrastive_loss"]
        assert out["contrastive_loss"].requires_grad
        diagnostics = {k: v for k, v in out.items() if k != "contrastive_loss"}
        assert all(v.dim() == 0 and not v.requires_grad for v in diagnostics.values())
        assert diagnostics["fcco_gamma"].item() == pytest.approx(0.8)
        log_u = torch.cat([loss.state.column(f"log_u_{s}")[IDS] for s in ("image", "text")])
        assert diagnostics["fcco_log_u_mean"].item() == pytest.approx(log_u.mean().item())
        if version == "v3":
            assert diagnostics["fcco_tau"].item() == pytest.approx(0.1)
        else:
            assert diagnostics["fcco_tau_mean"].item() == pytest.approx(0.03)
            assert {"fcco_tau_min", "fcco_tau_max", "fcco_tau_grad_mean"} <= set(diagnostics)


def test_configuration_is_validated_and_described():
    with pytest.raises(ValueError, match="unknown FCCO version"):
        FastCLIPLoss("v4", 10)
    with pytest.raises(ValueError, match="tau_grad_mode"):
        FastCLIPLoss("v3", 10, tau_grad_mode="approx")
    loss = FastCLIPLoss("v3", 10)
    with pytest.raises(ValueError, match="gamma"):
        loss.gamma = 0.0
    assert "fcco_mode=exact" in repr(loss) and "rho=6.5" in loss.describe()
    assert "fcco_mode=reference" in FastCLIPLoss("v0", 10, tau_grad_mode="reference").describe()
    assert FastCLIPLoss("v0", 10, fcco_mode="reference").tau_grad_mode == "reference"
    with pytest.raises(ValueError, match="disagree"):
        FastCLIPLoss("v0", 10, fcco_mode="reference", tau_grad_mode="exact")
    assert FastCLIPLoss("v2", 1000).nbytes() == 1000 * 10 * 4    # u, τ, m, v, t per side, float32
    # reference mode: u, τ, m, v and the shift b per side
    assert FastCLIPLoss("v2", 1000, fcco_mode="reference").state.columns == (
        "log_u_image", "log_u_text", "tau_image", "tau_text", "tau_m_image", "tau_m_text",
        "tau_v_image", "tau_v_text", "u_shift_image", "u_shift_text")
    assert FastCLIPLoss("v1", 1000).nbytes() == 1000 * 2 * 4


@pytest.mark.parametrize("version", ["v0", "v1", "v2", "isogclr", "v3"])
def test_one_process_single_block_equals_the_anchor_negative_split(version, monkeypatch):
    """The one-process fast path (one (b, b) block, no negative part) against the split that
    distributed runs use, forced at world size 1: same gradients, values and state."""
    assert make_loss(version).single_block
    split_loss, fast_loss = make_loss(version), make_loss(version)
    results = {}
    for name, loss in (("fast", fast_loss), ("split", split_loss)):
        if name == "split":
            monkeypatch.setattr(FastCLIPLoss, "single_block", property(lambda self: False))
        outs = []
        for step, gamma in enumerate([1.0, 0.6]):
            loss.gamma = gamma
            loss.set_epoch(step)
            out, g_img, g_txt, g_theta = loss_gradients(loss, IMG.roll(step, 0), TXT, THETA, IDS)
            outs += [out["contrastive_loss"].detach(), g_img, g_txt,
                     g_theta if g_theta is not None else torch.zeros(())]
        results[name] = outs + [loss.state.values.nan_to_num(neginf=0.0)]
    for fast, split in zip(results["fast"], results["split"]):
        assert_close(fast, split, tol=1e-13)


def test_reset_threshold_is_strictly_below_1e_35():
    """The reference resets u < 1e-35: u = 1e-35 itself is mixed, the next float below resets."""
    from open_clip_patch.losses import LOG_U_RESET_BELOW, log_moving_average
    at = torch.tensor(LOG_U_RESET_BELOW, dtype=F64)
    below = torch.nextafter(at, torch.tensor(-math.inf, dtype=F64))
    log_g = torch.zeros(2, dtype=F64)
    out = log_moving_average(torch.stack([at, below]), log_g, 0.25)
    assert out[0].item() == pytest.approx(math.log(0.75 * 1e-35 + 0.25), rel=1e-12)
    assert out[1].item() == 0.0                      # restarted from g = 1
    # with the reference's shift b the test applies to u·e^(−b)
    shifted = log_moving_average(torch.stack([at + 3, below + 3]), log_g, 0.25,
                                 reset_shift=torch.full((2,), 3.0, dtype=F64))
    assert shifted[0].item() != 0.0 and shifted[1].item() == 0.0
