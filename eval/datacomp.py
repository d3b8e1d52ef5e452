"""DataComp's 38-task evaluation on local data, through clip_benchmark.

Expects ``--data-dir`` to hold one directory per task, named as in eval/tasks.py
(``wds_<task>_test``: what DataComp's download_evalsets.py writes for the classification tasks;
local wds sets for Flickr30k, MSCOCO and WinoGAViL). Nothing is downloaded. A missing task is an
error that lists every missing directory, unless ``--allow-missing``: then the average is over the
tasks that ran and the summary says PARTIAL. Writes ``datacomp_results.jsonl`` (a line per task)
and ``datacomp_summary.json`` (38-task average and group averages) into ``--output-dir``.

    python -m eval.datacomp --checkpoint logs/x/checkpoints/epoch_3.pt --data-dir data/datacomp
    python -m eval.datacomp --checkpoint ... --data-dir ... --allow-missing   # what is there
    python -m eval.datacomp --checkpoint ... --data-dir ... --tasks imagenet1k cifar10
    python -m eval.datacomp --from-results logs/x/eval/epoch_3/datacomp_results.jsonl

``--tasks`` runs a subset (its average is flagged partial); ``--from-results`` only re-aggregates.
FairFace and UTKFace (``fairness/fairface``, ``fairness/utkface``) run whenever their sets are
present (or when named in ``--tasks``); the summary reports them under ``"fairness"``, outside
every average. Results use DataComp's task keys.

Results are saved after each task; rerunning the same command resumes (``--fresh`` reruns all).
"""
import argparse
import json
import os
import time
from pathlib import Path

from eval.classification import evaluate_wds_classification
from eval.model import add_model_args, default_output_dir, model_from_args
from eval.results import mean_headline, publish, read_records, run_cli, task_record
from eval.retrieval import evaluate_retrieval, open_retrieval_set
from eval.fairness import evaluate_fairface
from eval.tasks import FAIRNESS_BY_KEY, FAIRNESS_TASKS, GROUPS, RENAMED_KEYS, TASKS_BY_KEY, select_tasks
from eval.winogavil import evaluate_winogavil
from eval.wds_sets import is_wds_set


class MissingTasksError(RuntimeError):
    """Raised when tasks of the suite have no data or no result and --allow-missing is off."""


def missing_task_dirs(tasks, data_dir, allow_missing=False):
    """Tasks whose wds directory is absent under data_dir; an error unless allow_missing."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir}: no such directory")
    absent = [task for task in tasks if not is_wds_set(os.path.join(data_dir, task.dirname))]
    if absent and not allow_missing:
        raise MissingTasksError(
            f"{len(absent)} task dataset(s) missing under {data_dir}: "
            + ", ".join(task.dirname for task in absent)
            + " (pass --allow-missing to evaluate the rest)")
    return absent


def run_task(evm, task, data_dir, batch_size=64, workers=0):
    """Metrics of one task; the result's main metric is metrics[task.main_metric]."""
    root = os.path.join(data_dir, task.dirname)
    if task.kind == "retrieval":
        return evaluate_retrieval(evm, open_retrieval_set(root, evm.transform), batch_size, workers)
    if task.kind == "winogavil":
        return evaluate_winogavil(evm, root)
    if task.kind == "fairface":
        return evaluate_fairface(evm, root, batch_size, workers)
    return evaluate_wds_classification(evm, root, batch_size, workers, task.extra_metrics)


def aggregate(records, expected_keys=None, allow_missing=False, info=None):
    """Summary of per-task records: the suite average and the group averages.

    expected_keys defaults to all 38 tasks. A record whose main metric is None counts as
    missing. Missing tasks raise MissingTasksError unless allow_missing, in which case the
    summary is marked partial and lists them.
    """
    expected_keys = [key for key in (TASKS_BY_KEY if expected_keys is None else expected_keys)
                     if key not in FAIRNESS_BY_KEY]
    by_key = {RENAMED_KEYS.get(r["key"], r["key"]): r for r in records
              if r.get("main_metric") is not None}
    fairness = {key: by_key.pop(key)["metrics"] for key in list(by_key) if key in FAIRNESS_BY_KEY}
    unknown = sorted(set(by_key) - set(TASKS_BY_KEY))
    if unknown:
        raise ValueError(f"results for tasks outside the DataComp suite: {unknown}")
    missing = [key for key in expected_keys if key not in by_key]
    if missing and not allow_missing:
        raise MissingTasksError(
            f"{len(missing)} of {len(expected_keys)} DataComp task(s) have no result: "
            f"{', '.join(missing)} (pass --allow-missing to average over what ran)")
    ran = {key: by_key[key] for key in expected_keys if key in by_key}
    headline = {"datacomp_average": mean_headline(ran, list(TASKS_BY_KEY))}
    headline["imagenet1k"] = mean_headline(ran, ["imagenet1k"])
    for group, keys in GROUPS.items():
        headline[group] = mean_headline(ran, list(keys))
    all_missing = [key for key in TASKS_BY_KEY if key not in ran]
    return {"suite": "datacomp", "info": info or {}, "headline": headline,
            "tasks": {key: record["main_metric"] for key, record in ran.items()},
            "fairness": fairness, "partial": bool(all_missing), "missing": all_missing}


def evaluate_suite(evm, data_dir, tasks, batch_size=64, workers=0, allow_missing=False,
                   log=print, done=None, on_record=None):
    """Run the tasks whose data is present; returns the per-task records in task order.

    done: {key: record} of tasks already evaluated for this checkpoint (reused, not rerun);
    on_record(record) is called after each newly evaluated task (to save progress).
    """
    absent = missing_task_dirs(tasks, data_dir, allow_missing)
    done, records = done or {}, []
    for task in tasks:
        if task in absent:
            log(f"[skip] {task.name}: no {task.dirname}")
            continue
        if task.key in done:
            records.append(done[task.key])
            log(f"[cached] {task.name}: {task.main_metric} = {done[task.key]['main_metric']}")
            continue
        start = time.time()
        metrics = run_task(evm, task, data_dir, batch_size, workers)
        records.append(task_record(task.key, task.name, metrics, task.main_metric, evm.info))
        if on_record:
            on_record(records[-1])
        value = records[-1]["main_metric"]
        shown = "None" if value is None else f"{value:.4f}"
        log(f"[done] {task.name}: {task.main_metric} = {shown} ({time.time() - start:.0f} s)")
    return records


def cached_records(results_path, checkpoint):
    """Records of an earlier, interrupted run on the same checkpoint ({} if none)."""
    if not Path(results_path).is_file():
        return {}
    same = os.path.realpath(checkpoint)
    return {r["key"]: r for r in read_records(results_path)
            if os.path.realpath(r["info"].get("checkpoint", "")) == same
            and r.get("main_metric") is not None}


def present_fairness_tasks(data_dir, tasks):
    """FairFace / UTKFace tasks not asked for but whose sets are in data_dir (run as extras)."""
    return [task for task in FAIRNESS_TASKS if task not in tasks
            and is_wds_set(os.path.join(data_dir, task.dirname))]


def run_checkpoint(args, tasks, output_dir):
    """Evaluate args.checkpoint, resuming from output_dir's results unless --fresh."""
    missing_task_dirs(tasks, args.data_dir, args.allow_missing)  # fail before loading
    if args.tasks is None:
        tasks = tasks + present_fairness_tasks(args.data_dir, tasks)
    evm = model_from_args(args)
    results_path = Path(output_dir) / "datacomp_results.jsonl"
    done = {} if args.fresh else cached_records(results_path, args.checkpoint)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with open(results_path, "w") as f:  # rewrite the reusable part, then append progress
        f.writelines(json.dumps(r) + "\n" for r in done.values())

    def save(record):
        with open(results_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    records = evaluate_suite(evm, args.data_dir, tasks, args.batch_size, args.workers,
                             args.allow_missing, done=done, on_record=save)
    return records, evm.info


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="directory holding the wds_<task>_test sets")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help="DataComp task keys to run (default: all 38)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="average over the tasks that ran instead of failing")
    parser.add_argument("--from-results", default=None,
                        help="only re-aggregate an existing datacomp_results.jsonl")
    parser.add_argument("--fresh", action="store_true",
                        help="rerun every task (default: reuse results of this checkpoint "
                             "found in the output dir, e.g. after an interruption)")
    add_model_args(parser, checkpoint_required=False)
    args = parser.parse_args(argv)
    if not args.from_results and not (args.data_dir and args.checkpoint):
        parser.error("--checkpoint and --data-dir are required (or --from-results FILE)")
    return args


def main(argv=None):
    args = parse_args(argv)
    tasks = select_tasks(args.tasks)
    keys = [task.key for task in tasks]
    if args.from_results:
        records = read_records(args.from_results)
        info = records[0]["info"] if records else {}
        summary = aggregate(records, keys, args.allow_missing, info)
        output_dir = args.output_dir or Path(args.from_results).parent
    else:
        output_dir = args.output_dir or default_output_dir(args.checkpoint)
        records, info = run_checkpoint(args, tasks, output_dir)
        summary = aggregate(records, keys, args.allow_missing, info)
    return publish(output_dir, "datacomp", records, summary)


if __name__ == "__main__":
    run_cli(main, MissingTasksError, FileNotFoundError, ValueError)
