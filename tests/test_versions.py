"""Every version × temperature scheme through the patched OpenCLIP parser: what is accepted, and
that an accepted scheme is the one the loss and the logit scale follow (docs/algorithm.md §3).

Refused: RGCL (v2, iSogCLR) without per-sample τ, GCL / RGCL-g with it, each with one line.
Accepted: the τ gradient is live exactly for global-learnable (checked against the objective's
closed-form gradient in float64), detached for global-constant, and absent (per-sample τ moving
in the loss's state) for individual-learnable; the log line says which.
"""
import math

import pytest
import torch

import open_clip
import open_clip_patch  # noqa: F401  (registers fastclip-tiny-vit)
from open_clip_patch import params, temperature
from open_clip_patch.losses import FastCLIPLoss
from open_clip_patch.versions import TEMPERATURE_SCHEMES, VERSIONS, Version
from test_losses import (IDS, IMG, THETA, TXT, assert_close, loss_gradients, mean_log_objective,
                         objective_gradients, rgcl_g_objective)

RGCL_VERSIONS = {"v2", "isogclr"}    # docs/algorithm.md §4: the per-sample-τ objective


def parse(version, scheme):
    from open_clip_train.params import parse_args

    return parse_args(["--model", "fastclip-tiny-vit", "--fastclip", "--fastclip-version", version,
                       "--temperature-scheme", scheme, "--data-size", "16"])


def expected_gradients(version, learnable):
    """Gradients of the objective the version follows at γ = 1 (u = g): mean log(ε+g) for GCL,
    RGCL-g for v3; a constant τ contributes no θ-gradient."""
    rho = VERSIONS[version].rho
    if version == "v3":
        objective = lambda i, t, tau: rgcl_g_objective(i, t, tau, rho)  # noqa: E731
    else:
        objective = mean_log_objective
    _, e_img, e_txt, e_theta = objective_gradients(objective, IMG, TXT, THETA)
    return e_img, e_txt, e_theta if learnable else None


@pytest.fixture(scope="module")
def model():
    return open_clip.create_model("fastclip-tiny-vit")


@pytest.mark.parametrize("scheme", TEMPERATURE_SCHEMES)
@pytest.mark.parametrize("version", list(VERSIONS))
def test_each_scheme_is_refused_or_really_used(version, scheme, capsys, model):
    fits = (scheme == "individual-learnable") == (version in RGCL_VERSIONS)
    if not fits:
        with pytest.raises(SystemExit) as stop:
            parse(version, scheme)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1
        assert f"--temperature-scheme {scheme} does not fit --fastclip-version {version}" in err
        return
    args = parse(version, scheme)
    loss = FastCLIPLoss(**params.loss_kwargs(args), state_dtype=torch.float64)
    learned = params.effective_config(args)["tau_learned"]
    assert loss.spec.temperature_scheme == scheme and f"learned: {learned}" in loss.describe()
    # the trainer's side: the logit scale is trainable exactly when the loss learns it
    temperature.init_logit_scale(args, model)
    assert model.logit_scale.requires_grad == temperature.learns_global_tau(args) \
        == loss.learnable_global_tau == (scheme == "global-learnable")
    out, g_img, g_txt, g_theta = loss_gradients(loss, IMG, TXT, THETA, IDS)
    if scheme == "individual-learnable":
        assert g_theta is None and learned.startswith("per-sample tau")
        moved = loss.state.column("tau_image")[IDS] != args.temperature
        assert bool(moved.all())
        return
    e_img, e_txt, e_theta = expected_gradients(version, scheme == "global-learnable")
    assert_close(g_img, e_img)
    assert_close(g_txt, e_txt)
    if scheme == "global-learnable":
        assert abs(g_theta.item()) > 1e-3 and learned.startswith("global tau (logit scale)")
        assert_close(g_theta, e_theta)
    else:
        assert g_theta is None and learned == f"nothing: tau frozen at {args.temperature}"


def test_loss_refuses_a_scheme_its_objective_cannot_use():
    with pytest.raises(ValueError, match="v2: RGCL needs temperature scheme individual-learnable"):
        FastCLIPLoss("v2", 10, temperature_scheme="global-learnable")
    with pytest.raises(ValueError, match="v1: GCL needs temperature scheme global-constant or "
                                         "global-learnable, not individual-learnable"):
        FastCLIPLoss("v1", 10, temperature_scheme="individual-learnable")


def test_table_records_are_consistent():
    for name, record in VERSIONS.items():
        assert (record.tau_update is not None) == (name in RGCL_VERSIONS)
    with pytest.raises(ValueError, match="per-sample τ rule"):
        Version("RGCL", "individual-learnable", temperature=0.03, rho=7.0, lr_tau=0.01,
                lr_tau_scheduler="const", gamma_schedule="cosine", gamma_min=0.2)
    with pytest.raises(ValueError, match="objective"):
        Version("SCL", "global-constant", temperature=0.07, rho=0.0, lr_tau=None,
                lr_tau_scheduler="const", gamma_schedule="cosine", gamma_min=0.2)
    assert VERSIONS["v3"].with_overrides(rho=None, lr_tau=1e-4).lr_tau == 1e-4
    assert math.isclose(VERSIONS["v3"].with_overrides(rho=None).rho, 6.5)


def test_every_loss_flag_reaches_the_loss_with_non_default_values():
    """Each FastCLIP flag set to a non-default value on the trainer's own parser shows up in
    the FastCLIPLoss that params.loss_kwargs builds (and γ's flags in the trainer's schedule)."""
    from open_clip_train.params import parse_args

    from open_clip_patch.losses import FastCLIPLoss
    from open_clip_patch.params import loss_kwargs
    from open_clip_patch.schedules import GammaSchedule

    args = parse_args(["--model", "RN50", "--fastclip", "--fastclip-version", "v2",
                       "--data-size", "37", "--rho", "3.25", "--fastclip-eps", "1e-9",
                       "--temperature", "0.05", "--lr-tau", "0.021", "--fcco-mode", "reference",
                       "--beta1", "0.8", "--beta2", "0.95", "--eps", "1e-7",
                       "--fcco-state", "replicated", "--gamma-min", "0.35",
                       "--gamma-schedule", "constant", "--gamma-decay-epochs", "5",
                       "--gamma-per-step"])
    loss = FastCLIPLoss(**loss_kwargs(args))
    assert (loss.spec.rho, loss.eps, loss.spec.temperature) == (3.25, 1e-9, 0.05)
    assert (loss.lr_tau, loss.fcco_mode, loss.tau_betas, loss.tau_eps) == (
        0.021, "reference", (0.8, 0.95), 1e-7)
    assert loss.state.data_size == 37 and not loss.state.sharded
    assert bool((loss.state.column("tau_image") == 0.05).all())
    schedule = GammaSchedule(args.gamma_schedule, args.gamma_min, args.gamma_decay_epochs,
                             per_step=args.gamma_per_step)
    assert (schedule.kind, schedule.gamma_min, schedule.decay_epochs, schedule.per_step) == (
        "constant", 0.35, 5, True)
    # the old flag name still sets the mode; a scheme override reaches the loss
    old = parse_args(["--model", "RN50", "--fastclip", "--fastclip-version", "v3",
                      "--tau-grad", "reference", "--temperature-scheme", "global-constant"])
    loss = FastCLIPLoss(**loss_kwargs(old, data_size=9))
    assert loss.fcco_mode == "reference" and not loss.learnable_global_tau
