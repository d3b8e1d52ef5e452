"""γ schedules for the FCCO moving average and lr schedules for the temperature param group.

γ (fastclip.md §4): the first epoch always uses γ = 1 (u starts at 0, so u = g); afterwards
"constant" uses γ_min and "cosine" decays ½(1 + cos(π·E_cur/E))·(1 − γ_min) + γ_min over E
epochs, then stays at γ_min. The paper steps γ once per epoch (integer progress); stepping per
step passes the fractional epoch instead.

τ learning rate (v0, v3: the logit-scale param group): "cosine", "const", "const-cooldown" are
OpenCLIP's own schedulers; "step-thresh" keeps lr_tau constant after warm-up and multiplies it by
1/3 once τ ≤ 0.03 (fastclip.md §3).
"""
import math

from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

GAMMA_SCHEDULES = ("constant", "cosine")
TAU_LR_SCHEDULES = ("cosine", "const", "const-cooldown", "step-thresh")


def gamma_at(progress: float, kind: str, gamma_min: float, decay_epochs: int) -> float:
    """γ at ``progress`` epochs into training (0-based; fractional when stepped per step)."""
    if kind not in GAMMA_SCHEDULES:
        raise ValueError(f"gamma schedule must be one of {GAMMA_SCHEDULES}, got {kind!r}")
    if not 0 < gamma_min <= 1:
        raise ValueError(f"gamma_min must lie in (0, 1], got {gamma_min}")
    if progress < 1:
        return 1.0
    if kind == "constant":
        return float(gamma_min)
    if decay_epochs is None or decay_epochs < 1:
        raise ValueError(f"the cosine gamma schedule needs decay_epochs >= 1, got {decay_epochs}")
    if progress >= decay_epochs:
        return float(gamma_min)
    cosine = 0.5 * (1 + math.cos(math.pi * progress / decay_epochs))
    return cosine * (1 - gamma_min) + gamma_min


class _LrSink:
    """OpenCLIP's schedulers write the lr into every group of an optimizer; give them one
    private group, so the τ schedule only computes its value (the caller assigns it)."""

    def __init__(self):
        self.param_groups = [{"lr": None}]


class TauLrSchedule:
    """lr of the logit-scale group at ``step``: ``schedule(step) -> lr``.

    ``tau`` is a callable returning the current global τ (read by "step-thresh" only).
    "step-thresh" with ``sticky=True`` keeps the lower lr once τ has reached ``threshold`` (saved
    in state_dict); ``sticky=False`` re-checks τ every step, as the reference code does.
    """

    def __init__(self, kind, base_lr, warmup, total_steps, tau=None, cooldown_steps=0,
                 cooldown_power=1.0, cooldown_end=0.0, threshold=0.03, factor=1 / 3,
                 sticky=True):
        if kind not in TAU_LR_SCHEDULES:
            raise ValueError(f"tau lr schedule must be one of {TAU_LR_SCHEDULES}, got {kind!r}")
        self.kind, self.base_lr, self.warmup = kind, base_lr, warmup
        self.tau, self.threshold, self.factor, self.sticky = tau, threshold, factor, sticky
        self.dropped = False
        sink = _LrSink()
        if kind == "cosine":
            self._openclip = cosine_lr(sink, base_lr, warmup, total_steps)
        elif kind == "const":
            self._openclip = const_lr(sink, base_lr, warmup, total_steps)
        elif kind == "const-cooldown":
            if not 0 < cooldown_steps <= total_steps:
                raise ValueError(f"const-cooldown needs 0 < cooldown_steps <= total_steps, got "
                                 f"{cooldown_steps} of {total_steps}")
            self._openclip = const_lr_cooldown(sink, base_lr, warmup, total_steps,
                                               cooldown_steps, cooldown_power, cooldown_end)
        elif tau is None:
            raise ValueError("step-thresh needs tau, a callable returning the current τ")

    def __call__(self, step: int) -> float:
        if self.kind != "step-thresh":
            return self._openclip(step)
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        below = float(self.tau()) <= self.threshold
        self.dropped = (self.dropped and self.sticky) or below
        return self.base_lr * (self.factor if self.dropped else 1.0)

    def state_dict(self):
        return {"dropped": self.dropped} if self.kind == "step-thresh" else {}

    def load_state_dict(self, state):
        if self.kind == "step-thresh":
            self.dropped = bool(state["dropped"])

    def __repr__(self):
        return f"TauLrSchedule({self.kind}, base_lr={self.base_lr}, warmup={self.warmup})"
