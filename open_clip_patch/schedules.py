"""γ schedules for the FCCO moving average and lr schedules for the temperature param group.

γ (docs/algorithm.md §4): the first epoch always uses γ = 1 (u starts at 0, so u = g); afterwards
"constant" uses γ_min and "cosine" decays ½(1 + cos(π·E_cur/E))·(1 − γ_min) + γ_min over E
epochs, then stays at γ_min. The paper steps γ once per epoch; ``per_step=True`` uses the
fractional epoch instead.

τ learning rate (v0, v3: the logit-scale param group): "cosine", "const", "const-cooldown" reuse
OpenCLIP's schedulers restricted to that one group; "step-thresh" keeps lr_tau constant (after
warm-up) and multiplies it by 1/3 once τ ≤ 0.03 (docs/algorithm.md §3). OpenCLIP's main scheduler sets
the lr of *every* group, so call the τ schedule after it in each step.
"""
import math

from open_clip_train.scheduler import (_warmup_lr, assign_learning_rate, const_lr,
                                     const_lr_cooldown, cosine_lr)

TAU_LR_SCHEDULES = ("cosine", "const", "const-cooldown", "step-thresh")


class GammaSchedule:
    KINDS = ("constant", "cosine")

    def __init__(self, kind: str = "cosine", gamma_min: float = 0.2, decay_epochs: int = None,
                 per_step: bool = False):
        if kind not in self.KINDS:
            raise ValueError(f"gamma schedule must be one of {self.KINDS}, got {kind!r}")
        if not 0 < gamma_min <= 1:
            raise ValueError(f"gamma_min must lie in (0, 1], got {gamma_min}")
        if kind == "cosine" and (decay_epochs is None or decay_epochs < 1):
            raise ValueError(f"the cosine gamma schedule needs decay_epochs >= 1, "
                             f"got {decay_epochs}")
        self.kind, self.gamma_min = kind, float(gamma_min)
        self.decay_epochs, self.per_step = decay_epochs, per_step

    def __call__(self, epoch: int, fraction: float = 0.0) -> float:
        """γ for ``epoch`` (0-based) with ``fraction`` ∈ [0, 1) of it done (used if per_step)."""
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction of the epoch must lie in [0, 1), got {fraction}")
        if epoch == 0:
            return 1.0
        if self.kind == "constant":
            return self.gamma_min
        progress = epoch + (fraction if self.per_step else 0.0)
        if progress >= self.decay_epochs:
            return self.gamma_min
        cosine = 0.5 * (1 + math.cos(math.pi * progress / self.decay_epochs))
        return cosine * (1 - self.gamma_min) + self.gamma_min

    def state_dict(self):
        return {}       # a pure function of the epoch: nothing to save

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return (f"GammaSchedule({self.kind}, gamma_min={self.gamma_min}, "
                f"decay_epochs={self.decay_epochs}, per_step={self.per_step})")


class _OneGroup:
    """OpenCLIP's schedulers assign the lr to every group of an optimizer; expose just one."""

    def __init__(self, param_group):
        self.param_groups = [param_group]


class OpenCLIPTauLR:
    """"cosine" | "const" | "const-cooldown" on the τ param group (OpenCLIP's functions)."""

    def __init__(self, kind, param_group, base_lr, warmup_length, steps, cooldown_steps=0,
                 cooldown_power=1.0, cooldown_end_lr=0.0):
        group = _OneGroup(param_group)
        if kind == "cosine":
            self._adjust = cosine_lr(group, base_lr, warmup_length, steps)
        elif kind == "const":
            self._adjust = const_lr(group, base_lr, warmup_length, steps)
        elif kind == "const-cooldown":
            if not 0 < cooldown_steps <= steps:
                raise ValueError(f"const-cooldown needs 0 < cooldown_steps <= steps, "
                                 f"got {cooldown_steps} of {steps}")
            self._adjust = const_lr_cooldown(group, base_lr, warmup_length, steps,
                                             cooldown_steps, cooldown_power, cooldown_end_lr)
        else:
            raise ValueError(f"unknown tau lr schedule {kind!r}")
        self.kind = kind

    def __call__(self, step: int, tau=None) -> float:
        return self._adjust(step)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f"OpenCLIPTauLR({self.kind})"


class StepThreshTauLR:
    """lr_tau constant after warm-up; × ``factor`` once τ ≤ ``threshold``.

    ``sticky=True`` keeps the lower lr after the first time τ reaches the threshold (and saves
    that in state_dict); ``sticky=False`` re-checks τ every step, as the reference code does.
    """

    def __init__(self, param_group, base_lr, warmup_length=0, threshold=0.03, factor=1 / 3,
                 sticky=True):
        self.param_group, self.base_lr, self.warmup_length = param_group, base_lr, warmup_length
        self.threshold, self.factor, self.sticky = threshold, factor, sticky
        self.dropped = False

    def __call__(self, step: int, tau) -> float:
        if step < self.warmup_length:
            lr = self.base_lr * (step + 1) / self.warmup_length
        else:
            below = float(tau) <= self.threshold
            self.dropped = (self.dropped and self.sticky) or below
            lr = self.base_lr * (self.factor if self.dropped else 1.0)
        self.param_group["lr"] = lr
        return lr

    def state_dict(self):
        return {"dropped": self.dropped}

    def load_state_dict(self, state):
        self.dropped = bool(state["dropped"])

    def __repr__(self):
        return (f"StepThreshTauLR(threshold={self.threshold}, factor={self.factor}, "
                f"sticky={self.sticky}, dropped={self.dropped})")


def make_tau_lr_schedule(kind, param_group, base_lr, warmup_length, steps, **options):
    """The τ-group schedule ``kind``; call it as ``schedule(step, tau=current_tau)`` each step
    (after OpenCLIP's scheduler). It writes ``param_group["lr"]`` and returns the value."""
    if kind == "step-thresh":
        return StepThreshTauLR(param_group, base_lr, warmup_length, **options)
    if kind in TAU_LR_SCHEDULES:
        return OpenCLIPTauLR(kind, param_group, base_lr, warmup_length, steps, **options)
    raise ValueError(f"tau lr schedule must be one of {TAU_LR_SCHEDULES}, got {kind!r}")


def cosine_lr_with_floor(optimizer, base_lr, warmup_length, steps, lr_min):
    """OpenCLIP's cosine schedule ending at ``lr_min`` instead of 0 (``--lr-min``; the published
    xlarge run ends at 4e-5): linear warm-up to base_lr, then
    lr = lr_min + ½(1 + cos(π·e/E))·(base_lr − lr_min), e the step after warm-up, E their count."""
    if not 0 <= lr_min <= base_lr:
        raise ValueError(f"--lr-min must lie in [0, --lr={base_lr}], got {lr_min}")

    def adjust(step):
        if step < warmup_length:
            lr = _warmup_lr(base_lr, warmup_length, step)
        else:
            progress = (step - warmup_length) / (steps - warmup_length)
            lr = lr_min + 0.5 * (1 + math.cos(math.pi * progress)) * (base_lr - lr_min)
        assign_learning_rate(optimizer, lr)
        return lr

    return adjust
