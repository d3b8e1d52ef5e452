"""`make demo`: OpenCLIP vs FastCLIP-v3 (vs SigLIP) side by side on image-text pairs, on a CPU.

Every method trains the tiny model at 64 px (``fastclip-tiny-vit-64``) on the demo data (the
ten-set emoji and icon pool of ``demo/data/pool.py``; scikit-learn digits when npm cannot fetch
it) with the same global batch, seed, epochs, optimizer and lr schedule; only the loss and the
hyperparameters per method (demo/methods.py) differ. Every epoch's checkpoint is evaluated
through ``eval/`` (clip_benchmark) on the held-out sets: concept held-out and style held-out
(Fluent Emoji) retrieval R@1/R@5 in both directions, per family (emoji, icons), and zero-shot
over the held-out concepts. The driver prints a side-by-side table and writes
``<out>/report.md`` and ``<out>/curves.png`` (metrics against samples seen). Run from the
repository root (``bash run_scripts/demo.sh`` does that from anywhere):

    python -m demo                            # full demo (README: its wall time on 2 cores)
    python -m demo --quick                    # digits, 2 short epochs: for tests (DEMO_QUICK=1)
    python -m demo --methods openclip,fastclip-v3               # a subset
    python -m demo --skip-training            # re-evaluate existing runs, rewrite the report
    python -m demo --seed 1 --out build/demo-seed1              # a repeat with another seed
    python -m demo tune --jobs 2              # the tuning grids, scored on val_retrieval only
    python -m demo --batch-size 32 --methods openclip,fastclip-v3,fastclip-v1  # a regime
    python -m demo data                       # only the data (make demo-data)
    python -m demo study --jobs 2             # 5 seeds x 6 methods, the demo's settings
    python -m demo batch-curve --jobs 2       # global batch 8/16/32/64/128, 3 seeds
    python -m demo keep                       # finished study runs -> demo/study_record/

Files under ``--out`` (default build/demo): ``data/`` (demo data), ``runs/<method>/`` (OpenCLIP
run dirs: params.txt, out.log, checkpoints/epoch_N.pt, eval/epoch_N/demo_{results.jsonl,
summary.json}, train.json), ``report.md``, ``curves.png``, ``results.json``; ``tune`` writes
``tuning/`` and extends the tuning record ``demo/tuning_record.jsonl`` (``--record``), whose
lines for the run's settings the report shows. Report numbers are read back from the
evaluation files, not from memory.

``--seed`` fixes the initialisation, the shard order and the sample order (the webdataset sample
shuffle is seeded by patches/0010), so a repeat on the same machine retraces the run; other
seeds give the seed-to-seed spread the report's figures should be read against.
"""
import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from demo.methods import DEFAULT_METHODS, FULL, METHODS, QUICK
from demo.runner import TrainingFailed

# The study trains at `make demo`'s settings into the same directory, so the demo's runs are the
# study's seed-0 runs and are reused, not trained twice (demo/study.py: same command, kept).
DEFAULT_OUT = Path("build/demo")


def parse_methods(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"methods must be among {', '.join(METHODS)}; "
                                         f"got {text!r}")
    return names


def parse_seeds(text):
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("run", "tune", "data", "study",
                                                       "batch-curve", "keep"), default="run")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default {DEFAULT_OUT}, for every command)")
    parser.add_argument("--quick", action="store_true",
                        default=os.environ.get("DEMO_QUICK", "") not in ("", "0"),
                        help="digits, 2 short epochs (also DEMO_QUICK=1)")
    parser.add_argument("--methods", type=parse_methods, default=list(DEFAULT_METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} "
                             f"(default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--source", choices=("auto", "twemoji", "digits"), default=None,
                        help="demo data source (default: auto; digits with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the seed (repeats)")
    parser.add_argument("--train-pairs", type=int, default=None,
                        help="override the pool's training pairs (0: the whole pool)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the global batch (regime studies)")
    parser.add_argument("--skip-training", action="store_true",
                        help="evaluate the existing runs under --out/runs and rewrite the report")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainers at once, one thread each (default 2; tune: 1)")
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="study: comma-separated seeds (default 0-4; batch-curve 0-2)")
    parser.add_argument("--record", type=Path, default=None,
                        help="the tuning record the report reads and tune extends (default "
                             "demo/tuning_record.jsonl; tune --quick extends none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def settings_from_args(args):
    settings = QUICK if args.quick else FULL
    if args.source:
        settings = replace(settings, source=args.source)
    if args.epochs:
        settings = replace(settings, epochs=args.epochs)
    if args.seed is not None:
        settings = replace(settings, seed=args.seed)
    if args.train_pairs is not None:
        settings = replace(settings, train_pairs=args.train_pairs or None)
    if args.batch_size:
        settings = replace(settings, batch_size=args.batch_size)
    return settings


def main(argv=None):
    from demo.pipeline import run_demo
    from demo.tuning import RECORD_PATH, run_tuning

    args = parse_args(argv)
    args.out = args.out or DEFAULT_OUT
    args.jobs = args.jobs or (1 if args.command == "tune" else 2)
    settings = settings_from_args(args)
    methods_given = args.methods != list(DEFAULT_METHODS)
    if args.command == "data":
        from demo.pipeline import demo_data

        manifest = demo_data(args.out, settings, not args.no_progress)
        print(f"demo data: {manifest['root']} ({manifest['source']}, "
              f"{manifest['train']['num_samples']:,} training pairs, "
              f"{'built' if manifest['rebuilt'] else 'up to date'})")
    elif args.command == "study":
        from demo.study import STUDY_METHODS, STUDY_SEEDS, run_study

        print(run_study(args.out, settings, args.methods if methods_given else STUDY_METHODS,
                        args.seeds or STUDY_SEEDS, args.jobs, not args.no_progress))
    elif args.command == "batch-curve":
        from demo.study import CURVE_METHODS, CURVE_SEEDS, run_batch_curve

        print(run_batch_curve(args.out, settings, args.methods if methods_given else
                              CURVE_METHODS, args.seeds or CURVE_SEEDS, jobs=args.jobs,
                              show_progress=not args.no_progress))
    elif args.command == "keep":
        from demo.study_record import RECORD_DIR, keep

        kept = keep(args.out, RECORD_DIR)
        print(f"kept {len(kept)} finished study run(s) of {args.out} in {RECORD_DIR}")
    elif args.command == "tune":
        # quick tunings are for tests: they never extend the committed record by default
        record = args.record or (None if args.quick else RECORD_PATH)
        run_tuning(args.out, settings, args.methods, args.jobs, record)
    else:
        run_demo(args.out, settings, args.methods, args.skip_training, not args.no_progress,
                 args.record or RECORD_PATH, args.jobs)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TrainingFailed, FileNotFoundError) as error:
        sys.exit(f"demo: error: {error}")
