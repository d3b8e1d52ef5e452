"""End to end: a checkpoint written by the trainer (tiny model) loads, evaluates and is reported."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import open_clip_patch  # noqa: F401  registers fastclip-tiny-vit
from eval import datacomp, report, retrieval
from eval.model import load_model
from eval.wds_sets import write_classification_set, write_retrieval_set, write_winogavil_set

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model is faster on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from open_clip_train.main import main as train

    logs = tmp_path_factory.mktemp("logs")
    train(["--dataset-type", "synthetic", "--train-num-samples", "16", "--batch-size", "4",
           "--epochs", "1", "--model", "fastclip-tiny-vit", "--logs", str(logs), "--name", "x",
           "--workers", "0", "--device", "cpu", "--save-frequency", "1"])
    return logs / "x"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    digits = load_digits()
    images = [Image.fromarray((x * 255 / 16).astype(np.uint8)) for x in digits.images[:40]]
    labels = digits.target[:40]
    root = tmp_path_factory.mktemp("datacomp")
    write_classification_set(root / "wds_mnist_test", images, labels, NAMES,
                             ["a photo of the number {c}.", "a digit {c}."])
    write_classification_set(root / "wds_wilds-fmow_test", images, labels, NAMES, ["a {c}."],
                             metadata=[[i % 3, i % 2, y] for i, y in enumerate(labels)])
    captions = [[f"a photo of the digit {y}", f"a handwritten {NAMES[y]}"] for y in labels]
    write_retrieval_set(root / "wds_flickr30k_test", images, captions)
    write_winogavil_set(root / "wds_winogavil_test", ["seven", "eight"],
                        [images[:5], images[10:20]], [[0, 2], [1, 4, 5]])
    # a FairFace-style set: objective-prefixed names and prompts, [age, gender, race, race_binary]
    faces = [f"race:{n}" for n in ("Black", "White", "Indian")] + ["gender:male", "gender:female"]
    faces += [f"age:{n}" for n in ("young", "old")] + [f"toxic:{n}" for n in ("person", "thing")]
    write_classification_set(root / "wds_fairface_test", images, [0] * len(images), faces,
                             ["race:a photo of a {c} person.", "gender:a photo of a {c}.",
                              "age:a photo of a {c} person.", "toxic:a photo of a {c}."],
                             metadata=[[i % 2, i % 2, i % 3, int(i % 3 != 1)]
                                       for i in range(len(images))])
    return root


def test_trainer_checkpoint_runs_datacomp_tasks_end_to_end(run_dir, data_dir, capsys):
    checkpoint = run_dir / "checkpoints" / "epoch_1.pt"
    tasks = ["mnist", "wilds/fmow", "retrieval/flickr_1k_test_image_text_retrieval",
             "misc/winogavil"]
    summary = datacomp.main(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir),
                             "--tasks", *tasks, "--device", "cpu", "--workers", "0",
                             "--batch-size", "16"])
    out_dir = run_dir / "eval" / "epoch_1"
    records = [json.loads(line) for line in (out_dir / "datacomp_results.jsonl").open()]
    assert [r["key"] for r in records] == tasks
    for record in records:
        assert 0.0 <= record["main_metric"] <= 1.0, record
    assert records[1]["main_metric"] == records[1]["metrics"]["acc_worst_region"]
    assert records[2]["main_metric"] == pytest.approx(
        (records[2]["metrics"]["image_retrieval_recall@1"]
         + records[2]["metrics"]["text_retrieval_recall@1"]) / 2)
    info = records[0]["info"]
    assert (info["model"], info["epoch"], info["samples_seen"]) == ("fastclip-tiny-vit", 1, 16)
    assert summary["partial"] and summary["headline"]["datacomp_average"]["n"] == 4
    assert "PARTIAL" in capsys.readouterr().out

    # FairFace runs when asked for (or present, with no --tasks) and stays out of the average
    with_faces = datacomp.main(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir),
                                "--tasks", *tasks, "fairness/fairface", "--device", "cpu",
                                "--workers", "0", "--output-dir", str(run_dir / "faces")])
    assert with_faces["headline"] == summary["headline"]
    faces = with_faces["fairness"]["fairness/fairface"]
    assert 0 <= faces["acc_race_avg"] <= 1 and faces["acc_race_wg"] <= faces["acc_race_avg"]
    assert {"acc_gender_x_wg", "toxicity_crime_avg", "acc_age_race_binary:1"} <= set(faces)
    capsys.readouterr()

    again = datacomp.main(["--checkpoint", str(checkpoint), "--data-dir", str(data_dir),
                           "--tasks", *tasks, "--device", "cpu", "--workers", "0"])
    assert capsys.readouterr().out.count("[cached]") == 4 and again == summary

    retrieval.main(["--checkpoint", str(checkpoint), "--data", str(data_dir / "wds_flickr30k_test"),
                    "--device", "cpu", "--workers", "0", "--name", "digits"])
    saved = json.loads((out_dir / "retrieval_summary.json").read_text())
    assert saved["tasks"]["digits"] == pytest.approx(records[2]["main_metric"])

    path = report.main(["--run", f"baseline={run_dir}", "--run", f"fastclip-v3={out_dir}",
                        "--output-dir", str(run_dir / "report")])
    text = path.read_text()
    assert "Δ fastclip-v3 − baseline" in text and "DataComp average (38 tasks)" in text
    assert "(4/38)" in text and "| +0.00 |" in text and "| MNIST |" in text
    for png in ("datacomp_average.png", "retrieval.png"):
        assert (run_dir / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_prefixed_checkpoint_with_extra_state_loads(run_dir, tmp_path):
    checkpoint = run_dir / "checkpoints" / "epoch_1.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["state_dict"] = {f"module.{k}": v for k, v in state["state_dict"].items()}
    state["fastclip"] = {"u": torch.zeros(16), "step": 4}
    (tmp_path / "checkpoints").mkdir()
    prefixed = tmp_path / "checkpoints" / "epoch_1.pt"
    torch.save(state, prefixed)
    with pytest.raises(ValueError, match="no --model given"):
        load_model(prefixed)
    a = load_model(checkpoint)
    b = load_model(prefixed, model_name="fastclip-tiny-vit", samples_per_epoch=100)
    tokens = a.tokenizer(["a photo of the digit 3"])
    with torch.no_grad():
        assert torch.equal(a.model.encode_text(tokens), b.model.encode_text(tokens))
    assert b.info["samples_seen"] == 100 and b.info["epoch"] == 1


def test_siglip_checkpoint_loads_with_its_trained_bias(tmp_path):
    """A --siglip run's model has a logit_bias a CLIP model lacks; load_model builds one and
    takes every weight, the bias included, from the checkpoint."""
    from open_clip_train.main import main as train

    train(["--dataset-type", "synthetic", "--train-num-samples", "8", "--batch-size", "4",
           "--epochs", "1", "--model", "fastclip-tiny-vit", "--logs", str(tmp_path), "--name",
           "sig", "--workers", "0", "--device", "cpu", "--save-frequency", "1", "--siglip"])
    checkpoint = tmp_path / "sig" / "checkpoints" / "epoch_1.pt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    saved = {k.removeprefix("module."): v for k, v in saved.items()}
    loaded = load_model(checkpoint).model.state_dict()
    assert "logit_bias" in saved and set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
