"""The study's statistics over seeds: mean ± 95% CI, the ratio at equal samples, samples-to-match.

Every figure is computed per seed first and then summarised over seeds with a Student t
interval (``t_{0.975, n-1} · s / √n``), because the seed moves the initialisation, the data order
and so the whole curve: seeds are the independent replicates, checkpoints within one run are not.
Runs of two methods with the same seed share the data order and initial weights, so the ratio
and samples-to-match pair them by seed. A run is a list of points ``{"samples_seen", key: value}``
in checkpoint order (demo/evaluate.py's ``read_run_points``).
"""
import math
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float   # nan for a single value (no spread to estimate)
    n: int

    @property
    def low(self):
        return self.mean - self.half_width

    @property
    def high(self):
        return self.mean + self.half_width


def mean_ci(values, confidence=0.95):
    """Mean and Student-t half width of ``values`` (independent replicates, e.g. seeds)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    t = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)
    return Interval(mean, t * math.sqrt(variance / n), n)


def value_at(points, samples, key):
    """The metric at exactly ``samples`` seen (a checkpoint both runs have), else None."""
    return next((p[key] for p in points if p["samples_seen"] == samples), None)


def ratio_at_equal_samples(challenger, baseline, key="mean_r1", samples=None):
    """challenger / baseline at ``samples`` seen (default: the baseline's last checkpoint)."""
    samples = baseline[-1]["samples_seen"] if samples is None else samples
    top, bottom = value_at(challenger, samples, key), value_at(baseline, samples, key)
    if top is None or bottom is None:
        return None
    return math.inf if bottom == 0 else top / bottom


def samples_to_match(challenger, target, key="mean_r1"):
    """Samples at which the challenger's curve first reaches ``target``, linear between
    checkpoints and from (0 samples, 0) before the first; None if it never does."""
    previous_samples, previous_value = 0, 0.0
    for point in challenger:
        samples, value = point["samples_seen"], point[key]
        if value >= target:
            if value == previous_value:
                return samples
            share = (target - previous_value) / (value - previous_value)
            return previous_samples + max(0.0, share) * (samples - previous_samples)
        previous_samples, previous_value = samples, value
    return None


def fraction_to_match(challenger, baseline, key="mean_r1"):
    """samples_to_match(challenger, baseline's final value) / baseline's final samples."""
    reached = samples_to_match(challenger, baseline[-1][key], key)
    return None if reached is None else reached / baseline[-1]["samples_seen"]


def paired_summary(challenger_runs, baseline_runs, key="mean_r1"):
    """{seed: ...} of both methods -> the ratio and fraction-to-match over the shared seeds."""
    seeds = sorted(set(challenger_runs) & set(baseline_runs))
    ratios = [ratio_at_equal_samples(challenger_runs[s], baseline_runs[s], key) for s in seeds]
    fractions = [fraction_to_match(challenger_runs[s], baseline_runs[s], key) for s in seeds]
    reached = [f for f in fractions if f is not None]
    finite = [r for r in ratios if r is not None and math.isfinite(r)]
    return {"seeds": seeds, "ratios": ratios, "fractions": fractions,
            "ratio": mean_ci(finite) if finite else None,
            "fraction": mean_ci(reached) if reached else None,
            "never_reached": len(fractions) - len(reached)}


def format_interval(interval, scale=100.0, digits=2):
    """'12.34 ± 1.05' (×scale); a single seed shows no ± part."""
    if interval is None:
        return "–"
    mean = f"{scale * interval.mean:.{digits}f}"
    if math.isnan(interval.half_width):
        return mean
    return f"{mean} ± {scale * interval.half_width:.{digits}f}"
