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


@pytest.mark.timeout(60)
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


@pytest.mark.timeout(60)
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
