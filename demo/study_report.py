"""study.md / study.json / study_curves.png and batch_curve.{md,json,png}, from the study's
evaluation files (demo/study.py collects them; demo/stats.py summarises them over seeds)."""
from dataclasses import asdict, replace
from pathlib import Path

from demo import stats
from demo.methods import METHODS
from demo.plots import plot_bands
from eval.report import markdown_table

STUDY_KEYS = ("mean_r1", "i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5", "style_mean_r1",
              "style_i2t_r1", "style_t2i_r1", "style_i2t_r5", "style_t2i_r5", "emoji_mean_r1",
              "icons_mean_r1", "zeroshot_top1")


def final_rows(finals, columns, runs):
    titles = {key: title for key, title, _, _ in columns}
    keys = [k for k in STUDY_KEYS if k in titles]
    rows = [[METHODS[name].label, len(runs[name])] +
            [stats.format_interval(by_key.get(key)) for key in keys]
            for name, by_key in finals.items()]
    return markdown_table(["method", "seeds"] + [titles[k] for k in keys], rows)


def paired_lines(pairs, titles):
    lines = []
    for name, by_key in pairs.items():
        for key, summary in by_key.items():
            ratio = summary["ratio"]
            fraction = summary["fraction"]
            ratio_text = "–" if ratio is None else stats.format_interval(ratio, scale=1)
            reach = ("never" if fraction is None else stats.format_interval(fraction, scale=1))
            lines.append(
                f"- {METHODS[name].label} / OpenCLIP, {titles.get(key, key)} at equal samples "
                f"(final checkpoint, paired by seed, {len(summary['seeds'])} seeds): "
                f"**{ratio_text}×**; per seed "
                f"{', '.join('–' if r is None else f'{r:.2f}' for r in summary['ratios'])}. "
                f"Samples to reach OpenCLIP's final value (interpolated, fraction of its "
                f"samples): **{reach}** ({summary['never_reached']} of "
                f"{len(summary['seeds'])} seeds never reached it).")
    return lines


def seeds_on_disk(out_dir, settings):
    from demo.study import run_dir_of

    batch_dir = run_dir_of(out_dir, settings, 0, "x").parent.parent
    return {int(p.name[4:]) for p in batch_dir.glob("seed*") if p.name[4:].isdigit()}


def write_study(out_dir, settings, manifest, names, seeds, jobs):
    """Rewrite the study's files from the complete runs; -> study.md."""
    from demo.study import collect, columns_of, study_record, summarise, write_json

    out_dir = Path(out_dir)
    columns = columns_of(manifest)
    # every complete seed on disk: a batch curve with fewer seeds never shrinks a study's summary
    seeds = sorted(set(seeds) | seeds_on_disk(out_dir, settings))
    runs = collect(out_dir, settings, names, seeds)
    if not runs:
        return None
    finals, pairs, bands = summarise(runs, columns)
    titles = {key: title for key, title, _, _ in columns}
    suffix = f"_b{settings.batch_size}"
    plot_bands({METHODS[n].label: bands[n] for n in runs}, out_dir / f"study_curves{suffix}.png",
               columns)
    lines = [f"# Study: {len(seeds)} seeds, global batch {settings.batch_size}", "",
             f"Settings: {', '.join(f'{k} {v}' for k, v in asdict(settings).items() if k != 'seed')};"
             f" seeds {', '.join(map(str, seeds))}; one thread per trainer, {jobs} at once. "
             "Values ×100, mean ± 95% CI over seeds (Student t); a single seed shows no ±.", "",
             final_rows(finals, columns, runs), "", *paired_lines(pairs, titles), "",
             f"![curves, mean and 95% band over seeds](study_curves{suffix}.png)", ""]
    path = out_dir / f"study{suffix}.md"
    path.write_text("\n".join(lines))
    write_json(out_dir / f"study{suffix}.json", study_record(settings, names, seeds, jobs, runs,
                                                             columns))
    return path


def write_batch_curve(out_dir, settings, names, seeds, batches):
    """One row per global batch: each method's final concept mean R@1 and v3 / OpenCLIP."""
    import matplotlib.pyplot as plt

    from demo.study import collect, summarise, write_json
    from demo.evaluate import POOL_COLUMNS

    out_dir = Path(out_dir)
    rows, record, ratios = [], [], []
    for batch in batches:
        runs = collect(out_dir, replace(settings, batch_size=batch), names, seeds)
        if not runs:
            continue
        finals, pairs, _ = summarise(runs, POOL_COLUMNS)
        pair = pairs.get("fastclip-v3", {}).get("mean_r1")
        cells = [stats.format_interval(finals[n].get("mean_r1")) if n in finals else "–"
                 for n in names]
        ratio = pair["ratio"] if pair else None
        rows.append([batch] + cells + [stats.format_interval(ratio, scale=1)])
        ratios.append((batch, ratio))
        record.append({"batch": batch, "seeds": {n: sorted(r) for n, r in runs.items()},
                       "mean_r1": {n: asdict(f["mean_r1"]) for n, f in finals.items()
                                   if "mean_r1" in f},
                       "ratio": ratio and asdict(ratio)})
    table = markdown_table(["global batch"] + [f"{METHODS[n].label} concept mean R@1"
                                               for n in names] + ["v3 / OpenCLIP"], rows)
    (out_dir / "batch_curve.md").write_text(f"# Batch-size curve ({len(seeds)} seeds)\n\n{table}\n")
    write_json(out_dir / "batch_curve.json", record)
    shown = [(b, r) for b, r in ratios if r is not None]
    if shown:
        fig, axis = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
        axis.errorbar([b for b, _ in shown], [r.mean for _, r in shown],
                      yerr=[0 if r.half_width != r.half_width else r.half_width
                            for _, r in shown], marker="o", capsize=3)
        axis.axhline(1.0, color="grey", lw=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("global batch")
        axis.set_ylabel("FastCLIP-v3 / OpenCLIP, concept mean R@1")
        fig.savefig(out_dir / "batch_curve.png", dpi=100)
        plt.close(fig)
    return out_dir / "batch_curve.md"
