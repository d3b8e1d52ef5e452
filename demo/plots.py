"""curves.png: the demo's held-out metrics against samples seen, one line per method."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (("mean_r1", "held-out retrieval mean R@1 (%)"),
          ("i2t_r5", "held-out I→T R@5 (%)"), ("t2i_r5", "held-out T→I R@5 (%)"),
          ("zeroshot_top1", "held-out zero-shot top-1 (%)"))


def plot_curves(runs, path):
    """Four panels (PANELS); ``runs`` as demo/report.py collects them."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for axis, (key, title) in zip(axes.flat, PANELS):
        for run in runs.values():
            xy = [(p["samples_seen"], 100 * p[key]) for p in run["points"] if p[key] is not None]
            axis.plot(*zip(*xy), marker="o", markersize=3, label=run["label"])
        axis.set_title(title)
        axis.set_xlabel("samples seen")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
