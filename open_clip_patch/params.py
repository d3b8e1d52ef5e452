"""FastCLIP command-line flags: declaration, presets v0–v3 / SogCLR / iSogCLR, validation.

    python -m open_clip_patch.params          # list the flags

The patched ``open_clip_train.params.parse_args`` calls :func:`add_args` before parsing and
:func:`finalize_args` after, so a bad value stops the run with one line before anything starts.
Flags that a preset sets default to ``None``; an explicit flag always wins over the preset.
"""
import argparse
import sys

from .versions import SCHEMES_OF_OBJECTIVE, TAU_GRAD_MODES, TEMPERATURE_SCHEMES, VERSIONS

OPTIMIZERS = ("adamw", "lamb", "lion", "sgdm")
# The fields of a version record (versions.py) that a flag of the same name can override.
PRESET_FLAGS = ("temperature_scheme", "gamma_schedule", "temperature", "rho", "lr_tau",
                "lr_tau_scheduler", "gamma_min")


def preset(version: str) -> dict:
    """The flag values ``--fastclip-version version`` sets where the command line does not
    (lr_tau None: the same as --lr)."""
    record = VERSIONS[version]
    return {name: getattr(record, name) for name in PRESET_FLAGS}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Declare every FastCLIP flag on OpenCLIP's parser."""
    g = parser.add_argument_group("FastCLIP")
    g.add_argument("--fastclip", action="store_true", default=False,
                   help="Train with a FastCLIP global contrastive loss optimised by FCCO.")
    g.add_argument("--fastclip-version", choices=tuple(VERSIONS), default="v3",
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
    g.add_argument("--fcco-mode", "--tau-grad", dest="fcco_mode", choices=TAU_GRAD_MODES,
                   default="exact",
                   help="exact: the stated objective's estimator; reference: the reference "
                        "implementation's (½ loss scale, doubled τ·∂g/u term of v0/v3, v2's "
                        "weighting, shifted ε and Adam), under which the published settings were "
                        "tuned (docs/algorithm.md §9). --tau-grad is its old name.")
    g.add_argument("--lr-min", type=float, default=None,
                   help="Floor of the cosine lr schedule (OpenCLIP decays to 0): "
                        "lr = lr_min + ½(1+cos)(lr − lr_min) after warm-up. Baseline too.")
    g.add_argument("--stop-epochs", type=int, default=None,
                   help="Stop cleanly after this epoch (with a checkpoint) for chained jobs; "
                        "schedules still follow --epochs.")
    g.add_argument("--skip-invalid-ids", action="store_true", default=False,
                   help="Skip (count and warn) webdataset samples whose id is missing or outside "
                        "[0, data-size) instead of stopping with an error.")
    g.add_argument("--fcco-state", choices=("sharded", "replicated"), default="sharded",
                   help="With K > 1 ranks: each rank holds only the 1/K of the FCCO state it "
                        "owns (sharded, default) or all of it (replicated). One process holds "
                        "all of it either way.")
    g.add_argument("--fcco-state-device", choices=("cpu", "cuda"), default="cpu",
                   help="Where the per-sample FCCO state lives: host memory (cpu, default) or "
                        "this rank's GPU (cuda: the rows' reads and writes stay on the device, "
                        "at data_size x columns x 4 bytes of GPU memory; tools/gpu_check.py "
                        "measures both).")
    g.add_argument("--fcco-state-fresh", action="store_true", default=False,
                   help="Allow resuming a FastCLIP run from a checkpoint without FCCO state "
                        "(the state restarts from zero).")
    g.add_argument("--dist-timeout", type=float, default=None,
                   help="Minutes a collective waits for a stalled rank before the run fails "
                        "(torch.distributed's timeout; Horovod's stall shutdown time). Default: "
                        "torch's (30 min for gloo, 10 min for NCCL) and Horovod's (none).")
    g.add_argument("--count-communication", action="store_true", default=False,
                   help="Count the bytes each rank sends per step (loss collectives, gradient "
                        "reduction) and log them after each epoch; off, OpenCLIP's and Horovod's "
                        "collectives run untouched.")


def _fail(parser, message):
    # One clear line, before any training starts (argparse's parser.error adds the usage block).
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def apply_preset(args) -> None:
    """Fill every preset-controlled flag the user did not give from the version's preset."""
    for name, value in preset(args.fastclip_version).items():
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
    if args.fcco_state_device == "cuda" and not str(args.device).startswith("cuda"):
        yield f"--fcco-state-device cuda needs --device cuda, got --device {args.device}"
    if args.data_size is not None and args.data_size < 1:
        yield f"--data-size must be positive, got {args.data_size}"
    objective = VERSIONS[args.fastclip_version].objective
    if args.temperature_scheme not in SCHEMES_OF_OBJECTIVE[objective]:
        yield f"--temperature-scheme {args.temperature_scheme} does not fit " \
              f"--fastclip-version {args.fastclip_version} ({objective} needs " \
              f"{' or '.join(SCHEMES_OF_OBJECTIVE[objective])})"
    if args.siglip or args.distill_model or "coca" in args.model.lower():
        yield "--fastclip replaces the CLIP contrastive loss: it cannot be combined with " \
              "--siglip, distillation or CoCa"


def baseline_errors(args):
    """Yield one message per FastCLIP-only or invalid setting of an OpenCLIP (baseline) run."""
    if args.temperature is not None and not (0.0 < args.temperature <= 1.0):
        yield f"--temperature must lie in (0, 1], got {args.temperature}"
    if args.lr_tau is not None:
        yield "--lr-tau needs --fastclip: the OpenCLIP baseline trains its logit scale with --lr"


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
    if args.lr_min is not None:   # --lr may still be unset here (OpenCLIP fills it per model)
        if args.lr_scheduler != "cosine" or args.lr_min < 0 or args.lr_min > (args.lr or args.lr_min):
            _fail(parser, f"--lr-min needs --lr-scheduler cosine and 0 <= --lr-min <= --lr, got "
                          f"--lr-min {args.lr_min} with --lr {args.lr}, {args.lr_scheduler}")
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        _fail(parser, f"--dist-timeout must be a positive number of minutes, got {args.dist_timeout}")
    if not args.fastclip:
        for message in baseline_errors(args):
            _fail(parser, message)
        return
    apply_preset(args)
    for message in validation_errors(args):
        _fail(parser, message)


def effective_version(args):
    """The version record with this run's flags applied (call after :func:`finalize_args`)."""
    return VERSIONS[args.fastclip_version].with_overrides(
        **{name: getattr(args, name) for name in PRESET_FLAGS})


def effective_config(args) -> dict:
    """The FastCLIP settings in force, for one log line; ``tau_learned`` says what of τ is
    trained (the loss, the logit scale's requires_grad and its optimizer group all follow it)."""
    names = ("fastclip_version", "data_size", "temperature_scheme", "temperature", "rho",
             "fastclip_eps", "gamma_schedule", "gamma_min", "gamma_decay_epochs", "gamma_per_step",
             "lr_tau", "lr_tau_scheduler", "fcco_mode", "opt")
    config = {name: getattr(args, name) for name in names}
    config["tau_learned"] = effective_version(args).learned_tau()
    return config


def loss_kwargs(args, data_size=None) -> dict:
    """Every keyword of ``losses.FastCLIPLoss`` that the flags decide, i.e. all but ``comm``
    (the trainer's backend) and those left at their defaults: ``gamma`` (the trainer sets it
    every step from the γ schedule) and ``state_dtype`` (float32); ``state_device`` is
    ``--fcco-state-device`` (cuda: the rank's own GPU, ``args.device`` once OpenCLIP set it).
    ``data_size`` (default --data-size) is the id space the data found when the flag is unset."""
    spec = effective_version(args)
    return dict(
        version=args.fastclip_version, data_size=args.data_size if data_size is None else data_size,
        temperature_scheme=spec.temperature_scheme, temperature=spec.temperature, rho=spec.rho,
        eps=args.fastclip_eps, fcco_mode=args.fcco_mode, lr_tau=spec.lr_tau,
        # the per-sample τ Adam (v2) borrows the model optimizer's betas/eps where it has them
        tau_betas=(args.beta1 or 0.9, args.beta2 or 0.999), tau_eps=args.eps or 1e-8,
        tau_min=spec.tau_min, tau_max=spec.tau_max, state_layout=args.fcco_state,
        state_device=args.device if args.fcco_state_device == "cuda" else "cpu")


if __name__ == "__main__":  # pragma: no cover - convenience: list the flags
    p = argparse.ArgumentParser(prog="fastclip")
    add_args(p)
    p.print_help(sys.stdout)
