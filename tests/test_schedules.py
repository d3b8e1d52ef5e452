"""γ schedules and τ learning-rate schedules."""
import math

import pytest

from open_clip_patch.schedules import TauLrSchedule, gamma_at


def test_constant_gamma_is_one_in_the_first_epoch_then_gamma_min():
    assert [gamma_at(e, "constant", 0.9, None) for e in range(4)] == [1.0, 0.9, 0.9, 0.9]
    assert gamma_at(0.99, "constant", 0.9, None) == 1.0


def test_cosine_gamma_follows_the_paper_formula_then_stays_flat():
    # ½(1 + cos(π·e/4))·0.8 + 0.2 for e = 1, 2, 3; 1 in epoch 0; 0.2 from epoch 4 on.
    expected = [1.0, 0.2 + 0.4 * (1 + math.sqrt(0.5)), 0.6, 0.2 + 0.4 * (1 - math.sqrt(0.5)),
                0.2, 0.2, 0.2]
    actual = [gamma_at(e, "cosine", 0.2, 4) for e in range(7)]
    assert actual == pytest.approx(expected, abs=1e-15)


def test_cosine_gamma_per_step_uses_the_fractional_epoch():
    assert gamma_at(0.75, "cosine", 0.2, 4) == 1.0            # still the first epoch
    assert gamma_at(2.5, "cosine", 0.2, 4) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 2.5 / 4)) * 0.8 + 0.2)
    assert gamma_at(3.99, "cosine", 0.2, 4) > 0.2 and gamma_at(4.0, "cosine", 0.2, 4) == 0.2


@pytest.mark.parametrize("kind,gamma_min,decay", [("linear", 0.2, 3), ("cosine", 0.0, 3),
                                                  ("cosine", 1.5, 3), ("cosine", 0.2, 0)])
def test_gamma_schedule_rejects_bad_settings(kind, gamma_min, decay):
    with pytest.raises(ValueError):
        gamma_at(2, kind, gamma_min, decay)


def test_cosine_and_const_tau_lr_are_openclips():
    cosine = TauLrSchedule("cosine", base_lr=2e-4, warmup=10, total_steps=110)
    assert cosine(4) == pytest.approx(2e-4 * 5 / 10)              # linear warm-up
    assert cosine(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)) * 2e-4)
    assert TauLrSchedule("const", 1e-4, 0, 100)(50) == 1e-4
    assert cosine.state_dict() == {}


def test_const_cooldown_tau_lr():
    cooldown = TauLrSchedule("const-cooldown", 1e-4, 0, 100, cooldown_steps=20)
    assert cooldown(79) == 1e-4
    assert cooldown(90) == pytest.approx(1e-4 * 0.5)               # linear decay to 0 at 100
    with pytest.raises(ValueError, match="cooldown_steps"):
        TauLrSchedule("const-cooldown", 1e-4, 0, 100)
    with pytest.raises(ValueError, match="one of"):
        TauLrSchedule("exp", 1e-4, 0, 100)


def test_step_thresh_drops_once_and_remembers_it_across_a_resume():
    tau = {"value": 0.01}
    schedule = TauLrSchedule("step-thresh", 3e-4, 2, 100, tau=lambda: tau["value"])
    assert schedule(0) == pytest.approx(1.5e-4)                    # warm-up ignores τ
    tau["value"] = 0.05
    assert schedule(5) == 3e-4
    tau["value"] = 0.03
    assert schedule(6) == pytest.approx(1e-4)                      # τ ≤ 0.03: × 1/3
    tau["value"] = 0.05
    assert schedule(7) == pytest.approx(1e-4)                      # sticky
    resumed = TauLrSchedule("step-thresh", 3e-4, 2, 100, tau=lambda: tau["value"])
    assert resumed(8) == 3e-4
    resumed.load_state_dict(schedule.state_dict())
    assert resumed(8) == pytest.approx(1e-4)


def test_step_thresh_non_sticky_follows_the_current_tau_like_the_reference():
    tau = {"value": 0.02}
    schedule = TauLrSchedule("step-thresh", 3e-4, 0, 100, tau=lambda: tau["value"], sticky=False)
    assert schedule(1) == pytest.approx(1e-4)
    tau["value"] = 0.05
    assert schedule(2) == 3e-4
    with pytest.raises(ValueError, match="tau"):
        TauLrSchedule("step-thresh", 3e-4, 0, 100)
