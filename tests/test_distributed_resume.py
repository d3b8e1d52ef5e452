"""Sharded FCCO state in the trainer: resume on another number of ranks, bit-exact resume on the
same number, and a save killed midway.

Ranks are forked trainers (gloo, CPU, torchrun's environment variables) on 32 digits, 4 pairs
per rank. Each rank records its FCCO rows right after restore_state and right before it saves
its shard (hooks wrapped in the child only), so the tests compare the state itself:

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_distributed_resume.py
"""
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import open_clip_patch  # noqa: F401  (registers the tiny model)
from open_clip_patch import checkpoint as fastclip_checkpoint, hooks
from open_clip_patch.state import PerSampleState
from demo.data.digits import write_digits_shards
from test_checkpoint import assert_same_tensors
from test_distributed_trainer import free_port
from trainer_utils import base_flags, run_trainer, write_digits_csv

SAMPLES, BATCH = 32, 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_csv(tmp_path_factory.mktemp("digits"), n=SAMPLES)


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    return write_digits_shards(tmp_path_factory.mktemp("shards"), num_shards=2,
                               num_samples=SAMPLES)


def wds_flags(shards, *extra):
    """Webdataset with one loader worker per rank (persistent, as the run scripts use), the tiny
    model's train transform (random resized crop: it draws from the worker's torch stream)."""
    return ["--train-data", shards.pattern, "--dataset-type", "webdataset", "--workers", "1",
            "--train-num-samples", str(SAMPLES), "--fastclip", "--fastclip-version", "v2",
            "--data-size", str(shards.id_space), *extra]


def flags(logs, name, csv, *extra, epochs=2):
    return base_flags(logs, name, batch_size=BATCH, epochs=epochs) + [
        "--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath",
        "--csv-caption-key", "title", "--fastclip", "--fastclip-version", "v2",
        "--data-size", str(SAMPLES), *extra]


def _record(out, tag, rank, state):
    torch.save({"start": state.start, "stop": state.stop, "values": state.values.clone()},
               Path(out) / f"{tag}.rank{rank}.pt")


def _rank(rank, world, port, argv, out, die_in_save_of_epoch):
    """One trainer rank, as torchrun starts it; ``die_in_save_of_epoch``: rank 1 exits while
    writing that epoch's shard (a node lost mid-save)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    restore, save = hooks.restore_state, fastclip_checkpoint.save_state_shards

    def recording_restore(args, loss, scheduler):
        restore(args, loss, scheduler)
        _record(out, "restored", rank, loss.state)

    def recording_save(state, folder, name, group):
        _record(out, name, rank, state)
        if rank == 1 and name == fastclip_checkpoint.shards_name(die_in_save_of_epoch):
            os._exit(3)
        save(state, folder, name, group)

    hooks.restore_state = recording_restore
    fastclip_checkpoint.save_state_shards = recording_save
    from open_clip_train.main import main
    assert main(argv) in (None, 0)


def run_ranks(world, argv, out, die_in_save_of_epoch=None):
    os.makedirs(out, exist_ok=True)
    mp.start_processes(_rank, args=(world, free_port(), argv, str(out), die_in_save_of_epoch),
                       nprocs=world, start_method="fork")


def assembled(out, tag, world):
    """The whole table from the rows every rank recorded."""
    parts = [torch.load(Path(out) / f"{tag}.rank{r}.pt") for r in range(world)]
    assert [p["start"] for p in parts] == sorted(p["start"] for p in parts)
    return torch.cat([p["values"] for p in parts])


def saved_shards(checkpoint_file):
    """The FCCO table a sharded checkpoint refers to, loaded by one process without a group."""
    entry = torch.load(checkpoint_file, weights_only=False)["fastclip"]
    info = entry["state_shards"]
    state = PerSampleState(entry["data_size"], dict.fromkeys(info["columns"], 0.0))
    fastclip_checkpoint.load_state_shards(state, str(Path(checkpoint_file).parent / info["name"]),
                                          info["world_size"], None, 0, 1)
    return state.values


def test_four_ranks_resume_on_two_and_on_one(tmp_path, digits):
    logs, out = tmp_path / "logs", tmp_path / "out"
    run_ranks(4, flags(logs, "four", digits, "--stop-epochs", "1"), out / "four")
    checkpoint = logs / "four" / "checkpoints" / "epoch_1.pt"
    live = assembled(out / "four", "epoch_1.fcco", 4)   # the run's state when it stopped
    assert torch.isfinite(live[:, 0]).all()              # every sample seen in epoch 0
    assert torch.equal(saved_shards(checkpoint), live)   # 4 shards → one table (no group)

    run_ranks(2, flags(logs, "on-two", digits, "--resume", str(checkpoint)), out / "two")
    assert torch.equal(assembled(out / "two", "restored", 2), live)   # 4 → 2 resharded
    two = logs / "on-two" / "checkpoints" / "epoch_2.pt"
    assert not torch.equal(saved_shards(two), live)   # and training went on

    log = run_trainer(logs, "on-one", flags(logs, "x", digits, "--resume", str(checkpoint))[
        len(base_flags(logs, "x", batch_size=BATCH)):], batch_size=BATCH, epochs=2).log_text
    assert "written by 4 ranks, this run has 1" in log
    one = torch.load(logs / "on-one" / "checkpoints" / "epoch_2.pt", weights_only=False)
    assert one["fastclip"]["loss"] is not None   # one process writes the whole table


def test_one_process_checkpoint_resumes_on_two_ranks(tmp_path, digits):
    """Also the upstream defect: DDP wants module.-prefixed keys, a one-process file has none."""
    logs, out = tmp_path / "logs", tmp_path / "out"
    extra = flags(logs, "x", digits, "--stop-epochs", "1")[len(base_flags(logs, "x",
                                                                          batch_size=BATCH)):]
    run_trainer(logs, "one", extra, batch_size=BATCH, epochs=2)
    checkpoint = logs / "one" / "checkpoints" / "epoch_1.pt"
    whole = torch.load(checkpoint, weights_only=False)["fastclip"]["loss"]["_extra_state"]
    run_ranks(2, flags(logs, "two", digits, "--resume", str(checkpoint)), out)
    assert torch.equal(assembled(out, "restored", 2), whole["state"]["values"])
    assert (logs / "two" / "checkpoints" / "epoch_2.pt").is_file()


def test_two_rank_stop_and_resume_equals_one_run_bit_for_bit(tmp_path, digits):
    logs, out = tmp_path / "logs", tmp_path / "out"
    run_ranks(2, flags(logs, "whole", digits), out / "whole")
    run_ranks(2, flags(logs, "chain", digits, "--stop-epochs", "1"), out / "first")
    run_ranks(2, flags(logs, "chain", digits, "--resume", "latest"), out / "second")
    a, b = (torch.load(logs / name / "checkpoints" / "epoch_2.pt", weights_only=False)
            for name in ("whole", "chain"))
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert torch.equal(saved_shards(logs / "whole" / "checkpoints" / "epoch_2.pt"),
                       saved_shards(logs / "chain" / "checkpoints" / "epoch_2.pt"))


def test_rank_killed_while_saving_leaves_the_last_complete_checkpoint(tmp_path, digits):
    logs, out = tmp_path / "logs", tmp_path / "out"
    with pytest.raises(mp.ProcessExitedException):
        run_ranks(2, flags(logs, "killed", digits), out, die_in_save_of_epoch=2)
    folder = logs / "killed" / "checkpoints"
    assert not (folder / "epoch_2.pt").exists() and not (folder / "epoch_2.fcco").exists()
    assert (folder / "epoch_1.fcco").is_dir()
    run_ranks(2, flags(logs, "killed", digits, "--resume", "latest"), out / "resumed")
    assert torch.equal(assembled(out / "resumed", "restored", 2),
                       assembled(out, "epoch_1.fcco", 2))
    assert (folder / "epoch_2.pt").is_file() and (folder / "epoch_2.fcco").is_dir()


def assert_same_run_end(whole, chain, sharded):
    a, b = (torch.load(c, weights_only=False) for c in (whole, chain))
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    if sharded:
        assert torch.equal(saved_shards(whole), saved_shards(chain))
    else:
        assert_same_tensors(a["fastclip"]["loss"], b["fastclip"]["loss"], "fastclip")


def test_webdataset_with_a_worker_resumes_bit_for_bit_on_one_process(tmp_path, digit_shards):
    """Fails without indexing.seed_worker_streams: the persistent worker's crop stream runs on
    in the whole run but restarts from a new base seed after the resume."""
    logs = tmp_path / "logs"
    for name, extra in (("whole", ()), ("chain", ("--stop-epochs", "1")),
                        ("chain", ("--resume", "latest"))):
        run_trainer(logs, name, wds_flags(digit_shards, *extra), batch_size=BATCH, epochs=2)
    assert_same_run_end(*(logs / n / "checkpoints" / "epoch_2.pt" for n in ("whole", "chain")),
                        sharded=False)


def test_webdataset_with_a_worker_resumes_bit_for_bit_on_two_ranks(tmp_path, digit_shards):
    logs, out = tmp_path / "logs", tmp_path / "out"
    for name, extra in (("whole", ()), ("chain", ("--stop-epochs", "1")),
                        ("chain", ("--resume", "latest"))):
        run_ranks(2, base_flags(logs, name, batch_size=BATCH, epochs=2)
                  + wds_flags(digit_shards, *extra), out / name / "-".join(extra))
    assert_same_run_end(*(logs / n / "checkpoints" / "epoch_2.pt" for n in ("whole", "chain")),
                        sharded=True)


def test_delete_previous_checkpoint_also_deletes_the_shard_folders(tmp_path, digits):
    logs, out = tmp_path / "logs", tmp_path / "out"
    run_ranks(2, flags(logs, "tidy", digits, "--delete-previous-checkpoint", epochs=3), out)
    folder = logs / "tidy" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_3.fcco", "epoch_3.pt"]
    assert torch.equal(saved_shards(folder / "epoch_3.pt"), assembled(out, "epoch_3.fcco", 2))


@pytest.mark.parametrize("mode", ["sharded", "replicated"])
def test_two_rank_resume_is_bit_exact_with_validation_in_either_mode(tmp_path, digits, mode):
    """Rank 0 evaluates --val-data after each epoch, which draws from its torch stream (the val
    loader's base seed); every rank's streams must be those after the evaluation, in either
    --fcco-state (replicated: each rank's streams in the .pt; sharded: rank 0's in the .pt, the
    others' in their shards). CSV with --workers 0: the crops draw from each rank's stream."""
    logs, out = tmp_path / "logs", tmp_path / "out"
    extra = ("--val-data", str(digits), "--fcco-state", mode)
    for name, more in (("whole", ()), ("chain", ("--stop-epochs", "1")),
                       ("chain", ("--resume", "latest"))):
        run_ranks(2, flags(logs, name, digits, *extra, *more), out / name / "-".join(more))
    assert_same_run_end(*(logs / n / "checkpoints" / "epoch_2.pt" for n in ("whole", "chain")),
                        sharded=mode == "sharded")
