"""`make bench`: FastCLIP's cost against the OpenCLIP baseline, measured side by side.

Figures (each comparison interleaved A B A B …, medians with min–max; ratios, never absolute
goals):
  1. step time, one process: a whole training step (forward, loss, backward, optimizer step) of
     FastCLIP-v3 vs OpenCLIP on the same tiny model and batch; and the loss alone (forward +
     backward on fixed features) for OpenCLIP, v3 and v2 (per-sample τ, the heaviest).
  2. bytes communicated per step with 2 gloo ranks (tools/bench_comm.py).
  3. FCCO state memory per rank for the published data sizes, from the state objects' reported
     bytes (meta tensors: nothing allocated), plus a measured allocation for the smallest.
  4. small-batch quality from the demo's results (build/demo/results.json), or a quick demo run.
  5, 6. sharded FCCO state (tools/bench_shards.py): measured state bytes per rank, K = 1, 2, 4,
     sharded vs replicated; bytes per step added by sharding and step time sharded / replicated
     on 2 and 4 gloo ranks.

Prints a table and one JSON line per figure; everything also goes to build/bench/results.json.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bench_shards

REPO = Path(__file__).resolve().parents[1]
DATA_SIZES = {"CC3M": 3_318_333, "CC12M": 12_423_374, "LAION-400M": 414_080_000}


def summarize(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def interleaved(candidates, repeats, steps):
    """Time each candidate's ``steps`` calls, A B A B …; seconds per call for every repeat."""
    times = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up: allocator, autograd graphs, first-call costs
        for _ in range(2):
            fn()
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: summarize(samples) for name, samples in times.items()}


def tiny_setup(fastclip, batch_size, data_size, seed=0):
    """Model, loss, optimizer and a batch as the patched trainer builds them."""
    import open_clip
    import open_clip_patch  # noqa: F401
    from open_clip_patch import hooks
    from open_clip_train.params import parse_args

    flags = ["--model", "fastclip-tiny-vit", "--batch-size", str(batch_size), "--lr", "1e-3"]
    if fastclip:
        flags += ["--fastclip", "--fastclip-version", "v3", "--data-size", str(data_size)]
    args = parse_args(flags)
    args.rank, args.world_size, args.distributed, args.distill = 0, 1, False, False
    torch.manual_seed(seed)
    model = open_clip.create_model("fastclip-tiny-vit", output_dict=True)
    hooks.init_temperature(args, model)
    optimizer = hooks.create_optimizer(args, model)
    loss = hooks.create_loss(args)
    if fastclip:
        loss.gamma = 0.8  # past the first epoch: the moving average is live
    images = torch.randn(batch_size, 3, 32, 32)
    texts = torch.randint(1, 49407, (batch_size, 32))
    return args, model, loss, optimizer, images, texts


def whole_step_candidates(batch_size, data_size):
    from open_clip_patch import hooks

    candidates = {}
    for name, fastclip in (("openclip", False), ("fastclip-v3", True)):
        args, model, loss, optimizer, images, texts = tiny_setup(fastclip, batch_size, data_size)
        id_stream = torch.randperm(data_size)

        def step(args=args, model=model, loss=loss, optimizer=optimizer, images=images,
                 texts=texts, ids=id_stream, counter=[0]):
            extra = {}
            if args.fastclip:
                start = (counter[0] * batch_size) % (data_size - batch_size)
                extra["sample_ids"] = ids[start:start + batch_size]
                counter[0] += 1
            optimizer.zero_grad()
            losses = loss(**model(images, texts), **extra, output_dict=True)
            hooks.total_loss(losses).backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))

        candidates[name] = step
    return candidates


def loss_alone_candidates(batch_size, data_size, dim=64):
    import open_clip
    from open_clip_patch.losses import FastCLIPLoss

    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch_size, dim, generator=gen), dim=-1)
    image.requires_grad_(True)
    text.requires_grad_(True)
    logit_scale = torch.tensor(1 / 0.07, requires_grad=True)
    ids = torch.arange(batch_size)
    losses = {"openclip": open_clip.ClipLoss()}
    for version in ("v3", "v2"):
        losses[f"fastclip-{version}"] = FastCLIPLoss(version, data_size=data_size, gamma=0.8)

    def make(name, fn):
        def run():
            out = fn(image, text, logit_scale, ids) if name != "openclip" else fn(image, text, logit_scale)
            out.backward()
        return run

    return {name: make(name, fn) for name, fn in losses.items()}


def figure_step_time(repeats, steps, batch_size):
    data_size = 100_000
    whole = interleaved(whole_step_candidates(batch_size, data_size), repeats, steps)
    alone = interleaved(loss_alone_candidates(batch_size, data_size), repeats, steps * 5)
    base_step, base_loss = whole["openclip"]["median"], alone["openclip"]["median"]
    return {
        "figure": "step_time", "device": "cpu", "threads": torch.get_num_threads(),
        "batch_size": batch_size, "model": "fastclip-tiny-vit",
        "whole_step_s": whole, "loss_alone_s": alone,
        "whole_step_ratio_v3": whole["fastclip-v3"]["median"] / base_step,
        "loss_alone_ratio_v3": alone["fastclip-v3"]["median"] / base_loss,
        "loss_alone_ratio_v2": alone["fastclip-v2"]["median"] / base_loss,
        "goal_whole_step_ratio": 1.03,
    }


def measured_rss_growth(build):
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    obj = build()
    grown = process.memory_info().rss - before
    del obj
    return grown


def figure_state_memory():
    """Figure 3, measured in a fresh interpreter: in a long-lived process (make bench after
    other figures, or pytest) freed heap pages are reused and a new table can grow the RSS by
    nothing (seen in CI)."""
    out = subprocess.run([sys.executable, __file__, "--state-memory-only"], check=True, text=True,
                         stdout=subprocess.PIPE, cwd=REPO / "tools")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_state_memory():
    from open_clip_patch.losses import FastCLIPLoss

    bench_shards._fixed_mmap_threshold()

    rows = {}
    for dataset, size in DATA_SIZES.items():
        for kind, version in (("global-tau", "v3"), ("individual-tau", "v2")):
            loss = FastCLIPLoss(version, data_size=size, state_device="meta")
            rows[f"{dataset}/{kind}"] = {"data_size": size, "reported_bytes": loss.nbytes()}
    smallest = DATA_SIZES["CC3M"]
    for kind, version in (("global-tau", "v3"), ("individual-tau", "v2")):
        rows[f"CC3M/{kind}"]["measured_rss_growth_bytes"] = measured_rss_growth(
            lambda: FastCLIPLoss(version, data_size=smallest))
    return {"figure": "state_memory", "per_rank": rows}


def figure_communication(quick):
    script = REPO / "tools" / "bench_comm.py"
    proc = subprocess.run([sys.executable, str(script), "--json-only"] + (["--quick"] if quick else []),
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_comm failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["figure"] = "communication"
    return result


def figure_demo_quality(quick, results=REPO / "build" / "demo" / "results.json"):
    """Held-out retrieval of FastCLIP-v3 vs OpenCLIP: the comparison of the demo's results.json
    (demo/compare.py's figures, written by demo/report.py)."""
    source = f"recorded demo ({Path(results).parent})"
    if quick or not results.exists():
        out = REPO / "build" / "bench" / "demo_quick"
        subprocess.run(["bash", str(REPO / "run_scripts" / "demo.sh"), "--quick", "--no-progress",
                        "--methods", "openclip,fastclip-v3", "--out", str(out)],
                       check=True, cwd=REPO, timeout=1800, stdout=subprocess.DEVNULL)
        results, source = out / "results.json", "quick demo (digits, 2 epochs; not the recorded demo)"
    figures = json.loads(Path(results).read_text())["comparison"]
    return {"figure": "demo_quality", "source": source, "metric": figures["metric"],
            "r1_ratio_at_final_samples": figures["ratio_final"], "goal_r1_ratio": 1.2,
            "fraction_of_samples_to_reach_baseline_final": figures["fraction_to_reach"],
            "goal_fraction": 0.5, "baseline_final": figures["baseline_final"]}


def print_table(results):
    step = results.get("step_time")
    if step:
        print(f"\n1. Step time, one process, {step['model']}, batch {step['batch_size']}, "
              f"{step['threads']} thread(s) (median s, min–max)")
        for section in ("whole_step_s", "loss_alone_s"):
            for name, s in step[section].items():
                print(f"   {section[:-2]:<11} {name:<12} {s['median']*1e3:9.3f} ms "
                      f"({s['min']*1e3:.3f}–{s['max']*1e3:.3f})")
        print(f"   ratio whole step v3/OpenCLIP: {step['whole_step_ratio_v3']:.3f} (goal ≤ 1.03); "
              f"loss alone v3: {step['loss_alone_ratio_v3']:.2f}, v2: {step['loss_alone_ratio_v2']:.2f}")
    comm = results.get("communication")
    if comm:
        print("\n2. Bytes sent per step and rank, 2 gloo ranks")
        for key, value in comm.items():
            if key != "figure":
                print(f"   {key}: {value}")
    memory = results.get("state_memory")
    if memory:
        print("\n3. FCCO state per rank")
        for name, row in memory["per_rank"].items():
            measured = row.get("measured_rss_growth_bytes")
            extra = f", measured RSS growth {measured / 2**20:,.1f} MiB" if measured is not None else ""
            print(f"   {name:<26} data-size {row['data_size']:>11,}: "
                  f"{row['reported_bytes'] / 2**30:8.3f} GiB{extra}")
    shards = results.get("state_memory_sharded")
    if shards:
        print(f"\n5. FCCO state per rank, measured RSS growth (data-size {shards['data_size']:,}, "
              f"{shards['version']})")
        for name, row in shards["per_rank"].items():
            extra = (f", {row['fraction_of_replicated']:.3f} of replicated (goal ≤ "
                     f"{row['goal_fraction']:.3f})" if "goal_fraction" in row else "")
            print(f"   {name:<14} {row['measured_rss_growth_bytes'] / 2**20:8.1f} MiB{extra}")
    cost = results.get("sharding_cost")
    if cost:
        print(f"\n6. Sharding's cost, gloo ranks, {cost['repeats']} interleaved repeats")
        for world in (2, 4):
            row = cost[f"K={world}"]
            times = row["step_time_s"]
            print(f"   K={world}: +{row['bytes_added_by_sharding']:.0f} B/step; step time sharded "
                  f"{times['sharded']['median'] * 1e3:.1f} ms / replicated "
                  f"{times['replicated']['median'] * 1e3:.1f} ms = {row['step_time_ratio']:.3f} "
                  f"(goal ≤ {cost['goal_step_time_ratio']})")
    demo = results.get("demo_quality")
    if demo:
        print(f"\n4. Small-batch quality ({demo['source']})")
        for key, value in demo.items():
            if key not in ("figure", "source"):
                print(f"   {key}: {value}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minimal repeats (for tests)")
    parser.add_argument("--state-memory-only", action="store_true",
                        help="figure 3 alone, in this (fresh) process (figure_state_memory runs it)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--figures", default="step_time,communication,state_memory,demo_quality,"
                                              "state_memory_sharded,sharding_cost")
    parser.add_argument("--out", default=str(REPO / "build" / "bench" / "results.json"))
    args = parser.parse_args(argv)
    if args.state_memory_only:
        print(json.dumps(_measure_state_memory()))
        return
    repeats = args.repeats or (2 if args.quick else 7)
    steps = 2 if args.quick else 10
    producers = {
        "step_time": lambda: figure_step_time(repeats, steps, args.batch_size),
        "communication": lambda: figure_communication(args.quick),
        "state_memory": figure_state_memory,
        "demo_quality": lambda: figure_demo_quality(args.quick),
        "state_memory_sharded": bench_shards.figure_state_memory_sharded,
        "sharding_cost": lambda: bench_shards.figure_sharding_cost(*((1, 5) if args.quick
                                                                     else (repeats // 2, 12))),
    }
    results = {}
    for name in args.figures.split(","):
        results[name] = producers[name]()
        print(json.dumps(results[name]), flush=True)
    print_table(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.out}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    main()
