"""tools/gpu_check.py's CPU rehearsal (``--device cpu --tiny``), so the GPU script cannot rot
between GPU loans, and its comparisons fail when the device result is wrong.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_gpu_check.py     # about a minute
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

SECTIONS = ("correctness", "smoke", "cost", "state_path", "compile")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), proc.stdout


def test_rehearsal_runs_every_section_and_prints_the_table(rehearsal):
    results, stdout = rehearsal
    assert all(key in results for key in SECTIONS) and results["passed"] is True
    assert results["environment"]["device"] == "cpu" and results["size"] == "tiny"
    for number in range(1, 6):
        assert f"\n{number}. " in stdout
    assert stdout.rstrip().splitlines()[-1].startswith("all checks passed: True (")


def test_rehearsal_loss_matches_float64_for_every_version_and_input_dtype(rehearsal):
    rows = rehearsal[0]["correctness"]
    assert {(r["version"], r["inputs"]) for r in rows} == {
        (v, d) for v in gpu_check.VERSIONS for d in ("float32", "bfloat16")}
    for row in rows:
        assert row["passed"]
        assert row["loss"] <= gpu_check.GOALS["loss_rel_err_fp32"]   # bf16 inputs upcast exactly
        assert row["grad"] <= row["tolerance"]["grad"] and row["state"] <= 1e-5
        if row["inputs"] == "bfloat16":   # gradients come back rounded to bf16, not exact
            assert row["grad"] > 1e-5


def test_rehearsal_bf16_training_decreases_and_compile_matches_eager(rehearsal):
    results = rehearsal[0]
    assert [r["method"] for r in results["smoke"]] == ["openclip", "fastclip-v3"]
    for row in results["smoke"]:
        assert len(row["losses"]) == 50 and all(math.isfinite(x) for x in row["losses"])
        assert row["last10_mean"] < row["first10_mean"]
    assert results["compile"]["passed"] and results["compile"]["backend"] == "aot_eager"


def test_rehearsal_times_both_methods_interleaved(rehearsal):
    cost, state = rehearsal[0]["cost"], rehearsal[0]["state_path"]
    for table in (cost["step_s"], cost["loss_alone_s"]):
        assert set(table) == {"openclip", "fastclip-v3"}
        assert all(t["n"] == gpu_check.SIZES["tiny"].repeats and t["median"] > 0
                   for t in table.values())
    assert cost["step_time_ratio"] == pytest.approx(
        cost["step_s"]["fastclip-v3"]["median"] / cost["step_s"]["openclip"]["median"])
    assert cost["peak_bytes"] == {"openclip": None, "fastclip-v3": None}   # no CUDA allocator
    assert state["state_bytes"] == gpu_check.SIZES["tiny"].data_size * 2 * 4   # log u, 2 sides
    assert set(state["row_read_write_s"]) == {"cpu"}


def test_a_wrong_device_loss_fails_the_comparison(monkeypatch):
    size = gpu_check.SIZES["tiny"]
    assert gpu_check.compare_loss("v3", torch.float32, torch.device("cpu"), size, 0)["passed"]
    pair = gpu_check.loss_pair

    def off_by_gamma(*args):
        dev, ref = pair(*args)
        dev.gamma = 0.7   # a different moving average: the state rows and then the loss move
        return dev, ref

    monkeypatch.setattr(gpu_check, "loss_pair", off_by_gamma)
    row = gpu_check.compare_loss("v3", torch.float32, torch.device("cpu"), size, 0)
    assert not row["passed"] and row["state"] > 1e-3


def test_relative_error_refuses_mismatched_infinities_and_nan():
    ref = torch.tensor([-math.inf, 1.0, 2.0])
    assert gpu_check.rel_err(ref.clone(), ref) == 0.0
    assert gpu_check.rel_err(torch.tensor([0.0, 1.0, 2.0]), ref) == math.inf
    assert gpu_check.rel_err(torch.tensor([-math.inf, math.nan, 2.0]), ref) == math.inf
    assert gpu_check.rel_err(torch.tensor([-math.inf, 1.0, 2.2]), ref) == pytest.approx(
        0.2 / math.sqrt(5))


def test_the_emulated_pinned_state_path_runs_here_unpinned():
    # on CUDA the tables are pinned; the gather, copies and scatter are the same calls
    seconds = gpu_check.pinned_rows_cost(torch.device("cpu"), gpu_check.SIZES["tiny"], repeats=1)
    assert 0 < seconds < 1


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(device, size):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "cost", broken)
    status = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path),
                             "--sections", "cost,state_path"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert status == 1 and results["passed"] is False
    assert results["cost"]["error"].startswith("RuntimeError: CUDA error")
    assert results["state_path"]["loss_step_s"]["fastclip-v3"] > 0
    table = capsys.readouterr().out
    assert "3. cost: ERROR RuntimeError" in table and "1. correctness: not run" in table
