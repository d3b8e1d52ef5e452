"""The multi-seed study and the batch-size curve (``make demo-study``): every method over seeds at
``make demo``'s settings, summarised as mean ± 95% CI over seeds (demo/stats.py).

    python -m demo study --jobs 2                     # 5 seeds x 6 methods, the demo's settings
    python -m demo study --seeds 0,1 --methods openclip,fastclip-v3 --jobs 2
    python -m demo batch-curve --jobs 2               # batch 8-128, 3 seeds, OpenCLIP vs v3
    python -m demo study --quick --seeds 0,1          # digits, seconds: what the tests run

Each run lives in ``<out>/runs/b<batch>/seed<seed>/<method>/`` (an OpenCLIP run dir plus
``eval/epoch_N``), the same layout as ``make demo``'s, in the same directory (build/demo): a
run whose last checkpoint is evaluated and whose recorded command is the one it would run now is
kept, so the demo's runs are the study's seed 0, and a study can be stopped and resumed, or
extended by seeds and methods. ``--jobs 2`` trains two runs at once with one
thread each. The thread count is part of a run's identity: the same seed gives the same numbers
only at the same OMP_NUM_THREADS (float sums split differently), so every study run uses one
thread per trainer, ``--jobs`` 1 or 2, and ``study.json`` records it. ``<out>/study.md``,
``study.json`` and ``study_curves.png`` are rewritten from the evaluation files after every run.
"""
import json
import os
import queue
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from demo import stats
from demo.evaluate import (EvalSets, columns_for, evaluate_run, heldout_sets,
                           read_run_points)
from demo.methods import METHODS, method_flags
from demo.runner import (expected_samples_per_epoch, read_train_record, run_trainer,
                         trainer_command)
from demo.study_record import RECORD_DIR, copy_run, recorded_run

STUDY_METHODS = ("openclip", "siglip", "fastclip-v0", "fastclip-v1", "fastclip-v2",
                 "fastclip-v3")
STUDY_SEEDS = (0, 1, 2, 3, 4)
CURVE_BATCHES = (8, 16, 32, 64, 128)
CURVE_SEEDS = (0, 1, 2)
CURVE_METHODS = ("openclip", "fastclip-v3")
STUDY_THREADS = "1"   # one thread per trainer, whatever --jobs: runs repeat bit for bit
# Evaluations run one at a time: they share the decoded sets and redirect stderr.
EVAL_LOCK = threading.Lock()


def run_dir_of(out_dir, settings, seed, name):
    return Path(out_dir) / "runs" / f"b{settings.batch_size}" / f"seed{seed}" / name


def is_complete(run_dir, settings):
    last = Path(run_dir) / "eval" / f"epoch_{settings.epochs}" / "demo_summary.json"
    return bool(read_train_record(run_dir)) and last.is_file()


def comparable(command):
    """A trainer command without what may move with the checkout: the interpreter's, the data's
    and the logs' paths."""
    words = list(command)[1:]
    return [("<path>" if i and words[i - 1] in ("--train-data", "--logs") else word)
            for i, word in enumerate(words)]


def reusable(run_dir, settings, command):
    """A finished run is kept only if it ran this very command at the study's thread count:
    a changed hyperparameter or setting retrains it instead of reusing stale numbers."""
    record = read_train_record(run_dir)
    return (is_complete(run_dir, settings) and record.get("omp_num_threads") == STUDY_THREADS
            and comparable(record.get("command", ())) == comparable(command))


def train_and_evaluate(settings, manifest, out_dir, seed, name, eval_sets, bar_position=None,
                       record_dir=None):
    """One (method, seed) run: train with a checkpoint per epoch, evaluate every checkpoint.
    ``bar_position`` set: the trainer's progress bar on that terminal line. ``record_dir`` set:
    a run recorded there with this very command is restored instead (demo/study_record.py)."""
    seeded = replace(settings, seed=seed)
    run_dir = run_dir_of(out_dir, seeded, seed, name)
    num_samples = seeded.train_num_samples or manifest["train"]["num_samples"]
    expected = expected_samples_per_epoch(num_samples, seeded.batch_size, seeded.workers)
    flags = method_flags(name, METHODS[name].tuned, manifest["train"]["id_space"])
    command = trainer_command(seeded, manifest, flags, run_dir.parent, name)
    if reusable(run_dir, seeded, command):
        return run_dir
    if record_dir is not None:
        recorded = recorded_run(record_dir, run_dir, out_dir)
        if reusable(recorded, seeded, command):
            shutil.rmtree(run_dir, ignore_errors=True)
            copy_run(recorded, run_dir)
            return run_dir
    env = {**os.environ, "OMP_NUM_THREADS": STUDY_THREADS}
    record = run_trainer(command, run_dir, f"{METHODS[name].label} seed {seed}", seeded.epochs,
                         expected, show_progress=bar_position is not None, env=env,
                         bar_position=bar_position)
    with EVAL_LOCK:
        evaluate_run(run_dir, eval_sets, record["samples_per_epoch"], name, show_progress=False)
    return run_dir


def train_runs(settings, manifest, out_dir, tasks, eval_sets, jobs=1, trainer_bars=False,
               after_each=None, record_dir=None):
    """Every (seed, method) of ``tasks``, ``jobs`` at a time (one thread each); the trainers'
    bars, if shown, take one terminal line per job slot. ``after_each()`` runs as each ends."""
    slots = queue.SimpleQueue()
    for slot in range(jobs):
        slots.put(slot)

    def one(seed, name):
        slot = slots.get()
        try:
            return train_and_evaluate(settings, manifest, out_dir, seed, name, eval_sets,
                                      bar_position=slot if trainer_bars else None,
                                      record_dir=record_dir)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, seed, name) for seed, name in tasks]:
            future.result()
            if after_each:
                after_each()


def collect(out_dir, settings, names, seeds):
    """{method: {seed: points}} of the complete runs."""
    found = {}
    for name in names:
        for seed in seeds:
            run_dir = run_dir_of(out_dir, replace(settings, seed=seed), seed, name)
            # the evaluation files are the record: a restored run has no checkpoints
            if is_complete(run_dir, replace(settings, seed=seed)):
                found.setdefault(name, {})[seed] = read_run_points(run_dir)
    return found


def summarise(runs, columns, baseline="openclip"):
    """Final-checkpoint mean ± CI per method and column; paired ratio and samples-to-match of
    every method against the baseline; the curves' bands."""
    finals, pairs, bands = {}, {}, {}
    for name, by_seed in runs.items():
        finals[name] = {key: stats.mean_ci([pts[-1][key] for pts in by_seed.values()])
                        for key, *_ in columns
                        if all(pts[-1].get(key) is not None for pts in by_seed.values())}
        samples = sorted({p["samples_seen"] for pts in by_seed.values() for p in pts})
        bands[name] = {key: [(s, stats.mean_ci([stats.value_at(pts, s, key)
                                                for pts in by_seed.values()]))
                             for s in samples
                             if all(stats.value_at(pts, s, key) is not None
                                    for pts in by_seed.values())]
                       for key, *_ in columns}
        if name != baseline and baseline in runs:
            pairs[name] = {key: stats.paired_summary(by_seed, runs[baseline], key)
                           for key in ("mean_r1", "style_mean_r1")
                           if key in finals[name]}
    return finals, pairs, bands


def run_study(out_dir, settings, names, seeds, jobs=1, show_progress=True,
              record_dir=RECORD_DIR):
    """Train and evaluate every (method, seed) not yet complete (restoring what the record holds),
    then write the summary."""
    from tqdm import tqdm

    from demo.pipeline import demo_data
    from demo.study_report import write_study

    out_dir = Path(out_dir)
    manifest = demo_data(out_dir, settings, show_progress)
    eval_sets = EvalSets(manifest["root"], heldout_sets(manifest["eval_sets"]))
    tasks = [(seed, name) for seed in seeds for name in names]
    with tqdm(total=len(tasks), desc=f"study b{settings.batch_size}", unit="run",
              disable=not show_progress) as bar:
        def after_each():
            bar.update()
            write_study(out_dir, settings, manifest, names, seeds, jobs)

        train_runs(settings, manifest, out_dir, tasks, eval_sets, jobs, after_each=after_each,
                   record_dir=record_dir)
    return write_study(out_dir, settings, manifest, names, seeds, jobs)


def run_batch_curve(out_dir, settings, names, seeds, batches=CURVE_BATCHES, jobs=1,
                    show_progress=True, record_dir=RECORD_DIR):
    """The study at each global batch (same samples seen: the epochs stay), fewer seeds."""
    from demo.study_report import write_batch_curve

    for batch in batches:
        run_study(out_dir, replace(settings, batch_size=batch), names, seeds, jobs, show_progress,
                  record_dir)
    return write_batch_curve(out_dir, settings, names, seeds, batches)


def study_record(settings, names, seeds, jobs, runs, columns):
    finals, pairs, _ = summarise(runs, columns)
    return {"settings": asdict(settings), "methods": list(names), "seeds": list(seeds),
            "jobs": jobs, "threads_per_trainer": int(STUDY_THREADS),
            "complete": {name: sorted(by_seed) for name, by_seed in runs.items()},
            "finals": {name: {key: asdict(i) for key, i in by_key.items()}
                       for name, by_key in finals.items()},
            "paired": {name: {key: {**{k: v for k, v in summary.items()
                                       if k not in ("ratio", "fraction")},
                                    "ratio": summary["ratio"] and asdict(summary["ratio"]),
                                    "fraction": summary["fraction"] and asdict(
                                        summary["fraction"])}
                              for key, summary in by_key.items()}
                       for name, by_key in pairs.items()}}


def write_json(path, record):
    Path(path).write_text(json.dumps(record, indent=1, default=float) + "\n")


def columns_of(manifest):
    return columns_for(manifest["eval_sets"])
