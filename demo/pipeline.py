"""The demo from data to report: build the data, train every method, evaluate every epoch's
checkpoint on the held-out sets, write the report (``python -m demo``; see demo/__main__.py)."""
from pathlib import Path

from demo.compare import comparison
from demo.data.build import build_demo_data
from demo.evaluate import (EvalSets, evaluate_run, heldout_sets, majority_class_share,
                           zeroshot_set)
from demo.methods import METHODS, method_flags
from demo.report import (collect_runs, comparison_lines, final_table, headline_queries,
                         write_report)
from demo.runner import (expected_samples_per_epoch, read_train_record, run_trainer,
                         trainer_command)
from demo.tuning import RECORD_PATH, read_record


def train_method(name, settings, manifest, runs_dir, show_progress):
    """One method's demo run (a checkpoint every epoch); -> samples per epoch."""
    num_samples = settings.train_num_samples or manifest["train"]["num_samples"]
    expected = expected_samples_per_epoch(num_samples, settings.batch_size, settings.workers)
    flags = method_flags(name, METHODS[name].tuned, manifest["train"]["id_space"])
    command = trainer_command(settings, manifest, flags, runs_dir, name)
    record = run_trainer(command, Path(runs_dir) / name, METHODS[name].label, settings.epochs,
                         expected, show_progress)
    return record["samples_per_epoch"]


def demo_data(out_dir, settings, show_progress=True):
    """The run's data directory (built once, then reused): ``<out>/data``."""
    return build_demo_data(Path(out_dir) / "data", settings.source,
                           train_pairs=settings.train_pairs, show_progress=show_progress)


def run_demo(out_dir, settings, names, skip_training=False, show_progress=True,
             record=RECORD_PATH):
    out_dir = Path(out_dir)
    manifest = demo_data(out_dir, settings, show_progress)
    eval_sets = EvalSets(manifest["root"], heldout_sets(manifest["eval_sets"]))
    runs_dir = out_dir / "runs"
    for name in names:
        label, run_dir = METHODS[name].label, runs_dir / name
        if skip_training:
            train = read_train_record(run_dir)
            if not train:
                raise FileNotFoundError(f"--skip-training: no {run_dir}/train.json; train first")
            samples_per_epoch = train["samples_per_epoch"]
        else:
            samples_per_epoch = train_method(name, settings, manifest, runs_dir, show_progress)
        evaluate_run(run_dir, eval_sets, samples_per_epoch, label, show_progress)
    runs = collect_runs(runs_dir, names)
    zeroshot = eval_sets.loaded(zeroshot_set(manifest["eval_sets"]))[0]
    report = write_report(out_dir, settings, manifest, runs, majority_class_share(zeroshot),
                          read_record(record))
    print(final_table(runs, manifest))
    print("\n".join(comparison_lines(comparison(runs), runs, headline_queries(manifest))))
    print(f"wrote {report} and {out_dir / 'curves.png'}")
    return report
