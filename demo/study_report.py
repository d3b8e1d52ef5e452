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


def seed_count(n):
    return f"{n} seed" + ("" if n == 1 else "s")


def reach_text(summary):
    """Samples-to-match and how many seeds never got there, in words."""
    fraction, never, n = summary["fraction"], summary["never_reached"], len(summary["seeds"])
    reach = "never" if fraction is None else stats.format_interval(fraction, scale=1)
    missed = ("every seed reached it" if never == 0 else
              f"{never} of {seed_count(n)} never reached it")
    return f"**{reach}** ({missed})"


def paired_lines(pairs, titles):
    lines = []
    for name, by_key in pairs.items():
        for key, summary in by_key.items():
            ratio = summary["ratio"]
            ratio_text = "–" if ratio is None else stats.format_interval(ratio, scale=1)
            lines.append(
                f"- {METHODS[name].label} / OpenCLIP, {titles.get(key, key)} at equal samples "
                f"(final checkpoint, paired by seed, {seed_count(len(summary['seeds']))}): "
                f"**{ratio_text}×**; per seed "
                f"{', '.join('–' if r is None else f'{r:.2f}' for r in summary['ratios'])}. "
                f"Samples to reach OpenCLIP's final value (interpolated, fraction of its "
                f"samples): {reach_text(summary)}.")
    return lines


def seeds_on_disk(out_dir, settings):
    from demo.study import run_dir_of

    batch_dir = run_dir_of(out_dir, settings, 0, "x").parent.parent
    return {int(p.name[4:]) for p in batch_dir.glob("seed*") if p.name[4:].isdigit()}


def methods_on_disk(out_dir, settings):
    """The methods with a run directory at this batch, in the method table's order."""
    from demo.study import run_dir_of

    batch_dir = run_dir_of(out_dir, settings, 0, "x").parent.parent
    found = {p.name for p in batch_dir.glob("seed*/*") if p.is_dir()}
    return [name for name in METHODS if name in found]


def write_study(out_dir, settings, manifest, names, seeds, jobs):
    """Rewrite the study's files from the complete runs; -> study.md."""
    from demo.study import collect, columns_of, study_record, summarise, write_json

    out_dir = Path(out_dir)
    columns = columns_of(manifest)
    # every complete seed and method on disk: a batch curve with fewer seeds or methods never
    # shrinks a study's summary
    seeds = sorted(set(seeds) | seeds_on_disk(out_dir, settings))
    names = list(names) + [n for n in methods_on_disk(out_dir, settings) if n not in names]
    runs = collect(out_dir, settings, names, seeds)
    if not runs:
        return None
    finals, pairs, bands = summarise(runs, columns)
    titles = {key: title for key, title, _, _ in columns}
    suffix = f"_b{settings.batch_size}"
    plot_bands({METHODS[n].label: bands[n] for n in runs}, out_dir / f"study_curves{suffix}.png",
               columns)
    lines = [f"# Study: {seed_count(len(seeds))}, global batch {settings.batch_size}", "",
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


CURVE_KEYS = (("mean_r1", "concept mean R@1"), ("style_mean_r1", "style mean R@1"))


def batch_rows(out_dir, settings, names, seeds, batches):
    """Per batch with complete runs: the seeds, each method's final value and v3 / OpenCLIP for
    the concept and (on the pool) style held-out sets."""
    from demo.evaluate import POOL_COLUMNS
    from demo.study import collect, summarise

    found = []
    for batch in batches:
        runs = collect(out_dir, replace(settings, batch_size=batch), names, seeds)
        if runs:
            finals, pairs, _ = summarise(runs, POOL_COLUMNS)
            found.append((batch, runs, finals, pairs))
    return found


def write_batch_curve(out_dir, settings, names, seeds, batches):
    """One row per global batch: each method's final held-out mean R@1 and v3 / OpenCLIP."""
    from demo.study import write_json

    out_dir = Path(out_dir)
    found = batch_rows(out_dir, settings, names, seeds, batches)
    keys = [(k, t) for k, t in CURVE_KEYS if any(k in f.get(n, {}) for _, _, f, _ in found
                                                 for n in names)]
    rows, record, ratios = [], [], {key: [] for key, _ in keys}
    for batch, runs, finals, pairs in found:
        row, entry = [batch], {"batch": batch, "seeds": {n: sorted(r) for n, r in runs.items()}}
        for key, _ in keys:
            pair = pairs.get("fastclip-v3", {}).get(key)
            ratio = pair["ratio"] if pair else None
            row += [stats.format_interval(finals[n].get(key)) if n in finals else "–"
                    for n in names] + [stats.format_interval(ratio, scale=1)]
            entry[key] = {n: asdict(f[key]) for n, f in finals.items() if key in f}
            entry[f"{key}_ratio"] = ratio and asdict(ratio)
            ratios[key].append((batch, ratio, pair["ratios"] if pair else []))
        rows.append(row)
        record.append(entry)
    header = ["global batch"] + [c for _, title in keys for c in
                                 [f"{METHODS[n].label} {title}" for n in names] +
                                 [f"v3 / OpenCLIP {title}"]]
    (out_dir / "batch_curve.md").write_text(
        f"# Batch-size curve ({seed_count(len(seeds))})\n\n{markdown_table(header, rows)}\n")
    write_json(out_dir / "batch_curve.json", record)
    plot_batch_ratios(out_dir / "batch_curve.png", ratios, dict(keys))
    return out_dir / "batch_curve.md"


def plot_batch_ratios(path, ratios, titles):
    """Mean ratio per batch with each seed's ratio as a dot (with two or three seeds the t
    interval is too wide to read, the seeds themselves are not); the axis spans the seeds."""
    import matplotlib.pyplot as plt

    shown = {key: [(b, r, seeds) for b, r, seeds in pts if r is not None]
             for key, pts in ratios.items()}
    if not any(shown.values()):
        return
    fig, axis = plt.subplots(figsize=(5, 3.5), constrained_layout=True)
    for offset, (key, pts) in zip((0.97, 1.03), shown.items()):
        if pts:
            line, = axis.plot([b for b, _, _ in pts], [r.mean for _, r, _ in pts], marker="o",
                              label=f"{titles[key]} (mean)")
            dots = [(b * offset, v) for b, _, seeds in pts for v in seeds
                    if v is not None and v == v and v != float("inf")]
            axis.scatter([b for b, _ in dots], [v for _, v in dots], s=12, alpha=0.6,
                         color=line.get_color())
    axis.axhline(1.0, color="grey", lw=0.8)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("global batch")
    axis.set_ylabel("FastCLIP-v3 / OpenCLIP, final R@1")
    axis.set_title("dots: one seed each", fontsize=9)
    axis.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
