"""The temperature rules (docs/algorithm.md §3): how τ is initialised, frozen and scheduled.

A global τ is OpenCLIP's logit scale θ with τ = exp(−θ) = 1 / logit_scale. It is frozen for the
``global-constant`` scheme (v1, SogCLR by default) and for ``individual-learnable`` (v2, iSogCLR:
the per-sample τ live in the loss's state), and learned with its own parameter group and learning
rate schedule for ``global-learnable`` (v0, v3 by default). The scheme is the run's effective one
(``--temperature-scheme`` over the version's), the same the loss reads (params.loss_kwargs), so
a learned τ is live in the loss exactly when the logit scale has a gradient and an lr_τ group.
OpenCLIP's clamp θ ∈ [0, ln 100] stays.
"""
import logging
import math

import torch

from . import optim
from .schedules import cosine_lr_with_floor, make_tau_lr_schedule


def learns_global_tau(args):
    return getattr(args, "fastclip", False) and args.temperature_scheme == "global-learnable"


def _logit_scale(model):
    model = getattr(model, "module", model)
    return model.logit_scale


def init_logit_scale(args, model):
    """Set θ = ln(1/τ) from --temperature; freeze it unless the scheme learns a global τ."""
    if args.temperature is None:  # baseline without --temperature: OpenCLIP's own init
        return
    logit_scale = _logit_scale(model)
    with torch.no_grad():
        logit_scale.fill_(math.log(1.0 / args.temperature))
    if getattr(args, "fastclip", False):
        logit_scale.requires_grad_(learns_global_tau(args))
        logging.info(f"FastCLIP temperature: τ₀={args.temperature}, scheme "
                     f"{args.temperature_scheme}, logit scale learnable: {logit_scale.requires_grad}")


class SchedulerWithTemperature:
    """OpenCLIP's lr schedule for every group, then --lr-tau's schedule for the logit scale."""

    def __init__(self, base, tau_schedule, logit_scale):
        self.base, self.tau_schedule, self.logit_scale = base, tau_schedule, logit_scale

    def __call__(self, step):
        lr = self.base(step) if self.base is not None else None
        self.tau_schedule(step, tau=math.exp(-self.logit_scale.item()))
        return lr

    def state_dict(self):
        return self.tau_schedule.state_dict()

    def load_state_dict(self, state):
        self.tau_schedule.load_state_dict(state)


def wrap_scheduler(args, scheduler, optimizer, model, total_steps):
    """OpenCLIP's scheduler, floored at --lr-min (baseline too), then the τ group's schedule."""
    if getattr(args, "lr_min", None) is not None:
        scheduler = cosine_lr_with_floor(optimizer, args.lr, args.warmup, total_steps, args.lr_min)
        logging.info(f"cosine lr schedule from {args.lr} to the floor --lr-min {args.lr_min}")
    tau_group = optim.temperature_group(optimizer)
    if tau_group is None:
        return scheduler
    options = {}
    if args.lr_tau_scheduler == "const-cooldown":
        options = dict(cooldown_steps=(total_steps // args.epochs) * (args.epochs_cooldown or 0),
                       cooldown_power=args.lr_cooldown_power, cooldown_end_lr=args.lr_cooldown_end)
    schedule = make_tau_lr_schedule(args.lr_tau_scheduler, tau_group, args.lr_tau, args.warmup,
                                    total_steps, **options)
    logging.info(f"FastCLIP τ learning rate: {args.lr_tau} with schedule {args.lr_tau_scheduler}")
    return SchedulerWithTemperature(scheduler, schedule, _logit_scale(model))
