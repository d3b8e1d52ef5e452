"""curves.png: the demo's held-out metrics against samples seen, one line per method; the study's
curves with a band per method (mean ± 95% CI over seeds at each checkpoint)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Panels in order of preference; a figure shows the first four its columns have.
PANEL_KEYS = ("mean_r1", "style_mean_r1", "emoji_mean_r1", "icons_mean_r1", "i2t_r5", "t2i_r5",
              "zeroshot_top1")


def panels(columns):
    titles = {key: title for key, title, _, _ in columns}
    return [(key, f"held-out {titles[key]} (%)") for key in PANEL_KEYS if key in titles][:4]


def _axes():
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    return fig, axes.flat


def _finish(fig, axes, path):
    for axis in axes:
        axis.set_xlabel("samples seen")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(runs, path, columns):
    """Four panels; ``runs`` as demo/report.py collects them."""
    fig, axes = _axes()
    axes = list(axes)
    for axis, (key, title) in zip(axes, panels(columns)):
        for run in runs.values():
            xy = [(p["samples_seen"], 100 * p[key]) for p in run["points"] if p[key] is not None]
            if xy:
                axis.plot(*zip(*xy), marker="o", markersize=3, label=run["label"])
        axis.set_title(title)
    _finish(fig, axes, path)


def plot_bands(curves, path, columns):
    """``curves``: {label: {key: [(samples, Interval), ...]}} -> mean lines with CI bands."""
    import math

    fig, axes = _axes()
    axes = list(axes)
    for axis, (key, title) in zip(axes, panels(columns)):
        for label, by_key in curves.items():
            points = by_key.get(key) or []
            if not points:
                continue
            x = [samples for samples, _ in points]
            mean = [100 * i.mean for _, i in points]
            half = [0.0 if math.isnan(i.half_width) else 100 * i.half_width for _, i in points]
            line, = axis.plot(x, mean, marker="o", markersize=3, label=label)
            axis.fill_between(x, [m - h for m, h in zip(mean, half)],
                              [m + h for m, h in zip(mean, half)], color=line.get_color(),
                              alpha=0.2)
        axis.set_title(title)
    _finish(fig, axes, path)
