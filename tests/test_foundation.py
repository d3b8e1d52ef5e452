"""The patch set and the baseline trainer: patches fail loudly, FastCLIP off is OpenCLIP."""
import math
import os
import shutil
import subprocess

import pytest
import torch

from trainer_utils import (REPO, run_trainer, run_trainer_subprocess, write_digits_csv,
                           write_tiny_model_dir)

PATCHSET = REPO / "tools" / "patchset.sh"


def run_patchset(command, patch_dir, tmp_path):
    env = dict(os.environ, PATCH_DIR=str(patch_dir), TREE=str(tmp_path / "tree"),
               CACHE=str(REPO / "build" / "sdist"))
    return subprocess.run(["bash", str(PATCHSET), command], env=env, capture_output=True, text=True)


def copy_patches(tmp_path):
    patch_dir = tmp_path / "patches"
    shutil.copytree(REPO / "patches", patch_dir)
    return patch_dir


def test_broken_patch_stops_with_its_name_and_hunk(tmp_path):
    patch_dir = copy_patches(tmp_path)
    victim = sorted(patch_dir.glob("*.patch"))[1]
    text = victim.read_text()
    # Corrupt a context line so the hunk cannot be found in upstream's file.
    lines = text.splitlines(keepends=True)
    idx = next(i for i, line in enumerate(lines) if line.startswith(" ") and len(line.strip()) > 10
               and i > next(j for j, l in enumerate(lines) if l.startswith("@@")))
    lines[idx] = " this line is not in upstream at all\n"
    victim.write_text("".join(lines))
    proc = run_patchset("apply", patch_dir, tmp_path)
    assert proc.returncode != 0
    assert f"patch '{victim.name}' does not apply" in proc.stderr
    assert "this line is not in upstream at all" in proc.stderr  # the rejected hunk is shown


@pytest.mark.parametrize("defect, message", [
    ("unlisted", "patches not listed in series"),
    ("duplicate", "patches listed twice in series"),
    ("missing", "series lists patches that do not exist"),
])
def test_series_defects_are_refused(tmp_path, defect, message):
    patch_dir = copy_patches(tmp_path)
    series = patch_dir / "series"
    first = sorted(patch_dir.glob("*.patch"))[0].name
    if defect == "unlisted":
        (patch_dir / "9999-stray.patch").write_text("")
    elif defect == "duplicate":
        series.write_text(series.read_text() + first + "\n")
    else:
        series.write_text(series.read_text() + "0000-gone.patch\n")
    proc = run_patchset("check", patch_dir, tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_tiny_baseline_trains_and_checkpoints(tmp_path):
    result = run_trainer(tmp_path, "baseline", ["--dataset-type", "synthetic",
                                                "--train-num-samples", "32"])
    losses = result.step_losses
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    checkpoint = torch.load(result.checkpoint(1), map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and "optimizer" in checkpoint


def test_fastclip_off_gives_openclips_own_loss():
    import open_clip
    from open_clip_train.params import parse_args
    from open_clip_patch import hooks

    args = parse_args(["--model", "fastclip-tiny-vit"])
    args.rank, args.world_size, args.distill = 0, 1, False
    loss = hooks.create_loss(args)
    assert type(loss) is open_clip.ClipLoss
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    scale = torch.tensor(14.3)
    # CLIP's loss from its definition: ½[CE(s·I·Tᵀ) + CE(s·T·Iᵀ)] with the diagonal as labels
    logits = scale * img @ txt.T
    expected = 0.5 * ((logits.logsumexp(1) - logits.diagonal()).mean()
                      + (logits.logsumexp(0) - logits.diagonal()).mean())
    assert loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-6)


def test_patched_baseline_equals_unpatched_openclip_step_for_step(tmp_path):
    """FastCLIP off: the patched trainer logs the same per-step losses as pristine 3.3.0."""
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO / "build" / "open_clip"), "archive", "upstream"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(pristine)], input=archive, check=True)
    csv = write_digits_csv(tmp_path / "digits", n=48)
    model = "local-dir:" + str(write_tiny_model_dir(tmp_path / "tiny"))
    flags = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath",
             "--csv-caption-key", "title"]
    env = dict(os.environ, PYTHONPATH=str(pristine / "src"))
    upstream = run_trainer_subprocess(tmp_path, "upstream", flags, env=env, model=model, epochs=2)
    patched = run_trainer_subprocess(tmp_path, "patched", flags, model=model, epochs=2)
    # sanity: the pristine run knew nothing of FastCLIP, the patched one did
    assert "fastclip" not in (upstream.log_dir / "params.txt").read_text()
    assert "fastclip: False" in (patched.log_dir / "params.txt").read_text()
    assert len(patched.step_losses) == 12
    assert patched.step_losses == upstream.step_losses
