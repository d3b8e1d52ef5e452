"""The two figures the demo is about, from the runs' evaluation points.

1. held-out retrieval mean R@1, challenger / baseline, at equal samples seen (goal ≥ 1.2×);
2. the samples the challenger needs to reach the baseline's final R@1, as a fraction of the
   baseline's (checkpoint granularity; goal ≤ 0.5).

A run is ``{"points": [{"epoch", "samples_seen", <metric>: value}, ...]}`` (demo/evaluate.py).
"""
import math


def ratio_at_equal_samples(points, baseline_points, key="mean_r1"):
    """{samples seen: method / baseline} at every checkpoint both runs have."""
    baseline = {p["samples_seen"]: p[key] for p in baseline_points}
    return {p["samples_seen"]: (p[key] / baseline[p["samples_seen"]]
                                if baseline[p["samples_seen"]] else math.inf)
            for p in points if p["samples_seen"] in baseline}


def samples_to_reach(points, target, key="mean_r1"):
    """Samples seen at the first checkpoint whose metric reaches target (None if none does)."""
    for point in points:
        if point[key] >= target:
            return point["samples_seen"]
    return None


def comparison(runs, baseline="openclip", challenger="fastclip-v3", key="mean_r1"):
    """The two figures, or {} when either run is missing."""
    if baseline not in runs or challenger not in runs:
        return {}
    base, challenger_points = runs[baseline]["points"], runs[challenger]["points"]
    ratios = ratio_at_equal_samples(challenger_points, base, key)
    final_samples = base[-1]["samples_seen"]
    reached = samples_to_reach(challenger_points, base[-1][key], key)
    return {"baseline": baseline, "challenger": challenger, "metric": key,
            "ratio_final": ratios.get(final_samples), "ratios": ratios,
            "baseline_final": base[-1][key], "baseline_final_samples": final_samples,
            "samples_to_reach": reached,
            "fraction_to_reach": None if reached is None else reached / final_samples}


def recall_standard_error(recall, queries):
    """Binomial standard error of one recall@k measured over `queries` independent queries."""
    return math.sqrt(recall * (1 - recall) / queries)
