"""Horovod smoke test: two local ranks over Gloo on CPU tensors.

Launches `horovodrun -np 2 -H localhost:2 --gloo` (from the venv running pytest) on
tests/horovod_worker.py; each rank writes its results to a JSON file, checked here
against the values each rank started from.  Skipped, with the reason, when horovod is
not installed (`make horovod`, part of `make setup`, builds it).
"""

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

NP = 2
WORKER = Path(__file__).with_name("horovod_worker.py")


def _horovodrun() -> Path:
    if importlib.util.find_spec("horovod") is None:
        pytest.skip("horovod is not installed in this venv: `make horovod` did not build it "
                    "(tools/build_horovod.sh builds it from the pinned sdist)")
    path = Path(sysconfig.get_path("scripts")) / "horovodrun"
    assert path.is_file(), f"horovod is installed but {path} is missing"
    return path


def test_horovodrun_gloo_collectives_on_cpu(tmp_path):
    horovodrun = _horovodrun()
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",  # CPU tensors only, even on a GPU machine
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, str(horovodrun), "-np", str(NP), "-H", f"localhost:{NP}", "--gloo",
           sys.executable, str(WORKER), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    output = proc.stdout[-6000:]
    assert proc.returncode == 0, f"horovodrun exited with {proc.returncode}:\n{output}"

    results = {}
    for rank in range(NP):
        path = tmp_path / f"rank{rank}.json"
        assert path.is_file(), f"rank {rank} wrote no results:\n{output}"
        results[rank] = json.loads(path.read_text())

    inputs = {r: [(r + 1) * v for v in (1.0, 2.0, 3.0)] for r in range(NP)}
    expected_sum = [sum(inputs[r][i] for r in range(NP)) for i in range(3)]
    expected_avg = [s / NP for s in expected_sum]
    expected_int_sum = [sum(r + 1 for r in range(NP)), sum(10 * (r + 1) for r in range(NP))]
    # allgather concatenates along dim 0 in rank order; rank r sent r + 1 rows of r
    expected_gather = [[float(r)] * 2 for r in range(NP) for _ in range(r + 1)]

    for rank, res in results.items():
        assert res["rank"] == rank and res["size"] == NP and res["local_rank"] == rank, res
        assert res["gloo_built"] and res["gloo_enabled"] and not res["mpi_built"], res
        assert res["cuda_visible_devices"] == "", res
        assert res["devices"] == ["cpu"], res
        assert res["input"] == inputs[rank], res
        assert res["average"] == pytest.approx(expected_avg), f"rank {rank}: Average allreduce"
        assert res["sum"] == pytest.approx(expected_sum), f"rank {rank}: Sum allreduce"
        assert res["int_sum"] == expected_int_sum and res["int_sum_dtype"] == "torch.int64", res
        assert res["gathered"] == expected_gather, f"rank {rank}: allgather {res['gathered']}"
        assert res["broadcast_root0"] == [0.0, 1.0, 2.0, 3.0], res
        assert res["broadcast_root1"] == [100.0, 101.0, 102.0, 103.0], res
        assert res["broadcast_object"] == {"rank": 1, "tag": "from-1"}, res


def _horovod_trainer(horovodrun, tmp_path, csv, name, *extra):
    """``horovodrun -np 2 --gloo python -m open_clip_train.main --horovod ...`` on digits."""
    from trainer_utils import base_flags

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    flags = base_flags(tmp_path / "logs", name, batch_size=4, epochs=2) + [
        "--horovod", "--train-data", str(csv), "--dataset-type", "csv",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--precision", "fp32", *extra]
    cmd = [sys.executable, str(horovodrun), "-np", str(NP), "-H", f"localhost:{NP}", "--gloo",
           sys.executable, "-m", "open_clip_train.main", *flags]
    # a rank that waits on a collective the other never joins would hang: bounded here
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=240)
    assert proc.returncode == 0, f"horovodrun exited with {proc.returncode}:\n{proc.stdout[-6000:]}"
    return tmp_path / "logs" / name


@pytest.mark.parametrize("method", [["--fastclip", "--fastclip-version", "v3",
                                     "--fcco-state", "sharded"], []],
                         ids=["fastclip-v3-sharded", "openclip"])
def test_horovod_trainer_stops_and_resumes_latest(tmp_path, method):
    """--stop-epochs 1, then --resume latest under horovodrun. Only rank 0 looks the latest
    checkpoint up; upstream's Horovod broadcast of its path named the collective after the
    object's type (str on rank 0, NoneType elsewhere), so the ranks never met (patch 0003)."""
    from trainer_utils import write_digits_csv

    horovodrun = _horovodrun()
    csv = write_digits_csv(tmp_path / "digits", n=32)
    _horovod_trainer(horovodrun, tmp_path, csv, "run", *method, "--stop-epochs", "1")
    run = _horovod_trainer(horovodrun, tmp_path, csv, "run", *method, "--resume", "latest")
    log = (run / "out.log").read_text()
    assert "Found latest resume checkpoint" in log and "epoch_1.pt" in log
    assert (run / "checkpoints" / "epoch_2.pt").is_file()
    if method:
        assert (run / "checkpoints" / "epoch_2.fcco").is_dir()
