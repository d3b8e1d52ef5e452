"""Result files shared by the evaluation scripts and read by eval/report.py.

Each script writes into its output directory:

* ``<suite>_results.jsonl``: one line per task,
  ``{"key", "dataset", "main_metric", "metrics": {...}, "info": {...}}``
  (the shape of DataComp's eval_results.jsonl, plus the checkpoint info);
* ``<suite>_summary.json``: ``{"suite", "info", "headline": {name: {"value", "n", "of",
  "missing"}}, "tasks": {key: main metric}, "partial", "missing"}``.

``info`` holds checkpoint, model, run_name, epoch, samples_seen and logit_bias (see eval/model.py).
"""
import json
import math
from pathlib import Path


def task_record(key, dataset, metrics, main_metric_name, info):
    main = metrics.get(main_metric_name)
    return {"key": key, "dataset": dataset, "main_metric_name": main_metric_name,
            "main_metric": _clean(main), "metrics": {k: _clean(v) for k, v in metrics.items()},
            "info": info}


def _clean(value):
    """JSON-safe number: numpy/torch scalars to float, NaN to None."""
    if value is None or isinstance(value, (str, bool, list, dict)):
        return value
    value = float(value)
    return None if math.isnan(value) else value


def mean_headline(records_by_key, keys):
    """{"value", "n", "of", "missing"} for the mean main metric over keys present in records."""
    present = [key for key in keys if key in records_by_key]
    missing = [key for key in keys if key not in records_by_key]
    values = [records_by_key[key]["main_metric"] for key in present]
    value = sum(values) / len(values) if values else None
    return {"value": value, "n": len(present), "of": len(keys), "missing": missing}


def write_results(output_dir, suite, records, summary):
    """Write <suite>_results.jsonl and <suite>_summary.json; returns the summary path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / f"{suite}_results.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    path = output_dir / f"{suite}_summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def read_records(path):
    """Records from a <suite>_results.jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_summary(summary):
    """Human-readable lines for a summary (printed by the scripts)."""
    lines = [f"== {summary['suite']} summary ({summary['info'].get('checkpoint', '?')}) =="]
    for name, entry in summary["headline"].items():
        value = "n/a" if entry["value"] is None else f"{100 * entry['value']:.2f}"
        note = "" if entry["n"] == entry["of"] else f"  PARTIAL: {entry['n']}/{entry['of']} tasks"
        lines.append(f"{name:>24}: {value}{note}")
    if summary.get("partial"):
        lines.append(f"PARTIAL RESULT: missing {len(summary['missing'])} task(s): "
                     + ", ".join(summary["missing"]))
    return lines


def publish(output_dir, suite, records, summary):
    """Write the results, print the summary and where it went; return the summary."""
    path = write_results(output_dir, suite, records, summary)
    print("\n".join(format_summary(summary)))
    print(f"wrote {path}")
    return summary


def run_cli(main, *expected_errors):
    """Run a CLI's main(); the errors a user can cause end it with one ``error:`` line."""
    try:
        main()
    except expected_errors as error:
        raise SystemExit(f"error: {error}")
