"""`make bench`'s code paths with minimal repeats (no timing assertions)."""
import json
import sys

from trainer_utils import REPO

sys.path.insert(0, str(REPO / "tools"))
import bench  # noqa: E402


def test_step_time_and_memory_figures(tmp_path):
    results = bench.main(["--quick", "--figures", "step_time,state_memory",
                          "--out", str(tmp_path / "results.json")])
    step = results["step_time"]
    assert set(step["whole_step_s"]) == {"openclip", "fastclip-v3"}
    assert set(step["loss_alone_s"]) == {"openclip", "fastclip-v3", "fastclip-v2"}
    assert step["whole_step_ratio_v3"] > 0 and step["loss_alone_ratio_v2"] > 0
    rows = results["state_memory"]["per_rank"]
    # float32 columns: log u for both sides; v2 adds τ, Adam's two moments and its count per side
    assert rows["LAION-400M/global-tau"]["reported_bytes"] == 414_080_000 * 2 * 4
    assert rows["LAION-400M/individual-tau"]["reported_bytes"] == 414_080_000 * 10 * 4
    for kind in ("global-tau", "individual-tau"):
        row = rows[f"CC3M/{kind}"]
        assert 0.9 < row["measured_rss_growth_bytes"] / row["reported_bytes"] < 1.1
    assert json.loads((tmp_path / "results.json").read_text()).keys() == results.keys()


def test_communication_figure_counts_both_methods():
    figure = bench.figure_communication(quick=True)
    fast, base = figure["fastclip_v3"], figure["openclip"]
    # the default layout at 2 ranks is sharded: the feature and scalar all-gathers, plus the
    # all-to-all that brings each rank the old rows its anchors' owners hold
    assert fast["loss_collectives_per_step"] == {"all_gather": 2, "all_to_all": 1}
    assert fast["gradients_bytes_per_step"] == base["gradients_bytes_per_step"] > 0
    assert 0 < figure["loss_ratio_fastclip_over_openclip"] < 1


def test_demo_quality_figure_reads_the_demos_comparison(tmp_path):
    comparison = {"metric": "mean_r1", "ratio_final": 1.1, "fraction_to_reach": 0.75,
                  "baseline_final": 0.2}
    (tmp_path / "results.json").write_text(json.dumps({"comparison": comparison}))
    figure = bench.figure_demo_quality(quick=False, results=tmp_path / "results.json")
    assert figure["r1_ratio_at_final_samples"] == 1.1
    assert figure["fraction_of_samples_to_reach_baseline_final"] == 0.75
    assert figure["source"].startswith("recorded demo")


def test_sharded_state_memory_figure_measures_one_block_per_rank():
    figure = bench.bench_shards.figure_state_memory_sharded(data_size=1_000_000)
    rows = figure["per_rank"]
    for world in (1, 2, 4):
        sharded = rows[f"K={world}/sharded"]
        assert sharded["reported_bytes"] == -(-1_000_000 // world) * 10 * 4   # v2: 10 columns
        assert 0.9 < sharded["measured_rss_growth_bytes"] / sharded["reported_bytes"] < 1.1
        assert rows[f"K={world}/replicated"]["reported_bytes"] == 1_000_000 * 10 * 4
