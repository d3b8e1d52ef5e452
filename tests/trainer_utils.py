"""Helpers for tests that run the patched OpenCLIP trainer on tiny data.

Runs happen in-process (``open_clip_train.main.main``) for speed; OpenCLIP's logger adds handlers
to the root logger on every run, so :func:`run_trainer` removes them afterwards.
"""
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY_MODEL = "fastclip-tiny-vit"
LOSS_RE = re.compile(r"Contrastive_loss: ([-+0-9.e]+)")

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("WANDB_MODE", "offline")


@dataclass
class RunResult:
    log_dir: Path
    log_text: str

    @property
    def step_losses(self):
        """Per-step contrastive loss as logged (needs --log-every-n-steps 1)."""
        return [float(x) for x in LOSS_RE.findall(self.log_text)]

    def checkpoint(self, epoch):
        return self.log_dir / "checkpoints" / f"epoch_{epoch}.pt"


def base_flags(logs, name, *, batch_size=8, epochs=1, lr=1e-3):
    return [
        "--logs", str(logs), "--name", name, "--model", TINY_MODEL, "--device", "cpu",
        "--workers", "0", "--batch-size", str(batch_size), "--epochs", str(epochs),
        "--lr", str(lr), "--wd", "0.1", "--warmup", "2", "--seed", "0",
        "--log-every-n-steps", "1", "--save-frequency", "1", "--zeroshot-frequency", "0",
        "--precision", "fp32",  # CPU autocast (bf16) is slower than fp32 without AMX
    ]


def run_trainer(logs, name, extra_flags, **base):
    """Run the patched trainer in this process and return its log."""
    import open_clip_patch  # noqa: F401  (registers the tiny model config)
    from open_clip_train.main import main

    before = list(logging.root.handlers)
    try:
        status = main(base_flags(logs, name, **base) + list(extra_flags))
    finally:
        for handler in logging.root.handlers[len(before):]:
            handler.close()
        logging.root.handlers[:] = before
    assert status in (None, 0), f"trainer returned {status}"
    log_dir = Path(logs) / name
    return RunResult(log_dir, (log_dir / "out.log").read_text())


def run_trainer_subprocess(logs, name, extra_flags, env=None, model=TINY_MODEL, **base):
    """Run ``python -m open_clip_train.main`` in a fresh interpreter (e.g. the unpatched tree)."""
    flags = base_flags(logs, name, **base) + list(extra_flags)
    flags[flags.index("--model") + 1] = model
    proc = subprocess.run([PYTHON, "-m", "open_clip_train.main", *flags], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log_dir = Path(logs) / name
    return RunResult(log_dir, (log_dir / "out.log").read_text())


def write_digits_csv(out_dir, n=64, image_size=32):
    """scikit-learn digits as PNG files plus an OpenCLIP CSV (filepath, title); varied data."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle"]
    for i in range(n):
        pixels = (digits.images[i] / 16.0 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((image_size, image_size)).convert("RGB")
        path = out_dir / f"{i:05d}.png"
        image.save(path)
        rows.append(f"{path}\ta photo of the digit {digits.target[i]}")
    csv = out_dir / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def write_tiny_model_dir(out_dir):
    """The tiny model as a ``local-dir:`` folder, loadable by an unpatched OpenCLIP too."""
    config = json.loads((REPO / "open_clip_patch" / "model_configs" / f"{TINY_MODEL}.json").read_text())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    return out_dir
