"""Checkpoint and resume of all FastCLIP state: bit-exact chains, atomic writes, mismatches."""
import os

import pytest
import torch

from open_clip_patch import checkpoint as fastclip_checkpoint
from open_clip_patch.checkpoint import CheckpointMismatch
from trainer_utils import run_trainer, write_digits_csv


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    return write_digits_csv(tmp_path_factory.mktemp("digits"), n=40)


def csv_flags(csv, *extra):
    # CSV is map-style: its order comes from torch's RNG, which the checkpoint carries.
    return ["--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", *extra]


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{a!r} != {b!r} at {where}"


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_chained_jobs_equal_one_run_bit_for_bit(tmp_path, digits_csv, version):
    flags = csv_flags(digits_csv, "--fastclip", "--fastclip-version", version, "--data-size", "40",
                      "--gamma-decay-epochs", "2")
    whole = run_trainer(tmp_path, "whole", flags, epochs=2)
    run_trainer(tmp_path, "chain", flags + ["--stop-epochs", "1"], epochs=2)
    assert not (tmp_path / "chain" / "checkpoints" / "epoch_2.pt").exists()
    chained = run_trainer(tmp_path, "chain", flags + ["--resume", "latest"], epochs=2)

    assert len(whole.step_losses) == 10
    assert chained.step_losses == whole.step_losses  # job 1's epoch 0, then job 2's epoch 1
    a = torch.load(whole.checkpoint(2), map_location="cpu", weights_only=False)
    b = torch.load(chained.checkpoint(2), map_location="cpu", weights_only=False)
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert_same_tensors(a["fastclip"]["loss"], b["fastclip"]["loss"], "fcco")
    assert a["fastclip"].get("scheduler") == b["fastclip"].get("scheduler")


def test_save_killed_midway_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "epoch_1.pt"
    fastclip_checkpoint.save_atomically({"epoch": 1, "w": torch.arange(4.0)}, path)

    def dying_save(obj, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(fastclip_checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        fastclip_checkpoint.save_atomically({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=False)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == ["epoch_1.pt"]  # no temporary file left behind


SYNTHETIC = ["--dataset-type", "synthetic", "--train-num-samples", "16"]


@pytest.fixture(scope="module")
def v3_checkpoint(tmp_path_factory):
    logs = tmp_path_factory.mktemp("v3")
    result = run_trainer(logs, "v3", SYNTHETIC + ["--fastclip", "--fastclip-version", "v3"])
    return result.checkpoint(1)


@pytest.mark.parametrize("flags, message", [
    (["--fastclip", "--fastclip-version", "v3", "--data-size", "32"],
     "holds FCCO state for --data-size 16, this run has --data-size 32"),
    (["--fastclip", "--fastclip-version", "v1"],
     "was written by FastCLIP v3, this run is --fastclip-version v1"),
])
def test_mismatched_checkpoint_is_refused(tmp_path, v3_checkpoint, flags, message):
    with pytest.raises(CheckpointMismatch, match=message.replace("-", "\\-")):
        run_trainer(tmp_path, "resume", SYNTHETIC + flags + ["--resume", str(v3_checkpoint)],
                    epochs=2)


def test_missing_fcco_state_is_refused_unless_fresh_is_asked(tmp_path):
    # a FastCLIP-v1 checkpoint whose FCCO state was stripped (e.g. by an external tool)
    path = run_trainer(tmp_path, "v1", SYNTHETIC + ["--fastclip", "--fastclip-version", "v1"]
                       ).checkpoint(1)
    stripped = torch.load(path, map_location="cpu", weights_only=False)
    del stripped["fastclip"]
    torch.save(stripped, tmp_path / "stripped.pt")
    flags = SYNTHETIC + ["--fastclip", "--fastclip-version", "v1",
                         "--resume", str(tmp_path / "stripped.pt")]
    with pytest.raises(CheckpointMismatch, match="has no FastCLIP state"):
        run_trainer(tmp_path, "resume", flags, epochs=2)
    result = run_trainer(tmp_path, "fresh", flags + ["--fcco-state-fresh"], epochs=2)
    assert "--fcco-state-fresh given" in result.log_text
    assert len(result.step_losses) == 2  # epoch 1 only
