"""The patched trainer on 2 CPU ranks (gloo), launched as users launch it.

``torchrun --standalone --nproc_per_node 2 -m open_clip_train.main -- --fastclip ...`` trains
one epoch of a two-epoch schedule (--stop-epochs 1) on digits, logs the bytes sent per step
(--count-communication) and writes a checkpoint. Then two processes started with the environment ``srun`` gives each task
(SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, plus MASTER_ADDR/PORT as a batch script exports
them) resume it through OpenCLIP's SLURM detection: both ranks must start from exactly the state
the first job saved (the replica fingerprints agree), and finish the second epoch.
"""
import json
import os
import re
import socket
import subprocess
import sysconfig
from pathlib import Path

import torch
import torch.multiprocessing as mp

import open_clip_patch  # noqa: F401  (registers the tiny model)
import open_clip
from open_clip_train.main import main as trainer_main
from trainer_utils import PYTHON, TINY_MODEL, base_flags, write_digits_csv

WORLD_SIZE, BATCH_SIZE, SAMPLES = 2, 4, 32
COMM_LINE = re.compile(r"Communication per step and rank: .* \| (\{.*\})")
FINGERPRINT = re.compile(r"FCCO state identical on all 2 ranks (.+?) \(fingerprint (\w+)\)")


def trainer_flags(tmp_path, name, *extra):
    csv = write_digits_csv(tmp_path / "digits", n=SAMPLES)
    return base_flags(tmp_path / "logs", name, batch_size=BATCH_SIZE, epochs=2) + [
        "--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath",
        "--csv-caption-key", "title", "--precision", "fp32",
        "--fastclip", "--fastclip-version", "v2", "--data-size", str(SAMPLES),
        # replicas, so that every rank's state can be fingerprinted; the sharded layout is
        # resumed across world sizes in tests/test_distributed_resume.py
        "--fcco-state", "replicated", "--count-communication", *extra]


def fingerprints(log_text):
    return dict(FINGERPRINT.findall(log_text))


def communication(log_text):
    return [json.loads(match) for match in COMM_LINE.findall(log_text)]


def trainable_bytes():
    """The tiny model's float32 parameters less the logit scale (frozen for v2's per-sample τ)."""
    model = open_clip.create_model(TINY_MODEL)
    return 4 * (sum(p.numel() for p in model.parameters()) - model.logit_scale.numel())


def slurm_task(task, port, flags):
    """One task as srun starts it: only SLURM's variables (and the rendezvous) in the env."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(name, None)
    os.environ.update(SLURM_PROCID=str(task), SLURM_LOCALID=str(task),
                      SLURM_NTASKS=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)   # a forked child must not reuse the parent's OpenMP pool
    assert trainer_main(flags) in (None, 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_first_job(log_dir, output):
    log = (log_dir / "out.log").read_text()
    (figures,) = communication(log)
    assert figures["world_size"] == WORLD_SIZE and figures["epoch"] == 0
    assert figures["steps"] == SAMPLES // (WORLD_SIZE * BATCH_SIZE)
    assert figures["loss_collectives_per_step"] == {"all_gather": 2}
    assert figures["gradients_bytes_per_step"] == trainable_bytes()
    assert figures["total_bytes_per_step"] == (figures["loss_bytes_per_step"]
                                               + figures["gradients_bytes_per_step"])
    assert set(fingerprints(log)) == {"at start", "after epoch 0"}, output[-3000:]
    assert (log_dir / "checkpoints" / "epoch_1.pt").is_file()
    assert not (log_dir / "checkpoints" / "epoch_2.pt").exists()   # --stop-epochs 1
    return fingerprints(log)["after epoch 0"]


def test_torchrun_job_then_slurm_resume_on_two_ranks(tmp_path):
    torchrun = Path(sysconfig.get_path("scripts")) / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.run([PYTHON, str(torchrun), "--standalone", "--nproc_per_node",
                           str(WORLD_SIZE), "-m", "open_clip_train.main", "--",
                           *trainer_flags(tmp_path, "first", "--stop-epochs", "1")],
                          env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    saved_state = check_first_job(tmp_path / "logs" / "first", proc.stdout)

    checkpoint = tmp_path / "logs" / "first" / "checkpoints" / "epoch_1.pt"
    flags = trainer_flags(tmp_path, "resumed", "--resume", str(checkpoint))
    # fork: the tasks inherit the imported trainer instead of importing it again (slow)
    mp.start_processes(slurm_task, args=(free_port(), flags), nprocs=WORLD_SIZE,
                       start_method="fork")
    log_dir = tmp_path / "logs" / "resumed"
    log = (log_dir / "out.log").read_text()
    assert fingerprints(log)["at start"] == saved_state   # every rank loaded the saved state
    assert [f["epoch"] for f in communication(log)] == [1]
    assert (log_dir / "checkpoints" / "epoch_2.pt").is_file()
