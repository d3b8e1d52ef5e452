"""`make gpu-check`: is FastCLIP correct and cheap on one GPU? One run, one table.

    make gpu-bundle                                  # here: wheels + patched OpenCLIP src
    # on the GPU machine (README "GPU"), after installing the bundle into /tmp/site:
    python3 tools/gpu_check.py                       # ≤ 6 min on one H200
    python tools/gpu_check.py --device cpu --tiny    # CPU rehearsal (tests/test_gpu_check.py)

Sections (each a row group of the table, all in build/gpu_check/results.json):
  1. correctness: FastCLIPLoss v0–v3 and iSogCLR on the device with fp32 and bf16 inputs against
     float64 on the CPU on the same inputs (bf16 values upcast exactly), three steps with γ < 1:
     the relative error ‖a−b‖/‖b‖ of the loss, the feature and logit-scale gradients and the
     touched state rows;
  2. training smoke: the tiny model, OpenCLIP and FastCLIP-v3, --precision amp_bf16, synthetic
     varying data (a fixed pool of random batches): losses finite and decreasing;
  3. cost: ViT-B-32, local batch 256 (--tiny: the tiny model, 32), amp_bf16, data already on the
     device; whole training steps interleaved A B A B …: median step time, samples/s, peak
     memory of each; the loss alone (forward + backward on the model's bf16 features);
  4. state path: where the per-sample state lives and what a step's row read + write costs, the
     loss step with the state in host memory against the state on the GPU (--fcco-state-device);
     the rows also from a pinned host table with non-blocking copies (emulated: not offered);
  5. torch.compile (OpenCLIP's --torchcompile compiles the model): FastCLIP-v3 trains with the
     compiled model and its per-step losses and final weights match eager (fp32).
Benchmark figures are reported against their goals, not asserted; the run fails (exit 1) only
when a correctness, smoke or compile check fails. Uses no torch API newer than 2.11 (the GPU
machine's torch).
"""
import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # the overlay (open_clip_patch) travels with the working tree
VERSIONS = ("v0", "v1", "v2", "v3", "isogclr")
GOALS = {"step_time_ratio": 1.01, "peak_memory_ratio": 1.02, "loss_rel_err_fp32": 1e-5}
# What each comparison must reach to pass (relative errors): fp32 arithmetic on either input
# dtype for the loss and the state (bf16 inputs are upcast exactly); bf16 gradients are rounded
# to bf16 (2⁻⁸ relative per element) on their way back to the features.
# "float32+tf32": fp32 inputs with TF32 matmuls, which open_clip_train.main switches on whenever
# CUDA is there (torch.backends.cuda.matmul.allow_tf32 = True), so the trainer's loss runs so;
# TF32 keeps 10 mantissa bits (about 5e-4 relative per product).
TOLERANCE = {"float32": {"loss": 1e-5, "grad": 1e-4, "state": 1e-5},
             "bfloat16": {"loss": 1e-5, "grad": 1e-2, "state": 1e-5},
             "float32+tf32": {"loss": 1e-2, "grad": 1e-2, "state": 1e-2}}


@dataclass
class Size:
    model: str
    batch: int          # local batch of the cost section
    loss_batch: int     # batch of the correctness check
    dim: int            # feature width of the correctness check
    data_size: int      # id space (CC3M's for the real size)
    repeats: int        # interleaved repeats of the cost section
    steps: int          # steps per repeat
    smoke_batch: int    # batch of the training smoke and the compile check (tiny model)


SIZES = {"real": Size("ViT-B-32", 256, 256, 512, 3_318_333, repeats=10, steps=5, smoke_batch=64),
         "tiny": Size("fastclip-tiny-vit", 32, 32, 16, 10_000, repeats=3, steps=2, smoke_batch=16)}
SMOKE = {"model": "fastclip-tiny-vit", "steps": 50, "pool": 4}


def rel_err(a, b) -> float:
    """‖a−b‖/‖b‖ in float64 on the CPU; ±inf entries must agree and are left out."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    both_inf = torch.isinf(a) & torch.isinf(b) & (torch.sign(a) == torch.sign(b))
    if bool((torch.isinf(a) ^ torch.isinf(b)).any()) or bool(torch.isnan(a).any()):
        return math.inf
    a, b = a[~both_inf], b[~both_inf]
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ 1. correctness
def loss_pair(version, size, device):
    """The same loss twice: on the device (float32 state) and on the CPU in float64."""
    from open_clip_patch.losses import FastCLIPLoss

    common = dict(data_size=size.data_size, gamma=0.8)
    dev = FastCLIPLoss(version, state_device=device, **common)
    ref = FastCLIPLoss(version, state_dtype=torch.float64, **common)
    for loss in (dev, ref):
        loss.set_epoch(1)   # past v2's first epoch: its τ Adam moments are live
    return dev, ref


def correctness(device, size, seed=0):
    """Every version with fp32 and bf16 inputs; on CUDA also fp32 with the trainer's TF32."""
    rows = []
    for version in VERSIONS:
        for dtype in (torch.float32, torch.bfloat16):
            rows.append(compare_loss(version, dtype, device, size, seed))
        if device.type == "cuda":
            rows.append(compare_loss(version, torch.float32, device, size, seed, tf32=True))
    return rows


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 matmuls on or off for a block (a no-op on the CPU)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def as_the_trainer_sets(device):
    """The backend settings open_clip_train.main makes on CUDA, for the sections that stand in
    for training (smoke, cost, state path)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def compare_loss(version, dtype, device, size, seed, steps=3, tf32=False):
    with matmul_tf32(tf32):
        return loss_errors(version, dtype, device, size, seed, steps, tf32)


def loss_errors(version, dtype, device, size, seed, steps, tf32):
    """Relative errors of the device loss against float64 over ``steps`` steps of fresh inputs."""
    gen = torch.Generator().manual_seed(seed)
    dev, ref = loss_pair(version, size, device)
    errors = {"loss": 0.0, "grad": 0.0, "state": 0.0}
    touched = []
    for _ in range(steps):
        ids = torch.randperm(size.data_size, generator=gen)[:size.loss_batch]
        touched.append(ids)
        features = [torch.nn.functional.normalize(
            torch.randn(size.loss_batch, size.dim, generator=gen), dim=-1).to(dtype)
            for _ in range(2)]
        results = []
        for loss, where, cast in ((dev, device, dtype), (ref, torch.device("cpu"), torch.float64)):
            image, text = (f.to(device=where, dtype=cast, copy=True).requires_grad_()
                           for f in features)
            scale = torch.tensor(1 / 0.05, device=where,
                                 dtype=torch.float32 if cast != torch.float64 else cast,
                                 requires_grad=True)
            value = loss(image, text, scale, ids.to(where))
            value.backward()
            grads = [image.grad, text.grad] + ([scale.grad] if scale.grad is not None else [])
            results.append((value, grads))
        (value, grads), (ref_value, ref_grads) = results
        errors["loss"] = max(errors["loss"], rel_err(value, ref_value))
        # each gradient on its own: the logit scale's must not hide in the features' norm
        errors["grad"] = max(errors["grad"], *map(rel_err, grads, ref_grads))
    ids = torch.cat(touched).unique()
    errors["state"] = rel_err(dev.state.read(ids), ref.state.read(ids))
    inputs = str(dtype).replace("torch.", "") + ("+tf32" if tf32 else "")
    tolerance = TOLERANCE[inputs]
    passed = all(errors[k] <= tolerance[k] for k in errors)
    return {"version": version, "inputs": inputs, **errors,
            "tolerance": tolerance, "passed": passed}


# ------------------------------------------------------------------- model and data set-up
def trainer_parts(model_name, fastclip, device, batch, data_size, precision, seed=0):
    """Model, loss, optimizer and autocast as the patched trainer builds them (hooks)."""
    import open_clip
    import open_clip_patch  # noqa: F401  (registers the tiny model)
    from open_clip_patch import hooks
    from open_clip_train.params import parse_args
    from open_clip_train.precision import get_autocast

    flags = ["--model", model_name, "--batch-size", str(batch), "--lr", "1e-3",
             "--precision", precision, "--device", str(device)]
    if fastclip:
        flags += ["--fastclip", "--fastclip-version", "v3", "--data-size", str(data_size)]
    args = parse_args(flags)
    args.rank, args.world_size, args.distributed, args.distill = 0, 1, False, False
    args.device = str(device)
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, output_dict=True).to(device)
    hooks.init_temperature(args, model)
    optimizer = hooks.create_optimizer(args, model)
    loss = hooks.create_loss(args)
    return args, model, loss, optimizer, get_autocast(precision, device_type=device.type)


def batch_pool(model_name, batch, pool, device, seed=0):
    """``pool`` random (image, text) batches on the device: varying data the model can fit."""
    import open_clip

    config = open_clip.get_model_config(model_name)
    side, context = config["vision_cfg"]["image_size"], config["text_cfg"]["context_length"]
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, side, side, generator=gen).to(device),
             torch.randint(1, 49407, (batch, context), generator=gen).to(device))
            for _ in range(pool)]


def make_step(parts, pool, data_size, seed=0):
    """One training step (forward under autocast, loss, backward, optimizer step, θ clamp) over
    the pool's batches in turn; returns the step function (it returns the loss as a tensor)."""
    from open_clip_patch import hooks

    args, model, loss, optimizer, autocast = parts
    batch = pool[0][0].shape[0]
    ids = torch.randperm(data_size, generator=torch.Generator().manual_seed(seed))
    counter = [0]

    def step():
        i = counter[0]
        counter[0] += 1
        images, texts = pool[i % len(pool)]
        extra = {}
        if args.fastclip:
            # the pool's batches keep their ids, so u follows each sample across steps
            start = (i % len(pool)) * batch
            extra["sample_ids"] = ids[start:start + batch]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(images, texts)
        losses = loss(**out, **extra, output_dict=True)
        total = hooks.total_loss(losses)
        total.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return total.detach()

    return step


# --------------------------------------------------------------------- 2. training smoke
def training_smoke(device, batch):
    rows = []
    pool = batch_pool(SMOKE["model"], batch, SMOKE["pool"], device)
    for name, fastclip in (("openclip", False), ("fastclip-v3", True)):
        parts = trainer_parts(SMOKE["model"], fastclip, device, batch, 10_000, "amp_bf16")
        step = make_step(parts, pool, 10_000)
        losses = [float(step()) for _ in range(SMOKE["steps"])]
        first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
        finite = all(math.isfinite(x) for x in losses)
        rows.append({"method": name, "precision": "amp_bf16", "batch": batch,
                     "steps": len(losses),
                     "first10_mean": first, "last10_mean": last, "finite": finite,
                     "passed": finite and last < first, "losses": losses})
    return rows


# ---------------------------------------------------------------------------- 3. cost
def interleaved(candidates, repeats, steps, device, warmup=3):
    """Seconds per call of each candidate, A B A B …, ``repeats`` blocks of ``steps`` calls."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "n": len(t)}
            for name, t in times.items()}


def step_peak_bytes(fn, resident, device):
    """Peak device memory of one call: this candidate's resident bytes (model, optimizer state,
    FCCO state) plus the call's own peak above what was allocated when it began, so the other
    candidate's resident memory does not count."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return resident + torch.cuda.max_memory_allocated(device) - before


def cost(device, size):
    pool = batch_pool(size.model, size.batch, 2, device)
    steps, peaks = {}, {}
    for name, fastclip in (("openclip", False), ("fastclip-v3", True)):
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        parts = trainer_parts(size.model, fastclip, device, size.batch, size.data_size,
                              "amp_bf16")
        if fastclip:
            parts[2].gamma = 0.8   # past the first epoch: the moving average is live
        steps[name] = make_step(parts, pool, size.data_size)
        steps[name]()   # optimizer state exists from here on
        resident = (torch.cuda.memory_allocated(device) - before) if device.type == "cuda" else 0
        peaks[name] = step_peak_bytes(steps[name], resident, device)
    whole = interleaved(steps, size.repeats, size.steps, device)
    alone = interleaved(loss_alone_candidates(device, size), size.repeats, size.steps * 4, device)
    ratio = lambda table: table["fastclip-v3"]["median"] / table["openclip"]["median"]  # noqa
    peak_ratio = (peaks["fastclip-v3"] / peaks["openclip"]) if peaks["openclip"] else None
    return {"model": size.model, "batch": size.batch, "precision": "amp_bf16",
            "step_s": whole, "samples_per_s": {k: size.batch / v["median"]
                                               for k, v in whole.items()},
            "peak_bytes": peaks, "loss_alone_s": alone,
            "step_time_ratio": ratio(whole), "peak_memory_ratio": peak_ratio,
            "loss_alone_ratio": ratio(alone)}


def features_like_the_model(device, batch, dim, seed=0):
    """bf16 unit features with gradient, as the model's projections give them under autocast."""
    gen = torch.Generator().manual_seed(seed)
    make = lambda: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(batch, dim, generator=gen), dim=-1).to(device, torch.bfloat16)
    return make().requires_grad_(), make().requires_grad_()


def loss_alone_candidates(device, size, state_devices=("cpu",)):
    """forward + backward of each loss on fixed features; FastCLIP once per state device."""
    import open_clip
    from open_clip_patch.losses import FastCLIPLoss

    image, text = features_like_the_model(device, size.batch, feature_dim(size.model))
    scale = torch.tensor(1 / 0.07, device=device, requires_grad=True)
    ids = torch.randperm(size.data_size)
    clip = open_clip.ClipLoss()
    candidates = {}

    def openclip_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            clip(image, text, scale).backward()

    candidates["openclip"] = openclip_step
    for where in state_devices:
        loss = FastCLIPLoss("v3", data_size=size.data_size, gamma=0.8,
                            state_device=device if where == "device" else "cpu")
        counter = [0]

        def fastclip_step(loss=loss, counter=counter):
            start = (counter[0] * size.batch) % (size.data_size - size.batch)
            counter[0] += 1
            loss(image, text, scale, ids[start:start + size.batch]).backward()

        name = "fastclip-v3" if where == "cpu" else "fastclip-v3 (state on device)"
        candidates[name] = fastclip_step
    return candidates


def feature_dim(model_name):
    import open_clip

    return open_clip.get_model_config(model_name)["embed_dim"]


# ---------------------------------------------------------------------- 4. state path
def state_rows_cost(device, size, state_device, repeats):
    """Seconds of one step's state traffic alone: read the batch's rows to the device, write
    them back (what FastCLIPLoss does on its critical path, around the u update)."""
    from open_clip_patch.losses import FastCLIPLoss

    state = FastCLIPLoss("v3", data_size=size.data_size, state_device=state_device).state
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(size.data_size, generator=gen)[:size.batch] for _ in range(8)]

    def read_write(counter=[0]):
        ids = state.validate_ids(batches[counter[0] % len(batches)])
        counter[0] += 1
        rows = state.read(ids, device, torch.float32, validated=True)
        state.write(ids, rows + 1.0, validated=True)

    return interleaved({"rows": read_write}, repeats, 20, device)["rows"]["median"]


def pinned_rows_cost(device, size, repeats, columns=2):
    """The same traffic from a pinned host table, which PerSampleState does not offer: emulated
    here to tell whether it is worth offering. Rows are gathered into a pinned staging buffer and
    copied to the GPU without blocking; new rows come back through another, waiting only for
    that copy before they are scattered into the table."""
    pin = (lambda t: t.pin_memory()) if device.type == "cuda" else (lambda t: t)  # noqa: E731
    values = pin(torch.zeros(size.data_size, columns))
    staging_in, staging_out = (pin(torch.empty(size.batch, columns)) for _ in range(2))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(size.data_size, generator=gen)[:size.batch] for _ in range(8)]

    def read_write(counter=[0]):
        ids = batches[counter[0] % len(batches)]
        counter[0] += 1
        torch.index_select(values, 0, ids, out=staging_in)
        rows = staging_in.to(device, non_blocking=True)
        staging_out.copy_(rows + 1.0, non_blocking=True)
        sync(device)
        values.index_copy_(0, ids, staging_out)

    return interleaved({"rows": read_write}, repeats, 20, device)["rows"]["median"]


def state_path(device, size):
    from open_clip_patch.losses import FastCLIPLoss

    on_device = device.type == "cuda"
    where = ("cpu", "device") if on_device else ("cpu",)
    alone = interleaved(loss_alone_candidates(device, size, where), size.repeats,
                        size.steps * 4, device)
    rows = {w: state_rows_cost(device, size, device if w == "device" else "cpu", size.repeats)
            for w in where}
    if on_device:
        rows["cpu-pinned (emulated)"] = pinned_rows_cost(device, size, size.repeats)
    out = {"data_size": size.data_size, "batch": size.batch,
           "state_bytes": FastCLIPLoss("v3", data_size=size.data_size,
                                       state_device="meta").nbytes(),
           "default_location": "cpu (host memory)", "row_read_write_s": rows,
           "loss_step_s": {k: v["median"] for k, v in alone.items() if k != "openclip"}}
    if on_device:
        host, dev = out["loss_step_s"]["fastclip-v3"], out["loss_step_s"][
            "fastclip-v3 (state on device)"]
        out["host_state_cost_s"] = host - dev
        out["favoured"] = "--fcco-state-device cuda" if dev < host else "--fcco-state-device cpu"
        out["rows_fastest"] = min(rows, key=rows.get)
    else:
        out["favoured"] = "not measured: no GPU (cpu is the only place here)"
    return out


# ----------------------------------------------------------------------- 5. torch.compile
def compile_check(device, backend, batch, steps=8, tolerance=1e-3):
    """FastCLIP-v3 with the model compiled vs eager, same init and data, fp32 (matmuls in full
    fp32 on the GPU: TF32 is off by default). ``backend``: inductor, OpenCLIP's (torch.compile's
    default); the CPU rehearsal uses aot_eager (the same graph capture and AOT autograd, without
    inductor's C++ code generation, which takes minutes on 2 cores)."""
    parts = trainer_parts(SMOKE["model"], True, device, batch, 10_000, "fp32")
    twin = trainer_parts(SMOKE["model"], True, device, batch, 10_000, "fp32")
    twin[1].load_state_dict(copy.deepcopy(parts[1].state_dict()))
    compiled = torch.compile(twin[1], backend=backend)
    twin = (twin[0], compiled, *twin[2:])
    pool = batch_pool(SMOKE["model"], batch, SMOKE["pool"], device)
    start = time.perf_counter()
    with matmul_tf32(False):
        eager_losses = [float(x) for x in run_steps(make_step(parts, pool, 10_000), steps)]
        compiled_losses = [float(x) for x in run_steps(make_step(twin, pool, 10_000), steps)]
    seconds = time.perf_counter() - start
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(compiled_losses, eager_losses))
    weights = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])  # noqa
    weight_err = rel_err(weights(twin[1]), weights(parts[1]))
    finite = all(math.isfinite(x) for x in compiled_losses)
    return {"model": SMOKE["model"], "steps": steps, "precision": "fp32", "backend": backend,
            "loss_rel_err": loss_err, "weight_rel_err": weight_err, "tolerance": tolerance,
            "seconds_with_compilation": seconds, "finite": finite,
            "passed": finite and loss_err <= tolerance and weight_err <= tolerance}


def run_steps(step, n):
    return [step() for _ in range(n)]


# ------------------------------------------------------------------------------ report
def environment(device):
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), tf32_matmul=(
            "off in 1 (except the +tf32 rows) and 5; on in 2-4, as open_clip_train.main sets"))
    return env


def fmt_s(seconds):
    return f"{seconds * 1e3:.2f} ms"


def fmt_bytes(value):
    return "n/a (cpu)" if value is None else f"{value / 2**30:.2f} GiB"


def checked_rows(title, rows, cells):
    """A section's title, then one line per row: its cells, then ok or FAIL."""
    return [title] + [f"   {cells(r)} | {'ok' if r['passed'] else 'FAIL'}" for r in rows]


def correctness_lines(rows):
    return checked_rows(
        "1. correctness vs CPU float64: version inputs | loss grad state rel. err | ok", rows,
        lambda r: f"{r['version']:8s} {r['inputs']:12s} | {r['loss']:.1e} {r['grad']:.1e} "
                  f"{r['state']:.1e}")


def smoke_lines(rows):
    return checked_rows(
        "2. training smoke, amp_bf16: method | first-10 mean -> last-10 mean | ok", rows,
        lambda r: f"{r['method']:12s} | {r['first10_mean']:.4f} -> {r['last10_mean']:.4f}")


def cost_lines(c):
    lines = [f"3. cost, {c['model']} b={c['batch']} amp_bf16: method | step | samples/s | "
             f"peak | loss alone"]
    for name in ("openclip", "fastclip-v3"):
        lines.append(f"   {name:12s} | {fmt_s(c['step_s'][name]['median'])} | "
                     f"{c['samples_per_s'][name]:.0f} | {fmt_bytes(c['peak_bytes'][name])} | "
                     f"{fmt_s(c['loss_alone_s'][name]['median'])}")
    peak = "n/a" if c["peak_memory_ratio"] is None else f"{c['peak_memory_ratio']:.3f}"
    lines.append(f"   ratios v3/OpenCLIP: step {c['step_time_ratio']:.3f} (goal ≤ "
                 f"{GOALS['step_time_ratio']}), peak {peak} (goal ≤ {GOALS['peak_memory_ratio']})"
                 f", loss alone {c['loss_alone_ratio']:.2f}")
    return lines


def state_path_lines(s):
    rows = ", ".join(f"{k} {fmt_s(v)}" for k, v in s["row_read_write_s"].items())
    steps = ", ".join(f"{k} {fmt_s(v)}" for k, v in s["loss_step_s"].items())
    return [f"4. state path ({s['state_bytes'] / 2**20:.1f} MiB, default {s['default_location']})"
            f": rows read+write {rows}; loss step {steps}; favoured: {s['favoured']}"]


def compile_lines(k):
    return [f"5. torch.compile ({k['backend']}): loss rel err {k['loss_rel_err']:.1e}, weights "
            f"{k['weight_rel_err']:.1e} (tolerance {k['tolerance']:.0e}), "
            f"{k['seconds_with_compilation']:.0f} s | {'ok' if k['passed'] else 'FAIL'}"]


SECTION_LINES = {"correctness": correctness_lines, "smoke": smoke_lines, "cost": cost_lines,
                 "state_path": state_path_lines, "compile": compile_lines}


def table(results):
    env = results["environment"]
    lines = [f"gpu_check on {env.get('gpu', env['device'])} (torch {env['torch']}, "
             f"size {results['size']})", ""]
    for number, key in enumerate(SECTION_LINES, 1):
        if key not in results:
            lines.append(f"{number}. {key}: not run")
        elif "error" in results[key]:
            lines.append(f"{number}. {key}: ERROR {results[key]['error']}")
        else:
            lines += SECTION_LINES[key](results[key])
    lines.append(f"all checks passed: {results['passed']} ({results['seconds']['total']:.0f} s)")
    return "\n".join(lines)


def checks_passed(results):
    """Correctness, smoke and compile rows must pass; cost and state path must merely run."""
    for key in results["sections"]:
        section = results.get(key)
        if isinstance(section, dict) and "error" in section:
            return False
        rows = section if isinstance(section, list) else [section]
        if key in ("correctness", "smoke", "compile") and not all(r["passed"] for r in rows):
            return False
    return True


def run_sections(device, size, backend, sections, results, out):
    """Each section in turn; an exception is recorded and the next section still runs, and
    results.json is rewritten after each, so a run cut short keeps what it measured."""
    runners = {"correctness": lambda: correctness(device, size),
               "smoke": lambda: training_smoke(device, size.smoke_batch),
               "cost": lambda: cost(device, size),
               "state_path": lambda: state_path(device, size),
               "compile": lambda: compile_check(device, backend, size.smoke_batch)}
    seconds = results["seconds"] = {}
    for key in sections:
        start = time.perf_counter()
        if key != "correctness":
            as_the_trainer_sets(device)
        try:
            results[key] = runners[key]()
        except Exception as error:   # report it, keep the other sections' figures
            traceback.print_exc()
            results[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
        seconds[key] = time.perf_counter() - start
        print(f"gpu_check: {key} done in {seconds[key]:.1f} s", file=sys.stderr, flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    seconds["total"] = sum(seconds.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (rehearsal)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU rehearsal)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check")
    parser.add_argument("--sections", default=",".join(SECTION_LINES),
                        help="comma-separated subset of " + ",".join(SECTION_LINES) +
                             " (to rerun only what failed)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of section 5 (default: inductor on cuda, "
                             "aot_eager on cpu)")
    args = parser.parse_args(argv)
    sections = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(sections) - set(SECTION_LINES))
    if unknown:
        parser.exit(2, f"gpu_check: unknown --sections {','.join(unknown)}; choose from "
                       f"{','.join(SECTION_LINES)}\n")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "gpu_check: --device cuda but torch sees no GPU (use --device cpu --tiny)\n")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    size_name = "tiny" if args.tiny else "real"
    size = SIZES[size_name]
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    results = {"environment": environment(device), "size": size_name, "sizes": asdict(size),
               "goals": GOALS, "sections": sections}
    args.out.mkdir(parents=True, exist_ok=True)
    run_sections(device, size, backend, sections, results, args.out)
    results["passed"] = checks_passed(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")
    sys.exit(main())
