"""Optimizers the paper compares (AdamW, LAMB, Lion, SGD with momentum), all from timm.optim.

Parameter groups follow OpenCLIP: no weight decay on gains, biases and 1-D parameters. A
learnable global temperature (the logit scale) gets a group of its own (weight decay 0,
``--lr-tau``) so that its learning rate can follow its own schedule.
"""
import logging

from timm.optim import create_optimizer_v2

TEMPERATURE_GROUP = "logit_scale"

# Our --opt names -> timm's registry names (timm's "momentum" is SGD with plain momentum). timm's
# OptimInfo decides which of betas, eps and momentum each one takes (and momentum's default, 0.9).
TIMM_NAMES = {"adamw": "adamw", "lamb": "lamb", "lion": "lion", "sgdm": "momentum"}


def _no_weight_decay(name, param):
    # OpenCLIP's rule (open_clip_train/main.py): gains, biases, norms and the logit scale.
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def parameter_groups(model, weight_decay, lr_tau=None):
    """OpenCLIP's two groups; with ``lr_tau`` the logit scale moves to a third group."""
    decay, no_decay, temperature = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if lr_tau is not None and name.endswith("logit_scale"):
            temperature.append(param)
        elif _no_weight_decay(name, param):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    if temperature:
        groups.append({"params": temperature, "weight_decay": 0.0, "lr": lr_tau,
                       "group_name": TEMPERATURE_GROUP})
    return groups


def optimizer_kwargs(args):
    """Every optimizer hyper-parameter the flags give; timm drops those an optimizer lacks."""
    kwargs = {"betas": (args.beta1, args.beta2), "eps": args.eps}
    if args.momentum is not None:
        kwargs["momentum"] = args.momentum
    return kwargs


def create_optimizer(args, model, lr_tau=None):
    """The ``--opt`` optimizer over OpenCLIP's parameter groups (+ the temperature group)."""
    timm_name = TIMM_NAMES[args.opt]
    groups = parameter_groups(model, args.wd, lr_tau)
    optimizer = create_optimizer_v2(groups, opt=timm_name, lr=args.lr, weight_decay=args.wd,
                                    **optimizer_kwargs(args))
    logging.info("FastCLIP optimizer %s (timm '%s') with %d parameter groups%s", args.opt,
                 timm_name, len(optimizer.param_groups),
                 f", temperature lr {lr_tau}" if lr_tau is not None else "")
    return optimizer


def temperature_group(optimizer):
    """The logit-scale parameter group, or None when the temperature is not learned globally."""
    for group in optimizer.param_groups:
        if group.get("group_name") == TEMPERATURE_GROUP:
            return group
    return None
