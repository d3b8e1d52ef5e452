"""The study's record in the repository (``demo/study_record/``): the small files of every finished
study run, so a study that takes longer than one sitting carries on from a fresh clone instead of
retraining what is done.

    python -m demo study --jobs 2          # restores recorded runs first, then trains the rest
    python -m demo keep                    # copy build/demo's finished runs into the record

A run is kept as its ``train.json`` (the exact trainer command, thread count, wall time) and its
evaluation files (``eval/epoch_N/demo_summary.json`` and ``demo_results.jsonl``), a few kB each;
checkpoints stay in build/. The study restores a recorded run only where its own run directory
has no reusable run and the record's command is the one it would run now (demo/study.py's
``reusable``), so a changed setting or hyperparameter is trained afresh. ``make demo`` never
restores: on a fresh clone it trains, which is what it is for.
"""
import shutil
from pathlib import Path

RECORD_DIR = Path(__file__).resolve().parent / "study_record"
KEPT_PATTERNS = ("train.json", "eval/epoch_*/demo_summary.json", "eval/epoch_*/demo_results.jsonl")
SUMMARY_PATTERNS = ("study_b*.md", "study_b*.json", "study_curves_b*.png", "batch_curve.*")


def kept_files(run_dir):
    """The files of one run the record keeps, relative to the run directory."""
    run_dir = Path(run_dir)
    return sorted(path.relative_to(run_dir) for pattern in KEPT_PATTERNS
                  for path in run_dir.glob(pattern))


def copy_run(source, target):
    """Copy one run's kept files from ``source`` to ``target``; -> how many."""
    files = kept_files(source)
    for relative in files:
        (Path(target) / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(source) / relative, Path(target) / relative)
    return len(files)


def keep(out_dir, record_dir=RECORD_DIR):
    """Copy every finished run under ``<out_dir>/runs`` (and the study's summaries) into the
    record; -> the run directories kept."""
    from demo.study import STUDY_THREADS
    from demo.runner import read_train_record

    out_dir, record_dir = Path(out_dir), Path(record_dir)
    kept = []
    for train in sorted((out_dir / "runs").glob("b*/seed*/*/train.json")):
        run_dir = train.parent
        record = read_train_record(run_dir)
        epochs = record.get("epochs")
        done = epochs and (run_dir / "eval" / f"epoch_{epochs}" / "demo_summary.json").is_file()
        if done and record.get("omp_num_threads") == STUDY_THREADS:
            target = record_dir / run_dir.relative_to(out_dir)
            shutil.rmtree(target, ignore_errors=True)
            copy_run(run_dir, target)
            kept.append(target)
    for pattern in SUMMARY_PATTERNS:
        for path in out_dir.glob(pattern):
            shutil.copy2(path, record_dir / path.name)
    return kept


def recorded_run(record_dir, run_dir, out_dir):
    """Where the record keeps the run that lives at ``run_dir`` under ``out_dir``."""
    return Path(record_dir) / Path(run_dir).relative_to(out_dir)
