"""`make bench-comm`: bytes each rank sends per step, FastCLIP-v3 vs OpenCLIP, 2 gloo ranks.

Runs the patched trainer twice under ``torchrun --standalone --nproc_per_node 2`` on the tiny
model and synthetic data, with the same flags except the loss: ``--fastclip --fastclip-version
v3`` against OpenCLIP's ``--local-loss --gather-with-grad``, both with ``--count-communication``
(FastCLIP in its default layout at 2 ranks, ``--fcco-state sharded``).
Each run logs, per epoch, the bytes its collectives sent per step (counted at the collectives, see
open_clip_patch/traffic.py); this tool reads rank 0's line from each log and prints a table, then
one JSON line.

    .venv/bin/python tools/bench_comm.py [--batch-size 32] [--steps 4] [--quick] [--json-only]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
MODEL = "fastclip-tiny-vit"
COMM_LINE = re.compile(r"Communication per step and rank: .* \| (\{.*\})")
METHODS = {
    "fastclip_v3": ["--fastclip", "--fastclip-version", "v3"],
    "openclip": ["--local-loss", "--gather-with-grad"],
}


def trainer_flags(logs, name, args):
    samples = WORLD_SIZE * args.batch_size * args.steps
    return ["--model", MODEL, "--dataset-type", "synthetic", "--train-num-samples", str(samples),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--device", "cpu",
            "--workers", "0", "--precision", args.precision, "--seed", "0", "--lr", "1e-4",
            "--save-frequency", "0", "--zeroshot-frequency", "0", "--logs", str(logs),
            "--name", name, "--count-communication", *METHODS[name]]


def measure(name, args, logs):
    """Rank 0's per-step figures of one torchrun job."""
    torchrun = Path(sysconfig.get_path("scripts")) / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(torchrun), "--standalone", "--nproc_per_node",
                           str(WORLD_SIZE), "-m", "open_clip_train.main", "--",
                           *trainer_flags(logs, name, args)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    log = Path(logs) / name / "out.log"
    if proc.returncode != 0 or not log.is_file():
        raise RuntimeError(f"{name} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    figures = [json.loads(m) for m in COMM_LINE.findall(log.read_text())]
    if len(figures) != 1:
        raise RuntimeError(f"{name}: expected one communication line in {log}, got {figures}")
    return {key: figures[0][key] for key in ("loss_bytes_per_step", "gradients_bytes_per_step",
                                             "total_bytes_per_step", "loss_collectives_per_step",
                                             "gradients_collectives_per_step", "steps")}


def compare(args):
    with tempfile.TemporaryDirectory(prefix="bench_comm_") as logs:
        result = {name: measure(name, args, logs) for name in METHODS}
    fast, base = result["fastclip_v3"], result["openclip"]
    result.update(
        world_size=WORLD_SIZE, model=MODEL, batch_size_per_rank=args.batch_size,
        precision=args.precision,
        loss_ratio_fastclip_over_openclip=fast["loss_bytes_per_step"] / base["loss_bytes_per_step"],
        total_ratio_fastclip_over_openclip=(fast["total_bytes_per_step"]
                                            / base["total_bytes_per_step"]))
    return result


def print_table(result):
    print(f"Bytes sent per step by each rank: {result['world_size']} gloo ranks, {result['model']}, "
          f"batch {result['batch_size_per_rank']} per rank, precision {result['precision']}")
    print(f"{'method':<14}{'loss collectives':>18}{'gradient reduction':>20}{'total':>14}")
    for name in METHODS:
        row = result[name]
        print(f"{name:<14}{row['loss_bytes_per_step']:>18,}{row['gradients_bytes_per_step']:>20,}"
              f"{row['total_bytes_per_step']:>14,}")
        print(f"{'':<14}loss: {row['loss_collectives_per_step']}, "
              f"gradients: {row['gradients_collectives_per_step']}")
    print(f"ratio FastCLIP-v3 / OpenCLIP: loss collectives "
          f"{result['loss_ratio_fastclip_over_openclip']:.3f}, "
          f"total {result['total_ratio_fastclip_over_openclip']:.5f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="amp", help="the trainer's --precision")
    parser.add_argument("--quick", action="store_true", help="2 steps of batch 8 (for tests)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps = 8, 2
    result = compare(args)
    if not args.json_only:
        print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
