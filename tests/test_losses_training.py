"""Two FCCO training steps of the tiny OpenCLIP model on scikit-learn digits lower the loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import open_clip
import open_clip_patch  # noqa: F401  (registers the fastclip-tiny-vit config)
from open_clip_patch.losses import FastCLIPLoss


def digit_pairs(per_digit=2):
    """Images (32 px RGB) and tokenized captions, ``per_digit`` examples of each digit."""
    digits = load_digits()
    ids = [i for d in range(10) for i in (digits.target == d).nonzero()[0][:per_digit]]
    ids = torch.tensor(ids)
    pixels = torch.tensor(digits.images[ids.numpy()], dtype=torch.float32) / 16.0
    images = F.interpolate(pixels[:, None], size=32, mode="bilinear", align_corners=False)
    images = (images.expand(-1, 3, -1, -1) - 0.5) / 0.5
    captions = [f"a photo of the digit {digits.target[i]}" for i in ids.tolist()]
    tokens = open_clip.get_tokenizer("fastclip-tiny-vit")(captions)
    return images, tokens, ids, len(digits.target)


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_two_steps_on_digits_lower_the_loss(version):
    torch.manual_seed(0)
    images, tokens, ids, data_size = digit_pairs()
    model = open_clip.create_model("fastclip-tiny-vit")
    loss = FastCLIPLoss(version, data_size)        # γ = 1: the value is the batch objective
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    if version == "v2":
        model.logit_scale.requires_grad_(False)    # the trainer freezes θ for per-sample τ
    values = []
    for step in range(3):                          # two updates, then measure again
        image_features, text_features, logit_scale = model(images, tokens)
        value = loss(image_features, text_features, logit_scale, ids)
        values.append(value.item())
        if step < 2:
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
    assert all(math.isfinite(v) for v in values)
    assert values[2] < values[1] < values[0], values


def test_trainer_sets_gamma_and_epoch_of_every_step_like_the_cosine_recursion(tmp_path,
                                                                              monkeypatch):
    """A 3-epoch synthetic run (4 steps an epoch, --gamma-per-step, cosine over 2 epochs to
    γ_min 0.3): the loss sees, at each step, the epoch and γ written out here from the paper's
    formula, γ = 1 in epoch 0, ½(1+cos(π·(e + i/4)/2))·0.7 + 0.3 while e + i/4 < 2, then 0.3."""
    from trainer_utils import run_trainer

    seen = []
    original = FastCLIPLoss.forward

    def recording(self, *args, **kwargs):
        seen.append((self.epoch, self.gamma))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FastCLIPLoss, "forward", recording)
    run_trainer(tmp_path, "gamma", ["--dataset-type", "synthetic", "--train-num-samples", "32",
                                    "--fastclip", "--fastclip-version", "v1",
                                    "--gamma-min", "0.3", "--gamma-schedule", "cosine",
                                    "--gamma-decay-epochs", "2", "--gamma-per-step"],
                epochs=3)
    expected = []
    for epoch in range(3):
        for step in range(4):
            progress = epoch + step / 4
            gamma = (1.0 if epoch == 0 else 0.3 if progress >= 2 else
                     0.5 * (1 + math.cos(math.pi * progress / 2)) * 0.7 + 0.3)
            expected.append((epoch, gamma))
    assert [e for e, _ in seen] == [e for e, _ in expected]
    assert [g for _, g in seen] == pytest.approx([g for _, g in expected], abs=1e-12)
