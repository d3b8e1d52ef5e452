"""γ schedules and τ learning-rate schedules."""
import math

import pytest
import torch

from open_clip_patch.schedules import GammaSchedule, make_tau_lr_schedule


def test_constant_gamma_is_one_in_the_first_epoch_then_gamma_min():
    schedule = GammaSchedule("constant", gamma_min=0.9)
    assert [schedule(e) for e in range(4)] == [1.0, 0.9, 0.9, 0.9]


def test_cosine_gamma_follows_the_paper_formula_then_stays_flat():
    schedule = GammaSchedule("cosine", gamma_min=0.2, decay_epochs=4)
    # ½(1 + cos(π·e/4))·0.8 + 0.2 for e = 1, 2, 3; 1 in epoch 0; 0.2 from epoch 4 on.
    expected = [1.0, 0.2 + 0.4 * (1 + math.sqrt(0.5)), 0.6, 0.2 + 0.4 * (1 - math.sqrt(0.5)),
                0.2, 0.2, 0.2]
    assert [schedule(e) for e in range(7)] == pytest.approx(expected, abs=1e-15)
    assert schedule(2, fraction=0.5) == schedule(2)     # per epoch: the fraction is ignored


def test_cosine_gamma_per_step_uses_the_fractional_epoch():
    schedule = GammaSchedule("cosine", gamma_min=0.2, decay_epochs=4, per_step=True)
    assert schedule(0, 0.75) == 1.0                      # still the first epoch
    assert schedule(2, 0.5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2.5 / 4)) * 0.8 + 0.2)
    assert schedule(3, 0.99) > 0.2 and schedule(4, 0.0) == 0.2
    with pytest.raises(ValueError, match="fraction"):
        schedule(2, 1.0)


@pytest.mark.parametrize("kwargs", [dict(kind="linear"), dict(gamma_min=0.0),
                                    dict(gamma_min=1.5), dict(decay_epochs=None)])
def test_gamma_schedule_rejects_bad_settings(kwargs):
    settings = dict(kind="cosine", gamma_min=0.2, decay_epochs=3) | kwargs
    with pytest.raises(ValueError):
        GammaSchedule(**settings)


def optimizer_with_tau_group():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(()))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3},
                                   {"params": [params[1]], "lr": 5e-4}])
    return optimizer, optimizer.param_groups[1]


def test_cosine_tau_lr_touches_only_the_tau_group():
    optimizer, tau_group = optimizer_with_tau_group()
    schedule = make_tau_lr_schedule("cosine", tau_group, base_lr=2e-4, warmup_length=10,
                                    steps=110)
    assert schedule(4, tau=0.05) == pytest.approx(2e-4 * 5 / 10)      # linear warm-up
    assert schedule(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)) * 2e-4)
    assert tau_group["lr"] == pytest.approx(1e-4)
    assert optimizer.param_groups[0]["lr"] == 1e-3                # the model group is untouched
    assert schedule.state_dict() == {}


def test_const_and_const_cooldown_tau_lr():
    _, tau_group = optimizer_with_tau_group()
    assert make_tau_lr_schedule("const", tau_group, 1e-4, 0, 100)(50) == 1e-4
    cooldown = make_tau_lr_schedule("const-cooldown", tau_group, 1e-4, 0, 100, cooldown_steps=20)
    assert cooldown(79) == 1e-4
    assert cooldown(90) == pytest.approx(1e-4 * 0.5)              # linear decay to 0 at step 100
    with pytest.raises(ValueError, match="cooldown_steps"):
        make_tau_lr_schedule("const-cooldown", tau_group, 1e-4, 0, 100)
    with pytest.raises(ValueError, match="one of"):
        make_tau_lr_schedule("exp", tau_group, 1e-4, 0, 100)


def test_step_thresh_drops_once_and_remembers_it_across_a_resume():
    _, tau_group = optimizer_with_tau_group()
    schedule = make_tau_lr_schedule("step-thresh", tau_group, 3e-4, 2, 100)
    assert schedule(0, tau=0.01) == pytest.approx(1.5e-4)         # warm-up ignores τ
    assert schedule(5, tau=0.05) == 3e-4
    assert schedule(6, tau=0.03) == pytest.approx(1e-4)           # τ ≤ 0.03: × 1/3
    assert schedule(7, tau=torch.tensor(0.05)) == pytest.approx(1e-4)   # sticky
    assert tau_group["lr"] == pytest.approx(1e-4)
    resumed = make_tau_lr_schedule("step-thresh", tau_group, 3e-4, 2, 100)
    assert resumed(8, tau=0.05) == 3e-4
    resumed.load_state_dict(schedule.state_dict())
    assert resumed(8, tau=0.05) == pytest.approx(1e-4)


def test_step_thresh_non_sticky_follows_the_current_tau_like_the_reference():
    _, tau_group = optimizer_with_tau_group()
    schedule = make_tau_lr_schedule("step-thresh", tau_group, 3e-4, 0, 100, sticky=False)
    assert schedule(1, tau=0.02) == pytest.approx(1e-4)
    assert schedule(2, tau=0.05) == 3e-4


def _baseline_args(**overrides):
    from types import SimpleNamespace
    settings = dict(fastclip=False, lr=1e-3, warmup=3, lr_min=4e-5, epochs=2)
    return SimpleNamespace(**(settings | overrides))


def test_lr_floor_follows_the_closed_form_cosine_for_the_baseline():
    """--lr-min through temperature.wrap_scheduler (OpenCLIP's scheduler hook) with no τ group:
    every group gets warm-up (step+1)/W·lr, then lr_min + ½(1+cos(π(s−W)/(S−W)))(lr − lr_min),
    from lr down to exactly lr_min at the last step S; without the flag OpenCLIP's cosine stays."""
    from open_clip_train.scheduler import cosine_lr

    from open_clip_patch.temperature import wrap_scheduler
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=1e-3)
    steps, warmup, lr, floor = 23, 3, 1e-3, 4e-5
    upstream = cosine_lr(optimizer, lr, warmup, steps)
    assert wrap_scheduler(_baseline_args(lr_min=None), upstream, optimizer, None, steps) is upstream
    scheduler = wrap_scheduler(_baseline_args(), upstream, optimizer, None, steps)
    for step in range(steps + 1):
        expected = (lr * (step + 1) / warmup if step < warmup else
                    floor + 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
                    * (lr - floor))
        assert scheduler(step) == pytest.approx(expected, rel=1e-12)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected] * 2, rel=1e-12)
    assert scheduler(steps) == pytest.approx(floor, rel=1e-12)
    assert scheduler(warmup) == pytest.approx(lr, rel=1e-12)
    with pytest.raises(ValueError, match="lr-min"):
        wrap_scheduler(_baseline_args(lr_min=2e-3), upstream, optimizer, None, steps)


def test_lr_floor_bounds_are_inclusive():
    """--lr-min 0 is OpenCLIP's cosine itself; --lr-min = --lr holds the lr after warm-up."""
    from open_clip_train.scheduler import cosine_lr

    from open_clip_patch.schedules import cosine_lr_with_floor
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    upstream = [cosine_lr(optimizer, 0.1, 2, 10)(s) for s in range(11)]
    assert [cosine_lr_with_floor(optimizer, 0.1, 2, 10, 0.0)(s) for s in range(11)] == \
        pytest.approx(upstream, abs=1e-15)
    assert [cosine_lr_with_floor(optimizer, 0.1, 2, 10, 0.1)(s) for s in range(2, 11)] == \
        pytest.approx([0.1] * 9, abs=1e-15)
