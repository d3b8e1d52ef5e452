"""report.md, curves.png and results.json of a demo, from the runs' evaluation files.

Tables go through ``eval.report.markdown_table`` (the one markdown table writer) and the numbers
come from demo/evaluate.py's ``read_run_points`` (``eval.report.load_points`` underneath). The
report also shows the tuning record's lines (demo/tuning.py) for the run's settings.
"""
import json
from dataclasses import asdict
from pathlib import Path

from demo.compare import comparison, recall_standard_error
from demo.evaluate import columns_for, read_run_points
from demo.methods import METHODS, TUNED_AT
from demo.plots import plot_curves
from demo.runner import read_train_record
from eval.report import markdown_table, pct


def collect_runs(runs_dir, names):
    """{method: {"label", "hyper", "train", "points"}} read back from each run's files."""
    runs = {}
    for name in names:
        run_dir = Path(runs_dir) / name
        runs[name] = {"label": METHODS[name].label, "hyper": METHODS[name].tuned,
                      "train": read_train_record(run_dir), "points": read_run_points(run_dir)}
    return runs


def headline_queries(manifest):
    """Pairs in the set behind the headline mean R@1 (the concept or the one held-out set)."""
    pool_counts = manifest["counts"].get("eval", {}).get("concept_retrieval")
    return pool_counts["pairs"] if pool_counts else manifest["counts"]["heldout"]["samples"]


def final_table(runs, manifest):
    columns = columns_for(manifest["eval_sets"])
    header = ["method"] + [title for _, title, _, _ in columns] + [
        "train wall time (s)", "samples seen", "epochs"]
    rows = []
    for run in runs.values():
        last = run["points"][-1]
        wall = run["train"].get("wall_s")
        rows.append([run["label"]] + [pct(last[key]) for key, *_ in columns] + [
            "–" if wall is None else f"{wall:.0f}", f"{last['samples_seen']:,}", last["epoch"]])
    return markdown_table(header, rows)


def curve_table(runs, key="mean_r1"):
    """Metric per epoch, one column per method (the numbers behind curves.png)."""
    epochs = sorted({p["epoch"] for run in runs.values() for p in run["points"]})
    samples = {p["epoch"]: p["samples_seen"] for run in runs.values() for p in run["points"]}
    rows = []
    for epoch in epochs:
        cells = [next((pct(p[key]) for p in run["points"] if p["epoch"] == epoch), "–")
                 for run in runs.values()]
        rows.append([epoch, f"{samples[epoch]:,}"] + cells)
    return markdown_table(["epoch", "samples seen"] + [r["label"] for r in runs.values()], rows)


def comparison_lines(figures, runs, heldout_pairs):
    if not figures:
        return ["(OpenCLIP and FastCLIP-v3 were not both run.)"]
    challenger, baseline = runs[figures["challenger"]]["label"], runs[figures["baseline"]]["label"]
    ratio = figures["ratio_final"]
    fraction = figures["fraction_to_reach"]
    reach = ("never reached within this run" if fraction is None else
             f"{figures['samples_to_reach']:,} samples = {fraction:.2f} × {baseline}'s "
             f"{figures['baseline_final_samples']:,}")
    per_checkpoint = ", ".join(f"{r:.2f}" for r in figures["ratios"].values())
    return [
        f"- Held-out retrieval mean R@1, {challenger} / {baseline} at equal samples seen "
        f"(final checkpoint): **{ratio:.2f}×** (goal ≥ 1.2×); per checkpoint: "
        f"{per_checkpoint}.",
        f"- Samples {challenger} needs to reach {baseline}'s final mean R@1 "
        f"({pct(figures['baseline_final'])}), checkpoint granularity: **{reach}** (goal ≤ 0.5).",
        f"- Evaluation noise alone: one direction's R@1 near {pct(figures['baseline_final'])} over "
        f"{heldout_pairs} held-out pairs has a standard error of "
        f"{pct(recall_standard_error(figures['baseline_final'], heldout_pairs))} points; "
        "seed-to-seed variation comes on top (one seed per method here).",
    ]


def data_line(manifest):
    counts = manifest["counts"]
    if manifest["source"] != "pool":
        return (f"- Data: {manifest['source']} — train {counts['train']['samples']:,} pairs, "
                f"validation {counts['val']['samples']:,} (tuning only), held-out "
                f"{counts['heldout']['samples']:,} (this report only).")
    evals = counts["eval"]
    return (f"- Data: the pool ({len(counts['train_by_package'])} sets, {manifest['image_size']} "
            f"px) — train {counts['train_shards']['samples']:,} pairs of "
            f"{counts['train']['samples']:,} ({counts['train']['concepts']:,} concepts); "
            f"validation {evals['val_retrieval']['pairs']:,} pairs (tuning only); concept "
            f"held-out {evals['concept_retrieval']['pairs']:,} pairs "
            f"({evals['concept_emoji_retrieval']['pairs']:,} emoji, "
            f"{evals['concept_icons_retrieval']['pairs']:,} icons; chance R@1 "
            f"{100 / evals['concept_retrieval']['pairs']:.2f}), zero-shot over "
            f"{evals['concept_zeroshot']['classes']:,} held-out concepts "
            f"({evals['concept_zeroshot']['images']:,} images, every style); style held-out "
            f"(Fluent Emoji, never trained on) {evals['style_retrieval']['pairs']:,} pairs "
            f"(chance R@1 {100 / evals['style_retrieval']['pairs']:.2f}).")


def settings_lines(settings, manifest, runs):
    lines = [
        data_line(manifest) + f" Model {settings.model}.",
        f"- Shared: global batch {settings.batch_size}, {settings.epochs} epochs, seed "
        f"{settings.seed}, AdamW (wd {settings.weight_decay}), cosine lr with "
        f"{settings.warmup_steps} warm-up steps, fp32 on CPU.",
    ]
    for name, run in runs.items():
        hyper = {**METHODS[name].fixed, **run["hyper"]}
        lines.append(f"- {run['label']}: " + ", ".join(f"{k} {v}" for k, v in hyper.items()))
    return lines


def zeroshot_lines(majority_share, manifest):
    if majority_share is None:
        return []
    if manifest["source"] == "pool":
        return [f"- Zero-shot top-1 for scale: always answering the most frequent held-out "
                f"concept scores {pct(majority_share)}."]
    return [f"- Zero-shot category top-1 for scale: always answering the most frequent held-out "
            f"category scores {pct(majority_share)}. Captions name the emoji, never the "
            "category, so this task is far from what the tiny models learn."]


def tuning_lines(entries, settings, runs):
    """The tuning record's lines for these methods at these settings (any seed): a table with
    the point each run uses marked, or one line saying there are none."""
    wanted = {k: v for k, v in json.loads(json.dumps(asdict(settings))).items() if k != "seed"}
    rows = []
    for name, run in runs.items():
        for entry in entries:
            shared = {k: v for k, v in entry["settings"].items() if k != "seed"}
            if entry["method"] != name or shared != wanted:
                continue
            used = entry["hyper"] == run["hyper"] and entry.get("fixed") == METHODS[name].fixed
            notes = [n for n in ("used" if used else None, entry.get("note")) if n]
            rows.append([run["label"], ", ".join(f"{k} {v}" for k, v in entry["hyper"].items()),
                         pct(entry["val_mean_r1"]), entry["settings"]["seed"],
                         entry["shuffle"], "; ".join(notes)])
    if not rows:
        return ["No line of the tuning record (demo/tuning_record.jsonl) has these settings; "
                "the hyperparameters are demo/methods.py's."]
    return [markdown_table(["tuned method", "hyperparameters", "val mean R@1", "seed", "shuffle",
                            ""], rows)]


def tuning_section(entries, settings, runs):
    """The record's lines at the run's settings; else a note and the lines where the
    hyperparameters were tuned (methods.TUNED_AT)."""
    lines = tuning_lines(entries, settings, runs)
    if not lines[0].startswith("No line") or settings == TUNED_AT:
        return lines
    where = ", ".join(f"{k} {v}" for k, v in asdict(TUNED_AT).items() if k != "seed")
    return [f"Not tuned at these settings: the hyperparameters were chosen on the validation "
            f"split at other settings ({where}), whose record lines follow.", "",
            *tuning_lines(entries, TUNED_AT, runs)]


def write_report(out_dir, settings, manifest, runs, majority_share=None, record_entries=()):
    """report.md, curves.png and results.json under out_dir, from the runs' eval files."""
    out_dir = Path(out_dir)
    figures = comparison(runs)
    plot_curves(runs, out_dir / "curves.png", columns_for(manifest["eval_sets"]))
    lines = ["# Demo: OpenCLIP vs FastCLIP-v3" + (" vs SigLIP" if "siglip" in runs else ""), "",
             *settings_lines(settings, manifest, runs), "",
             "## Final checkpoints (held-out sets; values ×100)", "",
             final_table(runs, manifest), "",
             *comparison_lines(figures, runs, headline_queries(manifest)),
             *zeroshot_lines(majority_share, manifest), "",
             "## Held-out mean R@1 per epoch (×100)", "", curve_table(runs), "",
             "![metrics against samples seen](curves.png)", "",
             "## Tuning record (validation split; values ×100)", "",
             *tuning_section(record_entries, settings, runs), "",
             f"Attribution: {manifest['attribution']}", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    results = {"settings": asdict(settings), "data": {k: manifest[k] for k in (
        "source", "counts", "attribution")}, "comparison": figures,
        "runs": {name: {k: run[k] for k in ("label", "hyper", "train", "points")}
                 for name, run in runs.items()}}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return out_dir / "report.md"
