"""Mixed precision on the CPU: the trainer with --precision amp_bf16 (CPU autocast) for v0–v3 and
the OpenCLIP baseline, and the loss's own casting rule (bf16/fp16 features → float32, autocast
off inside), plus --fcco-state-device reaching the loss.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_precision.py
"""
import argparse
import math

import pytest
import torch

from open_clip_patch import params
from open_clip_patch.losses import FastCLIPLoss
from trainer_utils import run_trainer

SYNTHETIC = ["--dataset-type", "synthetic", "--train-num-samples", "16"]


def record_feature_dtypes(monkeypatch, loss_class):
    """Wrap ``loss_class.forward`` to record the dtype of the image features it receives."""
    seen = []
    forward = loss_class.forward

    def recording(self, image_features, *args, **kwargs):
        seen.append(image_features.dtype)
        return forward(self, image_features, *args, **kwargs)

    monkeypatch.setattr(loss_class, "forward", recording)
    return seen


@pytest.mark.parametrize("method", ["openclip", "v0", "v1", "v2", "v3"])
def test_trainer_with_amp_bf16_on_cpu_gives_finite_losses(tmp_path, monkeypatch, method):
    import open_clip

    flags = SYNTHETIC + ["--precision", "amp_bf16"]
    if method != "openclip":
        flags += ["--fastclip", "--fastclip-version", method, "--data-size", "16"]
    seen = record_feature_dtypes(monkeypatch, open_clip.ClipLoss if method == "openclip"
                                 else FastCLIPLoss)
    result = run_trainer(tmp_path, "run", flags)
    assert len(result.step_losses) == 2
    assert all(math.isfinite(x) for x in result.step_losses)
    # the model really ran under CPU autocast: its projections hand the loss bf16 features
    assert seen and set(seen) == {torch.bfloat16}


def unit_features(n, d, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1).to(dtype)


@pytest.mark.parametrize("version", ["v3", "v2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_features_are_cast_to_float32_with_autocast_off(version, dtype):
    image, text = unit_features(16, 8, 0, dtype), unit_features(16, 8, 1, dtype)
    ids, scale = torch.arange(16), torch.tensor(1 / 0.07)
    results = []
    for features, autocast in (((image, text), True),
                               ((image.float(), text.float()), False)):   # the rule by hand
        leaves = [f.clone().requires_grad_() for f in features]
        loss = FastCLIPLoss(version, data_size=16, gamma=0.8)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for _ in range(2):   # the second step reads the state the first wrote
                value = loss(*leaves, scale, ids)
        value.backward()
        results.append((value, [leaf.grad for leaf in leaves], loss.state.values.clone()))
    (value, grads, state), (value32, grads32, state32) = results
    assert value.dtype == torch.float32
    assert torch.equal(value, value32) and torch.equal(state, state32)
    for grad, grad32 in zip(grads, grads32):
        assert grad.dtype == dtype   # gradients return in the leaves' own dtype
        assert torch.equal(grad, grad32.to(dtype))
    # the equality is not vacuous: autocast left on would run the similarities in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_sim = image.float() @ text.float().T
    assert not torch.equal(autocast_sim.float(), image.float() @ text.float().T)


def state_device_args(**flags):
    parser = argparse.ArgumentParser()
    params.add_args(parser)
    args = parser.parse_args(["--fastclip", "--data-size", "16"] + [
        token for name, value in flags.items() for token in (f"--{name}", value)])
    # the OpenCLIP flags loss_kwargs and validation read
    args.lr, args.epochs, args.accum_freq, args.beta1, args.beta2, args.eps = 1e-3, 2, 1, None, None, None
    args.siglip, args.distill_model, args.model = False, None, "ViT-B-32"
    params.apply_preset(args)
    return args


def test_fcco_state_device_reaches_the_loss():
    host = state_device_args()
    host.device = "cuda:1"
    assert params.loss_kwargs(host)["state_device"] == "cpu"   # the default: host memory
    gpu = state_device_args(**{"fcco-state-device": "cuda"})
    gpu.device = "cuda:1"   # OpenCLIP's per-rank device: the state follows the rank's GPU
    assert params.loss_kwargs(gpu)["state_device"] == "cuda:1"
    loss = FastCLIPLoss(**{**params.loss_kwargs(gpu), "state_device": "meta"})
    assert loss.state.device.type == "meta"   # the keyword reaches PerSampleState unchanged


def test_fcco_state_device_cuda_needs_a_cuda_device():
    args = state_device_args(**{"fcco-state-device": "cuda"})
    args.device = "cpu"
    assert list(params.validation_errors(args)) == [
        "--fcco-state-device cuda needs --device cuda, got --device cpu"]


def test_state_on_the_gpu_with_sharded_state_stops_with_one_line():
    from open_clip_train.params import parse_args

    from open_clip_patch import hooks

    args = parse_args(["--model", "fastclip-tiny-vit", "--fastclip", "--data-size", "16",
                       "--device", "cuda", "--fcco-state-device", "cuda"])
    args.rank, args.world_size, args.distributed = 0, 2, True
    with pytest.raises(ValueError, match="--fcco-state-device cuda needs --fcco-state replicated"):
        hooks.create_loss(args)
