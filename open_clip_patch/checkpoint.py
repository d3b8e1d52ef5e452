"""FastCLIP state in OpenCLIP checkpoints: one key, checked on resume, written atomically.

Everything FastCLIP adds to a checkpoint lives under ``checkpoint["fastclip"]`` and comes from
the overlay objects' ``state_dict()``: the loss (per-sample u, and for per-sample τ the τ values
and their optimizer moments), the τ learning-rate schedule, and the RNG streams (so a resumed run
draws the same data order and augmentations as an uninterrupted one). The γ schedule is a pure
function of the epoch. On resume, one process restores its RNG streams exactly and several
processes reseed theirs (:func:`restore_rng_streams`).

    python -m pytest -q tests/test_checkpoint.py
"""
import logging
import os
import random
import tempfile

import numpy as np
import torch

CHECKPOINT_KEY = "fastclip"
FORMAT_VERSION = 1


class CheckpointMismatch(RuntimeError):
    """A checkpoint that cannot continue this run's FastCLIP state."""


def rng_state():
    # Only tensors and plain Python values: OpenCLIP loads checkpoints with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def seed_rank_streams(seed, rank, epoch):
    """Distinct, reproducible RNG streams per rank for a resumed multi-process run.

    A checkpoint is written by rank 0 and carries only its streams; restoring them on every
    rank would give all ranks the same augmentations, so each rank reseeds instead."""
    value = seed + rank + 100_003 * epoch
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def restore_rng_streams(saved, world_size, seed, rank, epoch):
    """One process continues bit-exactly from the saved streams; with several, each rank
    reseeds (:func:`seed_rank_streams`), since the checkpoint holds only rank 0's streams."""
    if world_size == 1:
        set_rng_state(saved)
    else:
        seed_rank_streams(seed, rank, epoch)


def fastclip_entry(args, data_size, loss, scheduler):
    """What a FastCLIP run adds to its checkpoint (references to the live state, no copies)."""
    entry = {"format": FORMAT_VERSION, "version": args.fastclip_version,
             "data_size": data_size, "loss": loss.state_dict(), "rng": rng_state()}
    if hasattr(scheduler, "state_dict"):
        entry["scheduler"] = scheduler.state_dict()
    return entry


def check_entry(args, entry, source, data_size):
    """Refuse a checkpoint whose FastCLIP state does not belong to this run (``data_size``: the
    run's sample-id space, None while the data has not resolved it)."""
    if entry is None:
        if args.fcco_state_fresh:
            logging.warning("!" * 20 + f" {source} has no FastCLIP state: --fcco-state-fresh given, "
                            "so u (and per-sample τ) restart from zero " + "!" * 20)
            return False
        raise CheckpointMismatch(
            f"{source} has no FastCLIP state (key '{CHECKPOINT_KEY}'), so this FastCLIP run "
            f"cannot continue it; pass --fcco-state-fresh to start the FCCO state from zero")
    if entry["version"] != args.fastclip_version:
        raise CheckpointMismatch(
            f"{source} was written by FastCLIP {entry['version']}, this run is "
            f"--fastclip-version {args.fastclip_version}")
    if data_size is not None and entry["data_size"] != data_size:
        raise CheckpointMismatch(
            f"{source} holds FCCO state for --data-size {entry['data_size']}, this run has "
            f"--data-size {data_size}")
    return True


def save_atomically(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
