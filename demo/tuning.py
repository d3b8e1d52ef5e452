"""Tuning: each method's grid, every point scored on the validation split only.

    python -m demo tune --jobs 2              # FULL settings, the demo's 3 methods x 6 points
    python -m demo tune --methods fastclip-v0,fastclip-v1,fastclip-v2 --jobs 2
                                              # ~30 min each on 2 cores (~3.3 min a pair of
                                              # runs on a quiet machine, 2026-12-02)

Each grid point trains with the shared settings (final checkpoint only) and is scored by the
validation split's retrieval mean R@1 ×100 at the final epoch (val_retrieval: emoji carved from
the training side, never the held-out ones). Every method gets 3 lr × 2 values of its own
temperature-side knob = 6 runs; a grid whose best sits on its edge moves one lr step that way
until the best is interior (the record keeps every point). The sample shuffle is seeded
(patches/0010), so a rerun of a grid point reproduces it (the pool's validation split: 1,032
pairs, one pair is 0.05 points of mean R@1).

Working files go to ``<out>/tuning/`` (``tuning.json``: the scored points of these settings, kept
when a grid grows or a tuning resumes; points the record already holds for these settings are
kept too, so a tuning carries on across fresh checkouts). Every scored point also goes into the
tuning record, ``demo/tuning_record.jsonl`` (one JSON object per line: date, method, hyper, fixed, settings,
shuffle, val_mean_r1, optional note), which the report reads; a point scored again with the same
settings replaces its line (``tune --quick`` extends no record unless ``--record`` names one).
The record also keeps the regime study (batch 16 vs 32, lr 1e-3, OpenCLIP τ₀ 0.03, γ_min 0.8):
at batch 32 the losses tie, at batch 16 the mini-batch loss loses ~3.8 points and v3 ~1.3, which
is why the demo runs at batch 16; and, marked ``"shuffle": "clock"``, an earlier batch-32 record
from before the seeded shuffle.
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from demo.evaluate import VAL_RETRIEVAL, EvalSets, checkpoints_of, evaluate_checkpoint
from demo.methods import METHODS, grid_points, method_flags
from demo.runner import expected_samples_per_epoch, run_trainer, trainer_command

RECORD_PATH = Path(__file__).resolve().parent / "tuning_record.jsonl"


# --------------------------------------------------------------------------- the record

def read_record(path=RECORD_PATH):
    """The tuning record's entries, in file order ([] when there is no record)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def settings_json(settings):
    """``settings`` as the record stores them (JSON types: tuples become lists)."""
    return json.loads(json.dumps(asdict(settings)))


def _entry_key(entry):
    return tuple(json.dumps(entry.get(k), sort_keys=True)
                 for k in ("method", "hyper", "fixed", "settings", "shuffle"))


def extend_record(path, settings, results):
    """Add the scored ``results`` of a tuning with ``settings``; a re-scored point replaces its
    line in place, new points are appended."""
    entries = read_record(path)
    positions = {_entry_key(entry): index for index, entry in enumerate(entries)}
    for result in results:
        entry = {"date": time.strftime("%Y-%m-%d"), "method": result["method"],
                 "hyper": result["hyper"], "fixed": METHODS[result["method"]].fixed,
                 "settings": settings_json(settings), "shuffle": "seeded",
                 "val_mean_r1": result["val_mean_r1"]}
        key = _entry_key(entry)
        if key in positions:
            entries[positions[key]] = entry
        else:
            positions[key] = len(entries)
            entries.append(entry)
    Path(path).write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return entries


# --------------------------------------------------------------------------- the grids

def tuning_run_name(name, hyper):
    return name + "".join(f"_{k}{v}" for k, v in hyper.items())


def tune_one(settings, manifest, tuning_dir, name, hyper, env):
    """Train one grid point, final checkpoint only (scored by the caller)."""
    run_name = tuning_run_name(name, hyper)
    flags = method_flags(name, hyper, manifest["train"]["id_space"])
    command = trainer_command(settings, manifest, flags, tuning_dir, run_name,
                              save_frequency=settings.epochs)
    num_samples = settings.train_num_samples or manifest["train"]["num_samples"]
    expected = expected_samples_per_epoch(num_samples, settings.batch_size, settings.workers)
    record = run_trainer(command, Path(tuning_dir) / run_name, run_name, settings.epochs,
                         expected, show_progress=False, env=env)
    return {"method": name, "hyper": hyper, "wall_s": record["wall_s"],
            "run_dir": str(Path(tuning_dir) / run_name)}


def previous_results(tuning_dir, settings):
    """Scored grid points of an earlier ``tune`` with the same settings: kept, not retrained
    (so a grid can grow, or an interrupted tuning resume). Other settings start afresh."""
    path = Path(tuning_dir) / "tuning.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    if record.get("settings") != settings_json(settings):
        return []
    return [r for r in record["results"] if "val_mean_r1" in r]


def recorded_results(record, settings):
    """Points the tuning record already scored at ``settings`` (seeded shuffle, each method's
    current fixed settings): a tuning that a session cut off carries on from its committed
    record in a fresh checkout, whose build/ holds no ``tuning.json``."""
    wanted = settings_json(settings)
    return [{"method": e["method"], "hyper": e["hyper"], "val_mean_r1": e["val_mean_r1"],
             "from_record": True}
            for e in (read_record(record) if record is not None else [])
            if e["settings"] == wanted and e.get("shuffle") == "seeded"
            and e["method"] in METHODS and e["fixed"] == METHODS[e["method"]].fixed]


def score(result, settings, eval_sets):
    """val_retrieval mean R@1 of a tuning run's final checkpoint, read back from its summary."""
    from eval.report import load_points

    run_dir = Path(result["run_dir"])
    checkpoint = checkpoints_of(run_dir)[settings.epochs]
    summary = evaluate_checkpoint(checkpoint, eval_sets, None,
                                  run_dir / "eval" / f"epoch_{settings.epochs}")
    return load_points(summary)[0]["tasks"][VAL_RETRIEVAL]


def run_tuning(out_dir, settings, names, jobs=1, record=None):
    """Each method's grid, scored by val_retrieval mean R@1 of the final checkpoint; the scores
    also extend the tuning record at ``record`` (None: no record)."""
    from tqdm import tqdm

    from demo.pipeline import demo_data

    out_dir = Path(out_dir)
    manifest = demo_data(out_dir, settings)
    tuning_dir = out_dir / "tuning"
    tuning_dir.mkdir(parents=True, exist_ok=True)
    eval_sets = EvalSets(manifest["root"], (VAL_RETRIEVAL,))
    # Two trainers on two cores: one thread each, or they fight over the cores.
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if jobs > 1 else {})}
    results = previous_results(tuning_dir, settings)
    done = [(r["method"], r["hyper"]) for r in results]
    for result in recorded_results(record, settings):
        if (result["method"], result["hyper"]) not in done:
            results.append(result)
            done.append((result["method"], result["hyper"]))
    tasks = [(name, hyper) for name in names for hyper in grid_points(METHODS[name].grid)
             if (name, hyper) not in done]
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(tasks), desc="tuning runs", unit="run") as bar:
        futures = [pool.submit(tune_one, settings, manifest, tuning_dir, name, hyper, env)
                   for name, hyper in tasks]
        for future in futures:
            result = future.result()
            result["val_mean_r1"] = score(result, settings, eval_sets)
            results.append(result)
            bar.update()
            (tuning_dir / "tuning.json").write_text(json.dumps(
                {"settings": asdict(settings), "results": results}, indent=1) + "\n")
            if record is not None:
                extend_record(record, settings, [result])
    print_grids(results, names)
    return tuning_dir / "tuning.json"


def print_grids(results, names):
    """Each method's scored grid points, its best marked."""
    from eval.report import markdown_table, pct

    for name in names:
        grid = grid_points(METHODS[name].grid)
        own = [r for r in results if r["method"] == name and r["hyper"] in grid]
        best = max(own, key=lambda r: r["val_mean_r1"])
        rows = [[", ".join(f"{k} {v}" for k, v in r["hyper"].items()), pct(r["val_mean_r1"]),
                 "best" if r is best else ""] for r in own]
        print(f"\n{METHODS[name].label}\n" + markdown_table(
            ["hyperparameters", "val mean R@1 ×100", ""], rows))
