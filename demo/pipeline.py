"""The demo from data to report: build the data, train every method, evaluate every epoch's
checkpoint on the held-out sets, write the report (``python -m demo``; see demo/__main__.py)."""
from pathlib import Path

from demo.compare import comparison
from demo.data.build import build_demo_data
from demo.evaluate import (EvalSets, evaluate_run, heldout_sets, majority_class_share,
                           zeroshot_set)
from demo.methods import METHODS
from demo.report import (collect_runs, comparison_lines, final_table, headline_queries,
                         write_report)
from demo.runner import read_train_record
from demo.study import run_dir_of, train_runs
from demo.tuning import RECORD_PATH, read_record


def demo_data(out_dir, settings, show_progress=True):
    """The run's data directory (built once, then reused): ``<out>/data``."""
    return build_demo_data(Path(out_dir) / "data", settings.source,
                           train_pairs=settings.train_pairs, show_progress=show_progress)


def run_demo(out_dir, settings, names, skip_training=False, show_progress=True,
             record=RECORD_PATH, jobs=2):
    """Train the methods ``jobs`` at a time, one thread each, exactly as the study trains a seed
    (demo/study.py), so ``make demo``'s runs are the study's runs of that seed and are reused by
    it; evaluate every checkpoint; write the report."""
    out_dir = Path(out_dir)
    manifest = demo_data(out_dir, settings, show_progress)
    eval_sets = EvalSets(manifest["root"], heldout_sets(manifest["eval_sets"]))
    runs_dir = run_dir_of(out_dir, settings, settings.seed, names[0]).parent
    if skip_training:
        for name in names:
            train = read_train_record(runs_dir / name)
            if not train:
                raise FileNotFoundError(f"--skip-training: no {runs_dir / name}/train.json; "
                                        "train first")
            evaluate_run(runs_dir / name, eval_sets, train["samples_per_epoch"],
                         METHODS[name].label, show_progress)
    else:
        train_runs(settings, manifest, out_dir, [(settings.seed, name) for name in names],
                   eval_sets, jobs, trainer_bars=show_progress)
    runs = collect_runs(runs_dir, names)
    zeroshot = eval_sets.loaded(zeroshot_set(manifest["eval_sets"]))[0]
    report = write_report(out_dir, settings, manifest, runs, majority_class_share(zeroshot),
                          read_record(record))
    print(final_table(runs, manifest))
    print("\n".join(comparison_lines(comparison(runs), runs, headline_queries(manifest))))
    print(f"wrote {report} and {out_dir / 'curves.png'}")
    return report
