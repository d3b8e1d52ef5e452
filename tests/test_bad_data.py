"""Bad data stops with one line or is counted (issue #17), through the trainer on tiny data.

    python -m pytest -q tests/test_bad_data.py
"""
import re
import tarfile

import pytest

from demo.data.digits import write_digits_shards
from open_clip_patch.indexing import NoValidSamples
from trainer_utils import run_trainer


def empty_tars(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        with tarfile.open(folder / f"{number:05d}.tar", "w"):
            pass
    return str(folder / f"{{00000..{count - 1:05d}}}.tar")


def wds(pattern, num_samples, *extra):
    return ["--train-data", pattern, "--dataset-type", "webdataset",
            "--train-num-samples", str(num_samples), *extra]


@pytest.mark.timeout(30)   # the spinning cases: seconds, not a hang
@pytest.mark.parametrize("workers", ["0", "1"])
def test_every_id_out_of_range_and_skipped_stops_naming_the_shard(tmp_path, caplog, workers):
    shards = write_digits_shards(tmp_path / "d", num_shards=2, num_samples=40)
    second = str(shards.paths[1])   # ids 10000.. all lie outside --data-size 5000
    with pytest.raises(NoValidSamples) as stop:
        run_trainer(tmp_path, "spin", wds(second, 64, "--fastclip", "--data-size", "5000",
                                          "--skip-invalid-ids", "--workers", workers))
    line = str(stop.value).splitlines()[-1] if workers == "1" else str(stop.value)
    assert "no valid training sample: a whole pass" in line and second in line
    skipped = int(re.search(r"(\d+) skipped for invalid ids", line).group(1))
    assert skipped == 20   # every sample of the shard, counted once per pass
    warnings = [r for r in caplog.records if "Skipp" in r.getMessage()]
    assert len(warnings) <= 1   # rate-limited: the first skip, then one line per 1000


@pytest.mark.timeout(30)   # the spinning cases: seconds, not a hang
@pytest.mark.parametrize("method, resampled", [("openclip", False), ("fastclip", False),
                                               ("openclip", True), ("fastclip", True)])
def test_only_empty_tars_stop_instead_of_waiting_forever(tmp_path, method, resampled):
    pattern = empty_tars(tmp_path / "empty")
    flags = wds(pattern, 32, "--data-size", "100") + (["--fastclip"] if method == "fastclip" else [])
    flags += ["--dataset-resampled"] if resampled else []
    with pytest.raises(NoValidSamples) as stop:
        run_trainer(tmp_path, "empty", flags)
    text = str(stop.value)
    assert "00000.tar" in text
    assert ("shards in a row held no sample" if resampled else "a whole pass") in text


# ---- checkpoint files and exits (item 4) ----------------------------------------------------
SYNTHETIC = ["--dataset-type", "synthetic", "--train-num-samples", "16"]


@pytest.mark.timeout(300)
def test_partial_saves_are_removed_and_a_truncated_newest_checkpoint_falls_back(tmp_path):
    """A kill mid-save leaves .epoch_N.pt.*.tmp; a truncated epoch_2.pt must not stop
    --resume latest: it resumes epoch_1.pt and continues exactly as the uninterrupted run."""
    flags = SYNTHETIC + ["--fastclip", "--fastclip-version", "v3"]
    whole = run_trainer(tmp_path, "whole", flags, epochs=3)
    run_trainer(tmp_path, "chain", flags + ["--stop-epochs", "2"], epochs=3)
    folder = tmp_path / "chain" / "checkpoints"
    newest = folder / "epoch_2.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])   # truncated
    partial = [folder / ".epoch_3.pt.k1ll3d.tmp", folder / ".epoch_2.pt.a8c0x1.tmp"]
    for path in partial:
        path.write_bytes(b"partial")
    resumed = run_trainer(tmp_path, "chain", flags + ["--resume", "latest"], epochs=3)
    log = resumed.log_text[resumed.log_text.rindex("--resume latest: skipping"):]
    assert "epoch_2.pt, which does not load" in log
    assert f"resuming checkpoint '{folder / 'epoch_1.pt'}' (epoch 1)" in log
    assert not any(path.exists() for path in partial)
    assert "Removed 2 partial checkpoint file(s)" in log
    # epochs 1 and 2 again, bit-exact: the fallback continues the run, it does not restart it
    losses = re.findall(r"Contrastive_loss: ([-+0-9.e]+)", log)
    assert [float(x) for x in losses] == whole.step_losses[2:]


@pytest.mark.timeout(120)
def test_rerunning_an_existing_name_without_resume_exits_non_zero(tmp_path):
    import subprocess

    from trainer_utils import PYTHON, base_flags

    run_trainer(tmp_path, "taken", SYNTHETIC)
    proc = subprocess.run([PYTHON, "-m", "open_clip_train.main",
                           *base_flags(tmp_path, "taken"), *SYNTHETIC],
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Experiment already exists" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "--temperature must lie in (0, 1], got 0.0"),
    (["--temperature", "1.5"], "--temperature must lie in (0, 1], got 1.5"),
    (["--lr-tau", "1e-4"], "--lr-tau needs --fastclip"),
    (["--dist-timeout", "0"], "--dist-timeout must be a positive number of minutes"),
])
def test_baseline_bad_values_stop_with_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        run_trainer(tmp_path, "bad", SYNTHETIC + flags)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_dist_timeout_reaches_init_process_group(tmp_path, monkeypatch, launcher):
    """The trainer passes --dist-timeout (minutes) to torch.distributed.init_process_group
    on both of upstream's launch paths; without it, torch's default (30 min) applied."""
    import datetime

    import torch.distributed

    seen = {}

    def init_process_group(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    env = ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"} if launcher == "torchrun" else
           {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"})
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):   # upstream's SLURM path sets them:
        monkeypatch.setenv(name, "")                      # undone at teardown
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(_Stop):
        run_trainer(tmp_path, "dist", SYNTHETIC + ["--dist-timeout", "0.5"])
    assert seen["timeout"] == datetime.timedelta(seconds=30)
    seen.clear()
    with pytest.raises(_Stop):
        run_trainer(tmp_path, "dist2", SYNTHETIC)
    assert seen["timeout"] is None   # torch's default, as upstream


def test_dist_timeout_sets_horovods_stall_shutdown(monkeypatch):
    from open_clip_patch import hooks
    from open_clip_train.params import parse_args

    monkeypatch.delenv("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", raising=False)
    args = parse_args(["--model", "fastclip-tiny-vit", "--horovod", "--dist-timeout", "2"])
    hooks.dist_timeout(args)
    import os
    assert os.environ["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == "120"


# ---- --fcco-state-fresh continues an OpenCLIP checkpoint (item 3) ---------------------------
@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", ["v3", "v1"])
def test_fcco_state_fresh_continues_an_openclip_checkpoint(tmp_path, monkeypatch, version):
    import math

    import torch

    from open_clip_patch import hooks

    baseline = run_trainer(tmp_path, "openclip", SYNTHETIC + ["--stop-epochs", "1"], epochs=2)
    saved = torch.load(baseline.checkpoint(1), map_location="cpu", weights_only=False)
    assert "fastclip" not in saved
    captured, at_first_step = {}, {}
    on_resume, before_step = hooks.on_resume, hooks.before_step

    def recording_resume(args, checkpoint_dict, model=None, optimizer=None):
        captured["model"] = model
        return on_resume(args, checkpoint_dict, model, optimizer)

    def recording_step(args, loss, epoch, step, steps):
        if not at_first_step:
            at_first_step.update({k: v.detach().clone()
                                  for k, v in captured["model"].state_dict().items()})
            at_first_step["epoch"] = epoch
        return before_step(args, loss, epoch, step, steps)

    monkeypatch.setattr(hooks, "on_resume", recording_resume)
    monkeypatch.setattr(hooks, "before_step", recording_step)
    result = run_trainer(tmp_path, "fresh", SYNTHETIC + [
        "--fastclip", "--fastclip-version", version, "--resume", str(baseline.checkpoint(1)),
        "--fcco-state-fresh"], epochs=2)
    assert "the optimizer state is rebuilt" in result.log_text
    assert at_first_step.pop("epoch") == 1   # the step continues: epoch 1 of 2
    for name, value in saved["state_dict"].items():
        if name == "logit_scale" and version == "v1":   # τ frozen at the version's τ₀
            assert math.isclose(float(at_first_step[name]), math.log(1 / 0.07), rel_tol=1e-6)
        else:
            assert torch.equal(at_first_step[name], value), name
    after = torch.load(result.checkpoint(2), map_location="cpu", weights_only=False)
    assert after["epoch"] == 2 and after["fastclip"]["version"] == version
    state = after["fastclip"]["loss"]["_extra_state"]["state"]
    log_u = state["values"][:, state["columns"].index("log_u_image")]
    assert torch.isfinite(log_u).sum() == 16   # u from zero, written by this epoch's 16 ids


# ---- '::' sources get disjoint id ranges (item 2) -------------------------------------------
@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two img2dataset sets, both numbered from 00000 (their ids 0.. overlap)."""
    root = tmp_path_factory.mktemp("sets")
    a = write_digits_shards(root / "a", num_shards=2, num_samples=40, unique_captions=True)
    b = write_digits_shards(root / "b", num_shards=1, num_samples=24, unique_captions=True)
    return a, b


def recorded_ids(monkeypatch):
    from open_clip_patch import hooks

    seen, original = [], hooks.unpack_batch

    def recording(args, batch):
        images, texts, extra = original(args, batch)
        seen.extend(extra["sample_ids"].tolist())
        return images, texts, extra

    monkeypatch.setattr(hooks, "unpack_batch", recording)
    return seen


def touched_ids(result, epoch=1):
    import torch

    entry = torch.load(result.checkpoint(epoch), map_location="cpu", weights_only=False)["fastclip"]
    state = entry["loss"]["_extra_state"]["state"]
    log_u = state["values"][:, state["columns"].index("log_u_image")]
    return entry, set(torch.nonzero(torch.isfinite(log_u)).flatten().tolist())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("resampled", [False, True])
def test_sources_joined_by_colons_get_disjoint_id_ranges(tmp_path, monkeypatch, two_sets,
                                                         resampled):
    a, b = two_sets
    expected = set(a.captions) | {20_000 + key for key in b.captions}   # b after a's 2 x 10^4
    flags = wds(f"{a.pattern}::{b.pattern}", 64, "--fastclip", "--fastclip-version", "v1")
    if resampled:
        flags += ["--dataset-resampled", "--train-data-upsampling-factors", "1::2"]
    seen = recorded_ids(monkeypatch)
    result = run_trainer(tmp_path, "joined", flags)
    assert f"{a.pattern} -> [0, 20000); {b.pattern} -> [20000, 30000)" in result.log_text
    entry, touched = touched_ids(result)
    assert entry["data_size"] == 30_000
    assert entry["id_ranges"] == [{"source": a.pattern, "offset": 0, "size": 20_000},
                                  {"source": b.pattern, "offset": 20_000, "size": 10_000}]
    assert touched == set(seen) and set(seen) <= expected
    assert any(i >= 20_000 for i in seen) and any(i < 20_000 for i in seen)


def test_sources_whose_id_space_is_unknown_or_whose_size_disagrees_are_refused(tmp_path, two_sets):
    a, b = two_sets
    with pytest.raises(ValueError, match=r"--data-size 20000 is not the sum 30000"):
        run_trainer(tmp_path, "size", wds(f"{a.pattern}::{b.pattern}", 16, "--fastclip",
                                          "--data-size", "20000"))
    renamed = tmp_path / "named" / "part-a.tar"
    renamed.parent.mkdir()
    renamed.write_bytes(open(b.paths[0], "rb").read())
    with pytest.raises(ValueError, match=r"its shards are not all named NNNNN.tar"):
        run_trainer(tmp_path, "names", wds(f"{a.pattern}::{renamed}", 16, "--fastclip"))
    with pytest.raises(ValueError, match=r"is listed in two '::' sources"):
        run_trainer(tmp_path, "twice", wds(f"{a.pattern}::{a.paths[0]}", 16, "--fastclip"))


@pytest.mark.timeout(300)
def test_resume_with_another_source_mapping_is_refused(tmp_path, two_sets):
    from open_clip_patch.checkpoint import CheckpointMismatch

    a, b = two_sets
    flags = ["--fastclip", "--fastclip-version", "v1", "--data-size", "30000"]
    run_trainer(tmp_path, "ab", wds(f"{a.pattern}::{b.pattern}", 16, *flags, "--stop-epochs", "1"),
                epochs=2)
    with pytest.raises(CheckpointMismatch, match="maps sample ids to sources"):
        run_trainer(tmp_path, "ab", wds(f"{b.pattern}::{a.pattern}", 16, *flags,
                                        "--resume", "latest"), epochs=2)


# ---- a duplicate id within one global batch (item 2) ----------------------------------------
def test_a_duplicate_id_keeps_the_u_of_its_last_occurrence():
    """Decided: the last write (docs/algorithm.md §6). Batch ids (0, 1, 0) must leave id 0 with
    exactly the u that position 2 alone gives it, i.e. what ids (5, 1, 0) write for id 0."""
    import torch

    from open_clip_patch.losses import FastCLIPLoss

    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(3, 8, dtype=torch.float64), dim=1)
    states = []
    for ids in ([0, 1, 0], [5, 1, 0]):
        loss = FastCLIPLoss(version="v1", data_size=8, state_dtype=torch.float64)
        loss.gamma = 0.6
        loss(image, text, torch.tensor(1 / 0.07), torch.tensor(ids))
        states.append(loss.state)
    duplicated, distinct = states
    assert duplicated.duplicate_ids == 1 and distinct.duplicate_ids == 0
    for name in ("log_u_image", "log_u_text"):
        assert torch.equal(duplicated.column(name)[0], distinct.column(name)[0])
        assert torch.isfinite(duplicated.column(name)[0])
        assert not torch.equal(duplicated.column(name)[0], distinct.column(name)[5])  # not pos 0


@pytest.mark.timeout(300)
def test_a_duplicate_id_in_a_batch_is_counted_and_warned_about(tmp_path):
    import json

    import webdataset

    shards = write_digits_shards(tmp_path / "d", num_shards=1, num_samples=16)
    source = str(shards.paths[0])
    samples = list(webdataset.WebDataset(source, shardshuffle=False))
    doubled = tmp_path / "dup" / "00000.tar"
    doubled.parent.mkdir()
    with webdataset.TarWriter(str(doubled)) as sink:
        for index, sample in enumerate(samples):
            meta = json.loads(sample["json"])
            if index == 1:    # the second sample claims the first one's id
                meta["key"] = json.loads(samples[0]["json"])["key"]
            sink.write({"__key__": sample["__key__"], "png": sample["png"], "txt": sample["txt"],
                        "json": json.dumps(meta).encode()})
    # batch 16 = the whole shard, so both samples of the id meet in every batch
    result = run_trainer(tmp_path, "dup", wds(str(doubled), 32, "--fastclip", "--data-size",
                                              "100"), batch_size=16)
    counts = [int(n) for n in re.findall(r"FCCO state: (\d+) duplicate sample id", result.log_text)]
    assert counts and counts[0] == 1   # the first is reported at once (then once per 1000)
