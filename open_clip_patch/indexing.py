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
from dataclasses import dataclass

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


SKIP_WARNING_EVERY = 1000  # after the first skipped sample, one summary line per this many


class DataCounters:
    """Counts shared with dataloader workers: corrupt-shard errors and skipped samples."""

    def __init__(self):
        self.shard_errors = multiprocessing.Value("l", 0)
        self.invalid_ids = multiprocessing.Value("l", 0)

    @staticmethod
    def _add(value):
        with value.get_lock():
            value.value += 1
            return value.value

    def count_invalid_id(self, message):
        """Count a skipped sample; warn on the first and then once per SKIP_WARNING_EVERY (a
        data set of bad ids once wrote 39,378 warnings in 45 s), every skip counted."""
        total = self._add(self.invalid_ids)
        if total == 1:
            logging.warning(f"Skipping: {message} (further skips are summarised every "
                            f"{SKIP_WARNING_EVERY})")
        elif total % SKIP_WARNING_EVERY == 0:
            logging.warning(f"Skipped {total} samples with invalid ids so far; latest: {message}")

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
    """webdataset stage: adds ``sample_id`` from the sample's key, checked against data-size.
    With several sources (``ranges``, :func:`source_id_ranges`) a key is checked against its
    source's own id space and moved by that source's offset, so no two sources share an id."""

    def __init__(self, data_size, skip_invalid=False, counters=None, ranges=None):
        self.data_size = data_size
        self.skip_invalid = skip_invalid
        self.counters = counters
        self.range_of_url = {url: r for r in ranges or () for url in r.urls}

    def __call__(self, sample):
        key = _key_of(sample)
        try:
            sample_id = int(key)
        except (TypeError, ValueError):
            return self._reject(sample, key, f"has no integer id (key {key!r})")
        offset, size = 0, self.data_size
        if self.range_of_url:
            source = self.range_of_url[sample.get("__url__")]
            offset, size = source.offset, source.size
        if not 0 <= sample_id < size:
            where = f"its source's id space [0, {size})" if self.range_of_url else \
                f"[0, data-size={size})"
            return self._reject(sample, key, f"has id {sample_id} outside {where}")
        sample["sample_id"] = offset + sample_id
        return sample

    def _reject(self, sample, key, problem):
        message = f"sample {sample.get('__key__')!r} of shard {sample.get('__url__')} {problem}"
        if not self.skip_invalid:
            raise ValueError(message + " (use --skip-invalid-ids to skip such samples)")
        if self.counters is not None:
            self.counters.count_invalid_id(message)
        else:
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


@dataclass(frozen=True)
class IdRange:
    """One ``::`` source of the training data and the ids it owns: [offset, offset + size)."""
    source: str
    offset: int
    size: int
    urls: tuple

    def describe(self):
        return {"source": self.source, "offset": self.offset, "size": self.size}


def source_id_ranges(train_data: str, expand) -> list:
    """Disjoint id ranges for the sources of ``--train-data a::b``: each source's declared id
    space (:func:`id_space_of_shards`), one after the other. img2dataset numbers every set from
    00000, so two sets read as one shared ids 0-31 and so one u. A shard listed in two sources
    cannot be told apart and is refused. ``expand`` is OpenCLIP's expand_urls."""
    ranges, offset, owner = [], 0, {}
    for source in train_data.split("::"):
        urls = tuple(expand(source)[0])
        for url in urls:
            if url in owner:
                raise ValueError(f"shard {url} is listed in two '::' sources ({owner[url]!r} and "
                                 f"{source!r}): their samples would share ids and FCCO state")
            owner[url] = source
        if not all(_SHARD_NUMBER.search(os.path.basename(url)) for url in urls):
            raise ValueError(f"cannot give the '::' source {source!r} its own id range: its "
                             f"shards are not all named NNNNN.tar (img2dataset), so its id "
                             f"space is unknown")
        size = id_space_of_shards(urls)
        ranges.append(IdRange(source, offset, size, urls))
        offset += size
    return ranges


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


class NoValidSamples(RuntimeError):
    """The training data yields no valid sample: stop instead of reading it forever."""


class SampleFlowGuard:
    """Stops a webdataset training pipeline that reads shards but yields no valid sample.

    OpenCLIP's ``with_epoch`` repeats the pipeline until the epoch's batches are full, and the
    resampled shard list never ends, so a data set of empty tars, or of samples all skipped
    (--skip-invalid-ids), spun forever (baseline too). Two stages share this object in each
    worker: :meth:`read` wraps the tar reader (counts the shards opened and the samples read),
    :meth:`passed` follows the last per-sample stage (counts the valid samples). It raises
    :class:`NoValidSamples`, one line naming the shards and the counts, when
      - a pass over this worker's shards ends without a valid sample (the shard list is finite);
      - more samples than the shuffle buffer holds were read since the last valid one
        (``sample_limit``): all the others went down the pipeline and none was valid;
      - ``shard_limit`` shards in a row yielded no sample at all (empty tars, resampled).
    """

    def __init__(self, num_shards, counters, sample_limit, shard_limit=None):
        self.counters = counters
        self.sample_limit = sample_limit
        self.shard_limit = shard_limit or max(1000, 10 * num_shards)
        self._reset()

    def _reset(self):
        self.shards, self.shards_opened, self.samples_read = [], 0, 0

    def _urls(self, src):
        for item in src:
            self.shards_opened += 1
            if len(self.shards) < 5 and item.get("url") not in self.shards:
                self.shards.append(item.get("url"))
            if self.shards_opened >= self.shard_limit and self.samples_read == 0:
                self._stop(f"{self.shards_opened} shards in a row held no sample")
            yield item

    def read(self, tar_stage):
        return _GuardedReader(self, tar_stage)

    def passed(self, src):
        """The last stage before batching: counts the valid samples of this pass."""
        valid = 0
        for sample in src:
            valid += 1
            self._reset()
            yield sample
        if valid == 0 and self.shards_opened:
            self._stop("a whole pass over this worker's shards ended")

    def _count_read(self):
        self.samples_read += 1
        if self.samples_read > self.sample_limit:
            self._stop(f"{self.samples_read} samples were read in a row")

    def _stop(self, what):
        worker = torch.utils.data.get_worker_info()
        counts = self.counters.snapshot() if self.counters is not None else {}
        shards = ", ".join(str(s) for s in self.shards) + (", ..." if self.shards_opened > 5
                                                            else "")
        raise NoValidSamples(
            f"no valid training sample: {what} without one (data worker "
            f"{worker.id if worker else 0}; shards {shards}; {self.shards_opened} shard reads, "
            f"{self.samples_read} samples read, {counts.get('invalid_ids_skipped', 0)} skipped "
            f"for invalid ids, {counts.get('shard_errors', 0)} shard errors so far)")


class _GuardedReader:
    """The tar reader stage with the guard counting its shards and samples (a class, not a
    closure, so the pipeline stays picklable for spawned workers)."""

    def __init__(self, guard, tar_stage):
        self.guard, self.tar_stage = guard, tar_stage

    def __call__(self, src):
        self.guard._reset()
        for sample in self.tar_stage(self.guard._urls(src)):
            self.guard._count_read()
            yield sample
