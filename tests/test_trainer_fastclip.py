"""`open_clip_train.main --fastclip` end to end: versions × optimizers, ids, bad input."""
import math
import re

import pytest
import torch

from demo.data.digits import write_digits_shards
from open_clip_patch.versions import VERSIONS as VERSIONS_TABLE
from trainer_utils import run_trainer

VERSIONS = ("v0", "v1", "v2", "v3", "sogclr", "isogclr")
OPTIMIZERS = ("adamw", "lamb", "lion", "sgdm")


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    # 96 digits in 2 shards, every 7th row "failed to download": the id space has gaps.
    return write_digits_shards(tmp_path_factory.mktemp("shards"), num_shards=2, num_samples=96,
                               skip_every=7, unique_captions=True)


def wds_flags(shards, *extra, num_samples=None):
    return ["--train-data", shards.pattern, "--dataset-type", "webdataset",
            "--train-num-samples", str(num_samples or shards.num_samples), *extra]


SYNTHETIC = ["--dataset-type", "synthetic", "--train-num-samples", "16"]


def load_checkpoint(result, epoch=1):
    return torch.load(result.checkpoint(epoch), map_location="cpu", weights_only=False)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("data", ["synthetic", "webdataset"])
def test_every_version_and_optimizer_trains(tmp_path, digit_shards, version, optimizer, data):
    # two steps are enough to exercise every pairing (the epoch stops after 16 samples)
    flags = SYNTHETIC if data == "synthetic" else wds_flags(digit_shards, num_samples=16)
    flags = flags + ["--fastclip", "--fastclip-version", version, "--opt", optimizer]
    if version in ("v2", "isogclr"):  # individual temperatures need the id space given
        flags += ["--data-size", "16" if data == "synthetic" else str(digit_shards.id_space)]
    result = run_trainer(tmp_path, "run", flags)
    assert result.step_losses and all(math.isfinite(x) for x in result.step_losses)
    checkpoint = load_checkpoint(result)
    entry = checkpoint["fastclip"]
    assert entry["version"] == version
    state = entry["loss"]["_extra_state"]["state"]
    values, columns = state["values"], state["columns"]
    log_u = values[:, [columns.index("log_u_image"), columns.index("log_u_text")]]
    seen = torch.isfinite(log_u).all(dim=1)  # ids never loaded keep u = 0 (log u = -inf)
    assert int(seen.sum()) >= 8 and not torch.isnan(values).any()
    assert torch.isfinite(values[seen]).all()
    group_names = [g.get("group_name") for g in checkpoint["optimizer"]["param_groups"]]
    assert ("logit_scale" in group_names) == (version in ("v0", "v3"))


def test_touched_u_entries_are_exactly_the_loaders_ids(tmp_path, digit_shards, monkeypatch):
    from open_clip_patch import hooks

    seen = []
    original = hooks.unpack_batch

    def recording_unpack(args, batch):
        images, texts, extra = original(args, batch)
        seen.extend(extra["sample_ids"].tolist())
        return images, texts, extra

    monkeypatch.setattr(hooks, "unpack_batch", recording_unpack)
    result = run_trainer(tmp_path, "ids", wds_flags(digit_shards, "--fastclip",
                                                    "--fastclip-version", "v1"))
    state = load_checkpoint(result)["fastclip"]["loss"]["_extra_state"]["state"]
    columns = state["columns"]
    log_u = state["values"][:, [columns.index("log_u_image"), columns.index("log_u_text")]]
    touched = set(torch.nonzero(torch.isfinite(log_u).all(dim=1)).flatten().tolist())
    never_seen = torch.isinf(log_u).all(dim=1)  # u = 0 (log u = -inf) for every id not loaded
    assert int(never_seen.sum()) == log_u.shape[0] - len(touched)
    assert touched == set(seen)
    assert set(seen) <= set(digit_shards.captions) and len(set(seen)) >= 64


def test_ids_map_back_to_their_own_captions(tmp_path, digit_shards):
    """Through shuffling, resampling and two worker processes, an id keeps its caption."""
    import open_clip
    import open_clip_patch  # noqa: F401
    from open_clip_train.data import get_wds_dataset
    from open_clip_train.params import parse_args

    tokenizer = open_clip.get_tokenizer("fastclip-tiny-vit")
    _, preprocess, _ = open_clip.create_model_and_transforms("fastclip-tiny-vit")
    for resampled in ([], ["--dataset-resampled"]):
        args = parse_args(["--model", "fastclip-tiny-vit", "--batch-size", "8", "--workers", "2",
                           *wds_flags(digit_shards, "--fastclip"), *resampled])
        args.world_size, args.rank = 1, 0
        info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
        checked = 0
        for images, texts, ids in info.dataloader:
            for text, sample_id in zip(texts, ids.tolist()):
                assert torch.equal(text, tokenizer(digit_shards.captions[sample_id])[0])
                checked += 1
        assert checked >= 64


# What each --opt must receive: OpenCLIP's ViT defaults for Adam-type betas/eps, the Lion paper's
# betas, classical (not Nesterov) momentum 0.9 for SGD; explicit flags win.
@pytest.mark.parametrize("flags, optimizer_class, expected, absent", [
    (["--opt", "adamw"], "AdamW", {"betas": (0.9, 0.98), "eps": 1e-6}, ()),
    (["--opt", "adamw", "--beta1", "0.8", "--beta2", "0.95", "--eps", "1e-7"], "AdamW",
     {"betas": (0.8, 0.95), "eps": 1e-7}, ()),
    (["--opt", "lamb"], "Lamb", {"betas": (0.9, 0.98), "eps": 1e-6}, ()),
    (["--opt", "lion"], "Lion", {"betas": (0.9, 0.99)}, ("eps",)),
    (["--opt", "sgdm"], "SGD", {"momentum": 0.9, "nesterov": False}, ("betas", "eps")),
    (["--opt", "sgdm", "--momentum", "0.5"], "SGD", {"momentum": 0.5, "nesterov": False},
     ("betas", "eps")),
])
def test_optimizer_hyper_parameters_reach_the_optimizer(flags, optimizer_class, expected, absent):
    import open_clip
    from open_clip_patch import optim
    from open_clip_train.params import parse_args

    args = parse_args(["--model", "fastclip-tiny-vit", "--lr", "1e-3", "--wd", "0.1", *flags])
    optimizer = optim.create_optimizer(args, open_clip.create_model("fastclip-tiny-vit"),
                                       lr_tau=2e-4)
    assert type(optimizer).__name__ == optimizer_class
    assert {name: optimizer.defaults[name] for name in expected} == expected
    assert not set(absent) & set(optimizer.defaults)
    groups = [(g.get("group_name"), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert groups == [(None, 1e-3, 0.0), (None, 1e-3, 0.1), ("logit_scale", 2e-4, 0.0)]


@pytest.mark.parametrize("flags, message", [
    (["--gamma-min", "0"], "--gamma-min must lie in (0, 1]"),
    (["--gamma-min", "1.5"], "--gamma-min must lie in (0, 1]"),
    (["--rho", "-1"], "--rho must be non-negative"),
    (["--fastclip-version", "v9"], "invalid choice: 'v9'"),
    (["--accum-freq", "2"], "--fastclip does not support --accum-freq > 1"),
    (["--fastclip-version", "v2"], "individual-learnable needs --data-size"),
    (["--temperature-scheme", "individual-learnable", "--data-size", "10"], "does not fit"),
    (["--opt", "adagrad"], "--opt must be one of adamw, lamb, lion, sgdm"),
    (["--stop-epochs", "5", "--epochs", "2"], "--stop-epochs must lie in [1, --epochs=2]"),
    (["--temperature", "0"], "--temperature must lie in (0, 1]"),
])
def test_bad_flags_stop_before_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        run_trainer(tmp_path, "bad", SYNTHETIC + ["--fastclip", *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # nothing started


def test_the_loss_needs_the_data_first_and_args_stays_the_parsed_flags():
    """Without --data-size the id space comes from the training data, so a loss asked for before
    the data is refused with one line; afterwards it has the data's size, which lives in the run
    (args keeps the flag's None)."""
    from open_clip_patch import hooks
    from open_clip_train.params import parse_args

    args = parse_args(["--model", "fastclip-tiny-vit", "--fastclip", "--fastclip-version", "v3"])
    args.rank, args.world_size, args.distributed = 0, 1, False
    with pytest.raises(RuntimeError, match="the loss was created before the training data"):
        hooks.create_loss(args)
    hooks.with_sample_ids(args, [("image", "text")] * 12, is_train=True)
    assert hooks.create_loss(args).state.data_size == 12
    assert args.data_size is None


def test_out_of_range_key_fails_naming_the_shard(tmp_path):
    shards = write_digits_shards(tmp_path / "rogue", num_shards=2, num_samples=40, rogue_key=10**6)
    with pytest.raises(ValueError) as error:
        run_trainer(tmp_path, "rogue", wds_flags(shards, "--fastclip", "--data-size",
                                                 str(shards.id_space)))
    text = str(error.value)
    assert "outside [0, data-size=" in text and ".tar" in text and "001000000" in text


def test_out_of_range_key_can_be_skipped_and_counted(tmp_path):
    shards = write_digits_shards(tmp_path / "rogue", num_shards=2, num_samples=40, rogue_key=10**6)
    result = run_trainer(tmp_path, "skip", wds_flags(shards, "--fastclip", "--data-size",
                                                     str(shards.id_space), "--skip-invalid-ids"))
    # 39 valid samples make 4 batches of 8, so the 5-batch epoch reads the shards once in
    # full (the rogue sample is always met) and then part of a second pass (met or not,
    # depending on the sample shuffle); every encounter is counted
    skipped = re.search(r"'invalid_ids_skipped': (\d+)", result.log_text)
    assert skipped and int(skipped.group(1)) in (1, 2)
    assert "Epoch 0 data problems" in result.log_text


@pytest.mark.parametrize("method", ["openclip", "fastclip"])
def test_same_seed_same_data_order_on_webdataset(tmp_path, digit_shards, method):
    """The sample shuffle is seeded (patches/0010): equal --seed, equal run; another seed
    shuffles differently (webdataset alone seeds from the clock)."""
    extra = ["--fastclip"] if method == "fastclip" else []
    flags = wds_flags(digit_shards, *extra, num_samples=48)
    first = run_trainer(tmp_path, "a", flags + ["--seed", "3"])
    again = run_trainer(tmp_path, "b", flags + ["--seed", "3"])
    other = run_trainer(tmp_path, "c", flags + ["--seed", "4"])
    assert len(first.step_losses) >= 3
    assert first.step_losses == again.step_losses
    assert first.step_losses != other.step_losses


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    shards = write_digits_shards(tmp_path / "cut", num_shards=2, num_samples=64,
                                 truncate_shard_index=1)
    result = run_trainer(tmp_path, "cut", wds_flags(shards, "--fastclip"))
    assert all(math.isfinite(x) for x in result.step_losses)
    # with_epoch() may pass over the shards more than once per epoch: each read is counted
    errors = re.search(r"'shard_errors': (\d+)", result.log_text)
    assert errors and int(errors.group(1)) >= 1
    assert "Handling webdataset error" in result.log_text


SCHEMES = ("global-constant", "global-learnable", "individual-learnable")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("version", VERSIONS)
def test_tau_moves_exactly_when_the_scheme_learns_it_or_the_run_is_refused(
        tmp_path, capsys, digit_shards, version, scheme):
    """Every version × --temperature-scheme through the trainer (two steps): a learnable
    scheme moves τ (the logit scale, or the touched samples' τᵢ), a constant one keeps τ₀
    bit-exactly, and a scheme the objective cannot use is refused before training (once, the
    log said "learnable" while τ stayed frozen)."""
    from open_clip_patch.versions import SCHEMES_OF_OBJECTIVE

    # varied digits (synthetic samples are all alike: a GCL loss of 0 gives τ no gradient)
    flags = wds_flags(digit_shards, num_samples=16) + [
        "--fastclip", "--fastclip-version", version, "--temperature-scheme", scheme,
        "--temperature", "0.05", "--data-size", str(digit_shards.id_space), "--lr", "1e-2"]
    if scheme not in SCHEMES_OF_OBJECTIVE[VERSIONS_TABLE[version].objective]:
        with pytest.raises(SystemExit) as stop:
            run_trainer(tmp_path, "refused", flags)
        assert stop.value.code == 2 and "does not fit" in capsys.readouterr().err
        return
    checkpoint = load_checkpoint(run_trainer(tmp_path, "walk", flags))
    tau_global = math.exp(-float(checkpoint["state_dict"]["logit_scale"]))
    state = checkpoint["fastclip"]["loss"]["_extra_state"]["state"]
    if scheme == "global-learnable":
        assert abs(tau_global - 0.05) > 1e-6
    else:
        assert float(checkpoint["state_dict"]["logit_scale"]) == \
            float(torch.tensor(math.log(1 / 0.05), dtype=torch.float32))
    if scheme == "individual-learnable":
        columns, values = state["columns"], state["values"]
        taus = values[:, [columns.index("tau_image"), columns.index("tau_text")]]
        assert (taus - 0.05).abs().max() > 1e-6   # the touched samples' τᵢ moved
    else:
        assert "tau_image" not in state["columns"]
