"""One way to run OpenCLIP's trainer for the demo, used by the demo runs and the tuning runs alike.

:func:`trainer_command` builds the ``open_clip_train.main`` command from the shared settings and
a method's flags; :func:`run_trainer` runs it in a fresh process (OpenCLIP's global state —
logging, seeds — stays apart between runs), follows its log for a progress bar and the samples
per epoch, and writes ``<run_dir>/train.json``. The log goes to ``<run_dir>.trainer.log`` as well
as the run's own ``out.log``.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


PROGRESS_RE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")


class TrainingFailed(RuntimeError):
    pass


def trainer_command(settings, manifest, flags, logs, name, save_frequency=1):
    data_root = Path(manifest["root"])
    num_samples = settings.train_num_samples or manifest["train"]["num_samples"]
    return [
        sys.executable, "-u", "-m", "open_clip_train.main", "--model", settings.model,
        "--train-data", str(data_root / manifest["train"]["pattern"]),
        "--dataset-type", "webdataset", "--train-num-samples", str(num_samples),
        "--batch-size", str(settings.batch_size), "--epochs", str(settings.epochs),
        "--warmup", str(settings.warmup_steps), "--wd", str(settings.weight_decay),
        "--lr-scheduler", "cosine", "--opt", "adamw", "--seed", str(settings.seed),
        "--device", "cpu", "--precision", "fp32", "--workers", str(settings.workers),
        "--save-frequency", str(save_frequency), "--zeroshot-frequency", "0",
        "--log-every-n-steps", str(settings.log_every_n_steps),
        "--logs", str(logs), "--name", name, *flags]


def expected_samples_per_epoch(num_samples, batch_size, workers):
    """What OpenCLIP's webdataset loader yields per epoch: whole batches, rounded up per worker."""
    batches = math.ceil(num_samples / batch_size)
    workers = max(1, workers)
    return math.ceil(batches / workers) * workers * batch_size


def run_trainer(command, run_dir, label, epochs, expected_per_epoch, show_progress=True,
                env=None, bar_position=None):
    """Run the trainer in a subprocess, a progress bar fed from its log; -> train.json's dict."""
    from tqdm import tqdm

    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # OpenCLIP refuses to reuse a run name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    transcript = run_dir.parent / f"{run_dir.name}.trainer.log"
    per_epoch = {}
    bar = tqdm(total=epochs * expected_per_epoch, desc=f"train {label}", unit="sample",
               unit_scale=True, disable=not show_progress, dynamic_ncols=True, mininterval=0.5,
               position=bar_position, leave=bar_position is None)
    started = time.perf_counter()
    with open(transcript, "w") as log, bar:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1, env=env)
        for line in process.stdout:
            log.write(line)
            match = PROGRESS_RE.search(line)
            if match:
                epoch, done, epoch_total = map(int, match.groups())
                per_epoch[epoch] = epoch_total
                bar.total = epochs * epoch_total   # the trainer's own count wins
                bar.n = epoch * epoch_total + done
                bar.refresh()
        status = process.wait()
    wall_s = time.perf_counter() - started
    if status != 0:
        tail = "".join(transcript.read_text().splitlines(keepends=True)[-20:])
        raise TrainingFailed(f"{label}: trainer exited with status {status}; log {transcript}; "
                             f"last lines:\n{tail}")
    if len(set(per_epoch.values())) != 1:
        raise TrainingFailed(f"{label}: could not read samples per epoch from {transcript}")
    # The thread count is part of a run's identity: the same seed repeats bit for bit only at
    # the same OMP_NUM_THREADS (float sums split differently across threads).
    threads = (env if env is not None else os.environ).get("OMP_NUM_THREADS")
    record = {"label": label, "wall_s": round(wall_s, 1), "epochs": len(per_epoch),
              "samples_per_epoch": per_epoch[0], "omp_num_threads": threads, "command": command}
    (run_dir / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_train_record(run_dir):
    """The train.json :func:`run_trainer` wrote, or {} when the run has none."""
    path = Path(run_dir) / "train.json"
    return json.loads(path.read_text()) if path.is_file() else {}
