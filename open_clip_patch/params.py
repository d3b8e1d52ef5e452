"""FastCLIP command-line flags: declaration, presets v0–v3 / SogCLR / iSogCLR, validation.

The patched ``open_clip_train.params.parse_args`` calls :func:`add_args` before parsing and
:func:`finalize_args` after, so a bad value stops the run with one line before anything starts.
Flags that a preset sets default to ``None``; an explicit flag always wins over the preset.
"""
import argparse
import sys

VERSIONS = ("v0", "v1", "v2", "v3", "sogclr", "isogclr")
TEMPERATURE_SCHEMES = ("global-constant", "global-learnable", "individual-learnable")
OPTIMIZERS = ("adamw", "lamb", "lion", "sgdm")

# fastclip.md §3, §4, §7. lr_tau=None with a global-learnable scheme means "same as --lr".
PRESETS = {
    "v0": dict(temperature_scheme="global-learnable", gamma_schedule="cosine", temperature=0.07,
               rho=0.0, lr_tau=None, lr_tau_scheduler="cosine", gamma_min=0.2),
    "v1": dict(temperature_scheme="global-constant", gamma_schedule="cosine", temperature=0.07,
               rho=0.0, lr_tau=None, lr_tau_scheduler="cosine", gamma_min=0.2),
    "v2": dict(temperature_scheme="individual-learnable", gamma_schedule="cosine", temperature=0.03,
               rho=7.0, lr_tau=0.0133, lr_tau_scheduler="const", gamma_min=0.2),
    "v3": dict(temperature_scheme="global-learnable", gamma_schedule="cosine", temperature=0.07,
               rho=6.5, lr_tau=2e-4, lr_tau_scheduler="step-thresh", gamma_min=0.2),
    "sogclr": dict(temperature_scheme="global-constant", gamma_schedule="constant", temperature=0.07,
                   rho=0.0, lr_tau=None, lr_tau_scheduler="const", gamma_min=0.9),
    "isogclr": dict(temperature_scheme="individual-learnable", gamma_schedule="constant",
                    temperature=0.01, rho=6.0, lr_tau=0.01, lr_tau_scheduler="const", gamma_min=0.9),
}
# The loss each version optimises (fastclip.md §4).
LOSS_OF_VERSION = {"v0": "GCL", "v1": "GCL", "sogclr": "GCL", "v2": "RGCL", "isogclr": "RGCL",
                   "v3": "RGCL-g"}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Declare every FastCLIP flag on OpenCLIP's parser."""
    g = parser.add_argument_group("FastCLIP")
    g.add_argument("--fastclip", action="store_true", default=False,
                   help="Train with a FastCLIP global contrastive loss optimised by FCCO.")
    g.add_argument("--fastclip-version", choices=VERSIONS, default="v3",
                   help="Preset: loss, temperature rule and γ schedule (explicit flags override).")
    g.add_argument("--data-size", type=int, default=None,
                   help="Size of the sample-id space (ids lie in [0, data-size)). Defaults to the "
                        "dataset's declared id space; required for individual temperatures.")
    g.add_argument("--gamma-min", type=float, default=None, help="Final inner learning rate γ.")
    g.add_argument("--gamma-schedule", choices=("constant", "cosine"), default=None,
                   help="γ schedule: 1 in the first epoch, then γ-min (constant) or cosine decay.")
    g.add_argument("--gamma-decay-epochs", type=int, default=None,
                   help="Epochs over which cosine γ decays to γ-min (default: half of --epochs).")
    g.add_argument("--gamma-per-step", action="store_true", default=False,
                   help="Step the γ schedule every optimiser step instead of every epoch.")
    g.add_argument("--rho", type=float, default=None, help="KL-DRO radius ρ of RGCL / RGCL-g.")
    g.add_argument("--fastclip-eps", type=float, default=1e-14, help="ε inside log(ε + g).")
    g.add_argument("--temperature", type=float, default=None, help="Initial temperature τ.")
    g.add_argument("--temperature-scheme", choices=TEMPERATURE_SCHEMES, default=None,
                   help="How τ is held: one frozen, one learnable, or one per sample.")
    g.add_argument("--lr-tau", type=float, default=None,
                   help="Learning rate of the temperature (logit-scale group or per-sample τ).")
    g.add_argument("--lr-tau-scheduler", choices=("cosine", "const", "const-cooldown", "step-thresh"),
                   default=None, help="Schedule of --lr-tau.")
    g.add_argument("--tau-grad", choices=("exact", "reference"), default="exact",
                   help="exact: the true RGCL-g temperature gradient; reference: the reference "
                        "code's (double-weighted τ·∂g/u term), for which published ρ were tuned.")
    g.add_argument("--stop-epochs", type=int, default=None,
                   help="Stop cleanly after this epoch (with a checkpoint) for chained jobs; "
    g.add_argument("--count-communication", action="store_true", default=False,
                   help="Count the bytes each rank sends per step (loss collectives, gradient "
                        "reduction) and log them after each epoch; off, OpenCLIP's and Horovod's "
                        "collectives run untouched.")
                        "schedules still follow --epochs.")
    g.add_argument("--skip-invalid-ids", action="store_true", default=False,
                   help="Skip (count and warn) webdataset samples whose id is missing or outside "
                        "[0, data-size) instead of stopping with an error.")
    g.add_argument("--fcco-state-fresh", action="store_true", default=False,
                   help="Allow resuming a FastCLIP run from a checkpoint without FCCO state "
                        "(the state restarts from zero).")


def _fail(parser, message):
    # One clear line, before any training starts (argparse's parser.error adds the usage block).
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def apply_preset(args) -> None:
    """Fill every preset-controlled flag the user did not give from the version's preset."""
    preset = PRESETS[args.fastclip_version]
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.lr_tau is None:
        args.lr_tau = args.lr
    if args.gamma_decay_epochs is None:
        args.gamma_decay_epochs = max(1, args.epochs // 2)


def validation_errors(args):
    """Yield one message per invalid FastCLIP setting."""
    if not (0.0 < args.gamma_min <= 1.0):
        yield f"--gamma-min must lie in (0, 1], got {args.gamma_min}"
    if args.rho < 0:
        yield f"--rho must be non-negative, got {args.rho}"
    if not args.fastclip_eps > 0:
        yield f"--fastclip-eps must be positive, got {args.fastclip_eps}"
    if not (0.0 < args.temperature <= 1.0):
        yield f"--temperature must lie in (0, 1], got {args.temperature}"
    if args.lr_tau is not None and args.lr_tau < 0:
        yield f"--lr-tau must be non-negative, got {args.lr_tau}"
    if args.gamma_decay_epochs < 1:
        yield f"--gamma-decay-epochs must be at least 1, got {args.gamma_decay_epochs}"
    if args.accum_freq > 1:
        yield f"--fastclip does not support --accum-freq > 1 (got {args.accum_freq}): FCCO's u " \
              f"update needs each step's features once"
    if args.temperature_scheme == "individual-learnable" and args.data_size is None:
        yield "--temperature-scheme individual-learnable needs --data-size (the sample-id space)"
    if args.data_size is not None and args.data_size < 1:
        yield f"--data-size must be positive, got {args.data_size}"
    loss = LOSS_OF_VERSION[args.fastclip_version]
    individual = args.temperature_scheme == "individual-learnable"
    if individual != (loss == "RGCL"):
        yield f"--temperature-scheme {args.temperature_scheme} does not fit " \
              f"--fastclip-version {args.fastclip_version} ({loss})"
    if args.siglip or args.distill_model or "coca" in args.model.lower():
        yield "--fastclip replaces the CLIP contrastive loss: it cannot be combined with " \
              "--siglip, distillation or CoCa"


def _optimizer_defaults(args):
    # OpenCLIP fills Adam's betas/eps per model after this; Lion needs its own (timm's SGD
    # momentum defaults to 0.9 by itself).
    if args.opt == "lion" and args.beta1 is None and args.beta2 is None:
        args.beta1, args.beta2 = 0.9, 0.99  # the Lion paper's defaults


def finalize_args(args, parser) -> None:
    """Apply presets and validate; called by the patched parse_args after parsing."""
    if args.opt not in OPTIMIZERS and not args.opt.startswith("timm/"):
        _fail(parser, f"--opt must be one of {', '.join(OPTIMIZERS)} or timm/<name>, got {args.opt}")
    if args.stop_epochs is not None and not (1 <= args.stop_epochs <= args.epochs):
        _fail(parser, f"--stop-epochs must lie in [1, --epochs={args.epochs}], got {args.stop_epochs}")
    _optimizer_defaults(args)
    if not args.fastclip:
        return
    apply_preset(args)
    for message in validation_errors(args):
        _fail(parser, message)


def effective_config(args) -> dict:
    """The FastCLIP settings in force, for one log line."""
    names = ("fastclip_version", "data_size", "temperature_scheme", "temperature", "rho",
             "fastclip_eps", "gamma_schedule", "gamma_min", "gamma_decay_epochs", "gamma_per_step",
             "lr_tau", "lr_tau_scheduler", "tau_grad", "opt")
    return {name: getattr(args, name) for name in names}


if __name__ == "__main__":  # pragma: no cover - convenience: list the flags
    p = argparse.ArgumentParser(prog="fastclip")
    add_args(p)
    p.print_help(sys.stdout)
