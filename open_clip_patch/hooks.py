"""The functions the patched OpenCLIP trainer calls (see patches/series).

Each hook returns OpenCLIP's own behaviour while ``--fastclip`` is off, so the baseline is
exactly upstream's; with it on, the hook hands over to the overlay's modules.
"""
import logging

import open_clip

from . import params


def create_loss(args):
    """OpenCLIP's loss, or the FastCLIP loss for ``--fastclip``."""
    if not getattr(args, "fastclip", False):
        return open_clip.create_loss(args)
    from .losses import FastCLIPLoss

    logging.info("FastCLIP configuration: %s", params.effective_config(args))
    return FastCLIPLoss(
        version=args.fastclip_version,
        data_size=args.data_size,
        rho=args.rho,
        eps=args.fastclip_eps,
        tau_grad=args.tau_grad,
        temperature=args.temperature,
        lr_tau=args.lr_tau,
    )
