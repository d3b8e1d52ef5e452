"""Load a model to evaluate: an OpenCLIP training checkpoint plus what the run says about it.

An OpenCLIP run directory looks like ``<logs>/<name>/{params.txt, checkpoints/epoch_<N>.pt}``.
The model name and samples per epoch are read from ``params.txt`` when ``--model`` is not given;
the epoch is read from the checkpoint. Every evaluation script takes these flags (add_model_args).
"""
import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class EvalModel:
    """What the metric code needs: a CLIP-like module, its tokenizer and image transform."""
    model: torch.nn.Module  # has encode_image(images) and encode_text(tokens)
    tokenizer: object       # list[str] -> LongTensor
    transform: object       # PIL image -> tensor
    device: str = "cpu"
    amp: bool = False
    info: dict = field(default_factory=dict)

    @property
    def device_type(self):
        return torch.device(self.device).type


def read_params(run_dir):
    """OpenCLIP's ``params.txt`` ("key: value" lines) as a dict of strings ({} if absent)."""
    path = Path(run_dir) / "params.txt"
    if not path.is_file():
        return {}
    params = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            params[key.strip()] = value.strip()
    return params


def checkpoint_info(checkpoint, model_name=None, samples_per_epoch=None):
    """Model name, run name, epoch and samples seen for a checkpoint in an OpenCLIP run dir."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    run_dir = checkpoint.resolve().parent.parent
    params = read_params(run_dir)
    model_name = model_name or params.get("model")
    if not model_name:
        raise ValueError(f"no --model given and no 'model:' line in {run_dir / 'params.txt'}")
    state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    epoch = state.get("epoch") if isinstance(state, dict) else None
    weights = state.get("state_dict", state) if isinstance(state, dict) else {}
    if samples_per_epoch is None and params.get("train_num_samples", "None") != "None":
        samples_per_epoch = int(params["train_num_samples"])
    samples_seen = epoch * samples_per_epoch if epoch is not None and samples_per_epoch else None
    return {"checkpoint": str(checkpoint), "model": model_name,
            "run_name": params.get("name", run_dir.name), "epoch": epoch,
            "samples_seen": samples_seen,
            # sigmoid-loss (SigLIP) runs carry a logit_bias that CLIP models lack
            "logit_bias": any(key.endswith("logit_bias") for key in weights)}


def load_model(checkpoint, model_name=None, device="cpu", amp=False, samples_per_epoch=None):
    """Build the model from an OpenCLIP checkpoint (keys may carry a "module." prefix)."""
    import open_clip
    import open_clip_patch  # noqa: F401  registers the overlay's model configs

    info = checkpoint_info(checkpoint, model_name, samples_per_epoch)
    # A SigLIP (--siglip) run's model has a logit_bias a CLIP model lacks: OpenCLIP must be
    # asked for one before the weights load (its value then comes from the checkpoint).
    bias = {"init_logit_bias": 0.0} if info["logit_bias"] else {}
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            info["model"], pretrained=str(checkpoint), device=device, **bias)
    except RuntimeError as error:
        raise RuntimeError(f"cannot load {checkpoint} into model {info['model']!r}: {error}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(info["model"])
    return EvalModel(model, tokenizer, transform, device=device, amp=amp, info=info)


def default_output_dir(checkpoint):
    """<run dir>/eval/<checkpoint stem>: logs/x/checkpoints/epoch_3.pt -> logs/x/eval/epoch_3."""
    checkpoint = Path(checkpoint).resolve()
    return checkpoint.parent.parent / "eval" / checkpoint.stem


def add_model_args(parser, checkpoint_required=True):
    """Flags shared by the evaluation scripts."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", required=checkpoint_required,
                       help="OpenCLIP checkpoint (epoch_N.pt)")
    group.add_argument("--model", default=None,
                       help="OpenCLIP model name (default: 'model' in the run's params.txt)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--amp", action="store_true", help="autocast the encoders")
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    group.add_argument("--samples-per-epoch", type=int, default=None,
                       help="for samples seen in reports "
                            "(default: train_num_samples in params.txt)")
    group.add_argument("--output-dir", default=None,
                       help="where results go (default: <run dir>/eval/<checkpoint stem>)")
    return parser


def model_from_args(args: argparse.Namespace):
    return load_model(args.checkpoint, args.model, device=args.device, amp=args.amp,
                      samples_per_epoch=args.samples_per_epoch)
