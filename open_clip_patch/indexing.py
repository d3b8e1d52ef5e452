"""Per-sample ids for OpenCLIP's data pipelines (docs/architecture.md).

FCCO keeps a moving-average estimate per training sample, so every batch must carry the global
ids of its samples. CSV rows and synthetic samples use their index; webdataset samples use the
integer key img2dataset writes (``shard × 10⁴ + row``) in the ``.json`` and ``__key__``.
Ids travel with the images through shuffling, resampling and worker processes unchanged.
"""
import json
import logging
import multiprocessing
import os
import random
import re

import numpy as np
import torch
from torch.utils.data import Dataset

IMG2DATASET_SHARD_STRIDE = 10_000  # img2dataset's default number_sample_per_shard
_SHARD_NUMBER = re.compile(r"(\d+)\.tar$")


class WithSampleIds(Dataset):
    """A map-style dataset whose items gain their index as a trailing sample id."""

    def __init__(self, dataset, data_size):
        if len(dataset) > data_size:
            raise ValueError(f"the dataset has {len(dataset)} samples but --data-size is "
                             f"{data_size}: ids 0..{len(dataset) - 1} must lie in [0, data-size)")
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], index)


class DataCounters:
    """Counts shared with dataloader workers: corrupt-shard errors and skipped samples."""

    def __init__(self):
        self.shard_errors = multiprocessing.Value("l", 0)
        self.invalid_ids = multiprocessing.Value("l", 0)

    @staticmethod
    def _add(value):
        with value.get_lock():
            value.value += 1

    def count_shard_error(self, exn):
        """A webdataset handler: warn, count and continue (OpenCLIP's log_and_continue + a count)."""
        self._add(self.shard_errors)
        logging.warning(f"Handling webdataset error ({exn!r}). Skipping.")
        return True

    def snapshot(self):
        return {"shard_errors": self.shard_errors.value, "invalid_ids_skipped": self.invalid_ids.value}


def _key_of(sample):
    meta = sample.get("json")
    if isinstance(meta, (bytes, str)):
        meta = json.loads(meta)
    if isinstance(meta, dict) and "key" in meta:
        return meta["key"]
    return sample.get("__key__")


class WdsSampleId:
    """webdataset stage: adds ``sample_id`` from the sample's key, checked against data-size."""

    def __init__(self, data_size, skip_invalid=False, counters=None):
        self.data_size = data_size
        self.skip_invalid = skip_invalid
        self.counters = counters

    def __call__(self, sample):
        key = _key_of(sample)
        try:
            sample_id = int(key)
        except (TypeError, ValueError):
            return self._reject(sample, key, f"has no integer id (key {key!r})")
        if not 0 <= sample_id < self.data_size:
            return self._reject(sample, key, f"has id {sample_id} outside [0, data-size="
                                             f"{self.data_size})")
        sample["sample_id"] = sample_id
        return sample

    def _reject(self, sample, key, problem):
        message = f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')} {problem}"
        if not self.skip_invalid:
            raise ValueError(message + " (use --skip-invalid-ids to skip such samples)")
        if self.counters is not None:
            DataCounters._add(self.counters.invalid_ids)
        logging.warning("Skipping: " + message)
        return None  # webdataset's map drops None


def seed_worker_streams(key: str) -> None:
    """Seed this dataloader worker's torch, numpy and python streams from ``key``.

    The loader keeps its workers across epochs (persistent_workers), so without this their
    augmentation streams (random resized crop, ...) run on from epoch to epoch in an
    uninterrupted run but start afresh, from a new base seed, in a resumed one: a resume with
    --workers >= 1 was not bit-exact. Seeding at each pass makes them a function of the key."""
    value = random.Random(key).getrandbits(63)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


class SeededSampleShuffle:
    """webdataset stage: the sample shuffle buffer, seeded by (seed, rank, worker, epoch).

    webdataset's own ``shuffle`` seeds from the clock and the pid, so two runs with the same
    --seed saw different data orders (and a resumed run a different order than an uninterrupted
    one). Each rank and worker shuffles its own shard stream, so they get their own seeds.
    ``epoch`` is OpenCLIP's SharedEpoch (read when each pass starts) or an int. In a dataloader
    worker the stage also seeds the worker's global streams, which the augmentations after it
    draw from (:func:`seed_worker_streams`); with --workers 0 the augmentations draw from the
    main process's streams, which checkpoints carry.
    """

    def __init__(self, bufsize, initial, seed, rank, epoch):
        self.bufsize, self.initial = bufsize, initial
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def current_epoch(self):
        return self.epoch.get_value() if hasattr(self.epoch, "get_value") else int(self.epoch)

    def __call__(self, src):
        from webdataset.filters import _shuffle

        worker = torch.utils.data.get_worker_info()
        key = f"{self.seed}:{self.rank}:{worker.id if worker else 0}:{self.current_epoch()}"
        if worker is not None:
            seed_worker_streams("augment:" + key)
        return _shuffle(src, self.bufsize, self.initial, random.Random(key))


def id_space_of_shards(shard_paths):
    """The declared id space of img2dataset shards: (largest shard number + 1) × 10⁴."""
    numbers = []
    for path in shard_paths:
        match = _SHARD_NUMBER.search(os.path.basename(path))
        if match is None:
            raise ValueError(f"cannot infer --data-size from shard name {path!r} (not NNNNN.tar): "
                             f"give --data-size explicitly")
        numbers.append(int(match.group(1)))
    return (max(numbers) + 1) * IMG2DATASET_SHARD_STRIDE
