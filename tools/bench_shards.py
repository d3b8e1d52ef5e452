"""`make bench` figures of the sharded FCCO state (--fcco-state sharded vs replicated).

  5. FCCO state bytes per rank, measured as RSS growth while rank 0's state is built (CC3M,
     v2's 10 columns: the largest table), K = 1, 2, 4, sharded vs replicated; goal ≤ 1/K + 5%.
  6. bytes each rank sends per step with sharding minus without (rank 0's traffic meter), and
     the step time sharded / replicated, 2 and 4 gloo ranks (torchrun, tiny model, synthetic
     data); runs interleaved (sharded, replicated, sharded, …), medians of the per-run medians
     of OpenCLIP's logged per-step batch time (the first steps, warm-up, left out); goal ≤ 1.02.

    .venv/bin/python tools/bench_shards.py [--repeats 3] [--steps 12] [--quick]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import bench_comm

BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")
WARM_UP_STEPS = 3


def _fixed_mmap_threshold(nbytes=128 * 1024):
    """glibc raises its mmap threshold (up to 32 MiB) after a large block is freed, so a later
    table of that size came from the heap already resident and grew the RSS by nothing; a fixed
    threshold keeps every table in its own mapping (linux/glibc only; else left as is)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, nbytes)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def figure_state_memory_sharded(data_size=3_318_333, version="v2"):
    """Figure 5, measured in a fresh interpreter: in a long-lived process (make bench after
    other figures, or pytest) freed heap pages are reused and a new table can grow the RSS by
    nothing."""
    out = subprocess.run([sys.executable, __file__, "--memory-only", "--data-size",
                          str(data_size), "--version", version], check=True, text=True,
                         stdout=subprocess.PIPE, cwd=Path(__file__).parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_state_memory_sharded(data_size, version):
    from bench import measured_rss_growth
    from open_clip_patch.losses import FastCLIPLoss

    _fixed_mmap_threshold()
    rows = {}
    measured_rss_growth(lambda: FastCLIPLoss(version, data_size=1000))   # first-call costs
    for world in (1, 2, 4):
        for layout in ("replicated", "sharded"):
            comm = SimpleNamespace(rank=0, world_size=world)
            loss = FastCLIPLoss(version, data_size=data_size, state_device="meta", comm=comm,
                                state_layout=layout)
            rows[f"K={world}/{layout}"] = {"reported_bytes": loss.nbytes(),
                                           "measured_rss_growth_bytes": measured_rss_growth(
                lambda: FastCLIPLoss(version, data_size=data_size, comm=comm,
                                     state_layout=layout))}
    for world in (1, 2, 4):
        row = rows[f"K={world}/sharded"]
        row["fraction_of_replicated"] = (row["measured_rss_growth_bytes"]
                                         / rows[f"K={world}/replicated"]["measured_rss_growth_bytes"])
        row["goal_fraction"] = 1 / world + 0.05
    return {"figure": "state_memory_sharded", "data_size": data_size, "version": version,
            "per_rank": rows}


def _run(world, layout, steps, logs, name):
    """Rank 0's bytes per step and median step time of one torchrun job."""
    args = SimpleNamespace(batch_size=32, steps=steps, precision="fp32")
    bench_comm.METHODS[name] = ["--fastclip", "--fastclip-version", "v3",
                                "--fcco-state", layout, "--log-every-n-steps", "1"]
    bench_comm.WORLD_SIZE = world
    figures = bench_comm.measure(name, args, logs)
    # OpenCLIP resets its batch-time meter after each log line: one step per line here.
    per_step = [float(t) for t in BATCH_TIME.findall((Path(logs) / name / "out.log").read_text())]
    return figures["loss_bytes_per_step"], statistics.median(per_step[WARM_UP_STEPS:])


def figure_sharding_cost(repeats, steps):
    result = {"figure": "sharding_cost", "model": bench_comm.MODEL, "batch_size_per_rank": 32,
              "steps": steps, "repeats": repeats, "goal_step_time_ratio": 1.02}
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as logs:
        for world in (2, 4):
            bytes_, times = {}, {"sharded": [], "replicated": []}
            for repeat in range(repeats):
                for layout in ("sharded", "replicated"):
                    name = f"k{world}_{layout}_{repeat}"
                    bytes_[layout], step = _run(world, layout, steps, logs, name)
                    times[layout].append(step)
            medians = {k: statistics.median(v) for k, v in times.items()}
            result[f"K={world}"] = {
                "loss_bytes_per_step": bytes_,
                "bytes_added_by_sharding": bytes_["sharded"] - bytes_["replicated"],
                "step_time_s": {k: {"median": medians[k], "min": min(v), "max": max(v)}
                                for k, v in times.items()},
                "step_time_ratio": medians["sharded"] / medians["replicated"]}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-only", action="store_true",
                        help="figure 5 alone, in this (fresh) process")
    parser.add_argument("--data-size", type=int, default=3_318_333)
    parser.add_argument("--version", default="v2")
    args = parser.parse_args(argv)
    if args.memory_only:
        print(json.dumps(_measure_state_memory_sharded(args.data_size, args.version)))
        return
    repeats, steps = (1, 5) if args.quick else (args.repeats, args.steps)
    for figure in (figure_state_memory_sharded(), figure_sharding_cost(repeats, steps)):
        print(json.dumps(figure), flush=True)


if __name__ == "__main__":
    main()
