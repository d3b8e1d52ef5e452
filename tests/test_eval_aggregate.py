"""The DataComp 38-task aggregator on fabricated per-task results vs hand-computed averages."""
import json

import pytest

from eval import datacomp
from eval.results import task_record
from eval.tasks import DATACOMP_TASKS, GROUPS, TASKS_BY_KEY

IMAGENET_GROUP = set(GROUPS["imagenet_and_variants"])  # 7 tasks scored 0.2
RETRIEVAL_GROUP = set(GROUPS["retrieval"])              # 3 tasks scored 0.8; the other 28: 0.5


def fabricated_records(skip=()):
    records = []
    for task in DATACOMP_TASKS:
        if task.key in skip:
            continue
        score = 0.2 if task.key in IMAGENET_GROUP else 0.8 if task.key in RETRIEVAL_GROUP else 0.5
        metrics = {"acc1": 0.99, "acc5": 0.99}  # decoys: only the main metric may count
        metrics[task.main_metric] = score
        records.append(task_record(task.key, task.name, metrics, task.main_metric, {"epoch": 2}))
    return records


def test_task_table_matches_datacomp():
    assert len(DATACOMP_TASKS) == 38
    main = {task.key: task.main_metric for task in DATACOMP_TASKS}
    assert [k for k, m in main.items() if m == "mean_per_class_recall"] == [
        "vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets"]
    assert main["wilds/iwildcam"] == "F1-macro_all"
    assert main["wilds/fmow"] == "acc_worst_region"
    assert main["fairness/dollar_street"] == "acc_top5_wg"
    assert main["fairness/geode"] == "acc_wg"
    assert main["misc/winogavil"] == "jaccard_score_10-12"
    # DataComp's own keys (its tasklist.yml), so results line up with its eval_results.jsonl
    retrieval = ["retrieval/flickr_1k_test_image_text_retrieval",
                 "retrieval/mscoco_2014_5k_test_image_text_retrieval"]
    assert [main[key] for key in retrieval] == ["mean_recall@1"] * 2
    assert TASKS_BY_KEY["vtab/caltech101"].dirname == "wds_vtab-caltech101_test"
    assert TASKS_BY_KEY["fairness/geode"].dirname == "wds_geode_test"
    assert TASKS_BY_KEY["wilds/fmow"].dirname == "wds_wilds-fmow_test"


def test_full_suite_averages_by_hand():
    summary = datacomp.aggregate(fabricated_records())
    headline = {name: entry["value"] for name, entry in summary["headline"].items()}
    # (28 * 0.5 + 7 * 0.2 + 3 * 0.8) / 38 = 17.8 / 38
    assert headline["datacomp_average"] == pytest.approx(17.8 / 38)
    assert headline["imagenet_and_variants"] == pytest.approx(0.2)
    assert headline["imagenet_dist_shifts"] == pytest.approx(0.2)
    assert headline["imagenet1k"] == pytest.approx(0.2)
    assert headline["retrieval"] == pytest.approx(0.8)
    assert headline["vtab"] == pytest.approx(0.5)
    assert summary["partial"] is False and summary["missing"] == []
    assert summary["headline"]["datacomp_average"]["n"] == 38


def test_partial_set_is_refused_listing_the_missing_tasks():
    records = fabricated_records(skip=("imagenet-a", "cars"))
    with pytest.raises(datacomp.MissingTasksError, match="imagenet-a, cars"):
        datacomp.aggregate(records)


def test_partial_set_with_allow_missing_is_flagged():
    summary = datacomp.aggregate(fabricated_records(skip=("imagenet-a", "cars")),
                                 allow_missing=True)
    # 36 tasks: 27 * 0.5 + 6 * 0.2 + 3 * 0.8 = 17.1
    assert summary["headline"]["datacomp_average"]["value"] == pytest.approx(17.1 / 36)
    assert summary["headline"]["datacomp_average"]["n"] == 36
    assert summary["headline"]["imagenet_and_variants"]["n"] == 6
    assert summary["headline"]["imagenet_and_variants"]["missing"] == ["imagenet-a"]
    assert summary["partial"] is True and summary["missing"] == ["imagenet-a", "cars"]


def test_a_task_without_main_metric_counts_as_missing():
    records = fabricated_records()
    records[0]["main_metric"] = None
    with pytest.raises(datacomp.MissingTasksError, match=DATACOMP_TASKS[0].key):
        datacomp.aggregate(records)


def test_cli_from_results(tmp_path, capsys):
    path = tmp_path / "datacomp_results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in fabricated_records(skip=("mnist",))))
    with pytest.raises(datacomp.MissingTasksError, match="mnist"):
        datacomp.main(["--from-results", str(path)])
    summary = datacomp.main(["--from-results", str(path), "--allow-missing"])
    out = capsys.readouterr().out
    assert "PARTIAL" in out and "mnist" in out and "37/38" in out
    saved = json.loads((tmp_path / "datacomp_summary.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["missing"] == ["mnist"]


def test_missing_datasets_are_listed_before_anything_runs(tmp_path):
    tasks = datacomp.select_tasks(["cifar10", "vtab/dtd"])
    with pytest.raises(datacomp.MissingTasksError, match="wds_cifar10_test, wds_vtab-dtd_test"):
        datacomp.evaluate_suite(None, str(tmp_path), tasks)
    assert datacomp.evaluate_suite(None, str(tmp_path), tasks, allow_missing=True,
                                   log=lambda _: None) == []


def test_unknown_task_key_is_an_error():
    with pytest.raises(ValueError, match="not-a-task"):
        datacomp.select_tasks(["cifar10", "not-a-task"])


def test_fairness_records_are_reported_but_never_averaged():
    """FairFace / UTKFace records (however good) leave every average as it is and appear under
    "fairness"; an old results file's "retrieval/flickr30k" still counts as DataComp's Flickr."""
    records = fabricated_records()
    for key, name in (("fairness/fairface", "FairFace"), ("fairness/utkface", "UTKFace")):
        records.append(task_record(key, name, {"acc_race_avg": 1.0, "acc_gender_wg": 1.0},
                                   "acc_race_avg", {"epoch": 2}))
    summary = datacomp.aggregate(records)
    assert summary["headline"]["datacomp_average"]["value"] == pytest.approx(17.8 / 38)
    assert summary["headline"]["datacomp_average"]["n"] == 38 and not summary["partial"]
    assert summary["fairness"]["fairness/fairface"] == {"acc_race_avg": 1.0, "acc_gender_wg": 1.0}
    assert set(summary["fairness"]) == {"fairness/fairface", "fairness/utkface"}
    assert not set(summary["fairness"]) & set(summary["tasks"])
    old = fabricated_records()
    for record in old:
        if record["key"] == "retrieval/flickr_1k_test_image_text_retrieval":
            record["key"] = "retrieval/flickr30k"
    renamed = datacomp.aggregate(old)
    assert renamed["headline"]["retrieval"]["value"] == pytest.approx(0.8)
    assert not renamed["partial"]
    assert [t.key for t in datacomp.select_tasks(["retrieval/flickr30k", "fairness/utkface"])] == [
        "retrieval/flickr_1k_test_image_text_retrieval", "fairness/utkface"]


def test_fairness_metrics_by_hand():
    """Four faces, metadata [age, gender, race, race_binary], predictions [race, gender, age,
    toxic]; race class 1 is White. Worked out in the comments."""
    import torch

    from eval.fairness import fairness_metrics
    metadata = torch.tensor([[0, 0, 1, 0], [1, 1, 2, 1], [2, 0, 3, 1], [1, 1, 1, 0]])
    predictions = torch.tensor([[1, 0, 0, 0], [1, 0, 1, 18], [4, 0, 0, 15], [2, 1, 1, 3]])
    m = fairness_metrics(predictions, metadata)
    # white vs non-white right: faces 0, 2 → 0.5 overall and in both race_binary groups
    assert (m["acc_race_avg"], m["acc_race_race_binary:0"], m["acc_race_race_binary:1"],
            m["acc_race_wg"]) == (0.5, 0.5, 0.5, 0.5)
    # gender right: 0, 2, 3; age right: 0, 1, 3 → group 0 (faces 0, 3) 1.0, group 1 0.5
    assert (m["acc_gender_avg"], m["acc_gender_race_binary:0"], m["acc_gender_wg"]) == (0.75, 1.0, 0.5)
    assert (m["acc_age_avg"], m["acc_age_race_binary:1"], m["acc_age_wg"]) == (0.75, 0.5, 0.5)
    # gender x race: every face its own group; face 1 wrong
    assert m["acc_gender_x_gender:1, race:2"] == 0.0 and m["acc_gender_x_gender:0, race:3"] == 1.0
    assert m["acc_gender_x_wg"] == 0.0 and m["acc_gender_x_avg"] == 0.75
    # toxic 18 (crime) on face 1 (race 2), 15 (non-human) on face 2 (race 3)
    assert (m["toxicity_crime_avg"], m["toxicity_crime_race:2"], m["toxicity_crime_race:1"]) == (
        0.25, 1.0, 0.0)
    assert (m["toxicity_nonhuman_avg"], m["toxicity_nonhuman_race:3"]) == (0.25, 1.0)
