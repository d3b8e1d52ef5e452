"""Side-by-side report of several runs: a markdown table and PNG plots over epochs / samples seen.

Each ``--run NAME=PATH`` names a run and a directory searched recursively for the
``*_summary.json`` files the evaluation scripts write (e.g. an OpenCLIP run dir, whose
``eval/epoch_<N>/`` folders hold one summary per suite), or a single summary file. Summaries of the
same checkpoint are merged. The first run is the baseline of the Δ column.

    python -m eval.report --run baseline=logs/openclip --run fastclip-v3=logs/fastclip \\
        --output-dir reports/medium
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eval.tasks import TASKS_BY_KEY  # noqa: E402

LABELS = {
    "datacomp_average": "DataComp average (38 tasks)",
    "imagenet_and_variants": "ImageNet & variants (7 sets)",
    "imagenet1k": "ImageNet-1k top-1",
    "imagenet_dist_shifts": "ImageNet dist. shifts (6 sets)",
    "retrieval": "Retrieval (Flickr, MSCOCO, WinoGAViL)",
    "vtab": "VTAB (13 tasks)",
    "mean_recall@1": "Retrieval mean R@1",
}


def parse_run(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--run expects NAME=PATH, got {text!r}")
    return name, Path(path)


def load_points(path):
    """Checkpoints of one run, each {"epoch", "samples_seen", "headline", "tasks"}, in order."""
    files = [path] if path.is_file() else sorted(path.rglob("*_summary.json"))
    if not files:
        raise FileNotFoundError(f"no *_summary.json under {path}")
    points = {}
    for file in files:
        summary = json.loads(file.read_text())
        info = summary.get("info", {})
        point = points.setdefault(info.get("checkpoint", str(file)), {
            "epoch": info.get("epoch"), "samples_seen": info.get("samples_seen"),
            "headline": {}, "tasks": {}})
        point["tasks"].update(summary.get("tasks", {}))
        for name, entry in summary.get("headline", {}).items():
            old = point["headline"].get(name)
            if entry["value"] is not None and (old is None or entry["n"] > old["n"]):
                point["headline"][name] = entry
    return sorted(points.values(), key=lambda p: (p["samples_seen"] or 0, p["epoch"] or 0))


def fmt(entry):
    if entry is None or entry["value"] is None:
        return "–"
    text = f"{100 * entry['value']:.2f}"
    return text if entry["n"] == entry["of"] else f"{text} ({entry['n']}/{entry['of']})"


def final_table(runs, metrics):
    names = list(runs)
    finals = {name: points[-1] for name, points in runs.items()}
    header = ["metric"] + [f"{n} (epoch {finals[n]['epoch']})" for n in names]
    header += [f"Δ {n} − {names[0]}" for n in names[1:]]
    rows = []
    for metric in metrics:
        entries = [finals[n]["headline"].get(metric) for n in names]
        base = entries[0]
        deltas = [f"{100 * (e['value'] - base['value']):+.2f}"
                  if e and base and e["value"] is not None and base["value"] is not None
                  else "–" for e in entries[1:]]
        rows.append([LABELS.get(metric, metric)] + [fmt(e) for e in entries] + deltas)
    return markdown_table(header, rows)


def task_table(runs):
    finals = {name: points[-1]["tasks"] for name, points in runs.items()}
    keys = [key for key in TASKS_BY_KEY if any(key in t for t in finals.values())]
    keys += sorted({k for t in finals.values() for k in t} - set(keys))
    rows = []
    for key in keys:
        name = TASKS_BY_KEY[key].name if key in TASKS_BY_KEY else key
        cells = [finals[n].get(key) for n in runs]
        rows.append([name] + [pct(v) for v in cells])
    return markdown_table(["task (main metric ×100)"] + list(runs), rows)


def pct(value):
    """A fraction as a ×100 cell with two decimals; "–" for a missing value."""
    return "–" if value is None else f"{100 * value:.2f}"


def markdown_table(header, rows):
    """A markdown table; cells may be any value (written with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def plot_metric(runs, metric, path):
    """One PNG: the metric against epochs (left) and samples seen (right), a line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, points in runs.items():
        for axis, x_key in zip(axes, ("epoch", "samples_seen")):
            xy = [(p[x_key], 100 * p["headline"][metric]["value"]) for p in points
                  if p[x_key] is not None and metric in p["headline"]]
            if xy:
                axis.plot(*zip(*xy), marker="o", label=name)
    partial = {f"{e['n']}/{e['of']}" for ps in runs.values() for p in ps
               for e in [p["headline"].get(metric)] if e and e["n"] != e["of"]}
    title = LABELS.get(metric, metric)
    fig.suptitle(title + (f" — PARTIAL ({', '.join(sorted(partial))} tasks)" if partial else ""))
    for axis, label in zip(axes, ("epoch", "samples seen")):
        axis.set_xlabel(label)
        axis.set_ylabel(LABELS.get(metric, metric) + " (%)")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(runs, output_dir):
    """Write report.md and <metric>.png into output_dir; returns the markdown path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in LABELS if any(m in p["headline"] for ps in runs.values() for p in ps)]
    lines = ["# Evaluation report", "",
             "Runs: " + ", ".join(f"{n} ({len(ps)} checkpoint(s))" for n, ps in runs.items()),
             "", "Values ×100; \"(n/m)\" marks an average over n of its m tasks (partial).", "",
             "## Final checkpoints", "", final_table(runs, metrics), "",
             "## Per task, final checkpoints", "", task_table(runs), "", "## Over training", ""]
    for metric in metrics:
        file = metric.replace("@", "_at_") + ".png"
        plot_metric(runs, metric, output_dir / file)
        lines.append(f"![{LABELS[metric]}]({file})")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=parse_run, action="append", required=True,
                        help="NAME=PATH (repeat; the first is the baseline)")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    names = [name for name, _ in args.run]
    if len(set(names)) != len(names):
        parser.error(f"run names must be distinct: {names}")
    runs = {name: load_points(path) for name, path in args.run}
    path = write_report(runs, args.output_dir)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError) as error:
        raise SystemExit(f"error: {error}")
