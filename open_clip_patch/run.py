"""What one training run holds besides its flags: :class:`FastCLIPRun`.

The patched trainer hands the hooks only ``args``, its parsed flags. Everything a run builds or
learns on the way lives in one ``FastCLIPRun`` per ``args`` instead (docs/architecture.md), so
``args`` keeps only what was parsed. The hooks fill it in the order ``open_clip_train.main``
calls them:

    count_communication  traffic_meter    (with --count-communication, 2+ ranks)
    on_resume            resume_entry, resume_epoch
    get_data             data_size        (--data-size, else the training data's id space)
                         data_counters    (shared with the dataloader workers)
                         sample_guard     (webdataset: stops data with no valid sample)
                         id_ranges        (--train-data a::b: one id range per source)
    create_loss          gamma_schedule   (needs data_size: the data must come first)
                         state_group      (sharded FCCO state, 2+ ranks)
    restore_state        consumes resume_entry
    after_epoch_distributed  state_shards (the shard folder the next checkpoint refers to)
                         rank_streams (replicated, 2+ ranks: every rank's RNG streams)
"""
import logging
import weakref
from dataclasses import dataclass, field
from typing import Optional

from .indexing import DataCounters
from .schedules import GammaSchedule
from .traffic import TrafficMeter


@dataclass
class FastCLIPRun:
    data_size: Optional[int] = None          # the sample-id space, once known
    data_counters: DataCounters = field(default_factory=DataCounters)
    traffic_meter: Optional[TrafficMeter] = None
    resume_entry: Optional[dict] = None      # checked FastCLIP entry of --resume, until restored
    resume_epoch: Optional[int] = None
    gamma_schedule: Optional[GammaSchedule] = None
    state_group: object = None               # sharded state: the CPU group DCP runs over
    state_shards: Optional[dict] = None      # sharded state: the latest saved shard folder
    rank_streams: Optional[list] = None      # replicated, K > 1: every rank's RNG streams
    sample_guard: object = None              # webdataset training: indexing.SampleFlowGuard
    id_ranges: Optional[list] = None         # '::' sources: each one's id offset and size

    def resolve_data_size(self, infer, source: str) -> int:
        """``--data-size`` when given, else ``infer()`` (the training data's id space), once."""
        if self.data_size is None:
            self.data_size = infer()
            logging.info(f"FastCLIP: --data-size {self.data_size} ({source})")
        return self.data_size

    def required_data_size(self) -> int:
        if self.data_size is None:
            raise RuntimeError("FastCLIP: the loss was created before the training data, which "
                               "resolves --data-size (the sample-id space): build the data first")
        return self.data_size


# Keyed by id(args): argparse.Namespace defines __eq__ and so is unhashable. The finalizer drops
# the entry when args is collected, before its id can be reused (tests call main() repeatedly).
_RUNS = {}


def run_of(args) -> FastCLIPRun:
    """The run of these parsed flags, created on first use."""
    key = id(args)
    run = _RUNS.get(key)
    if run is None:
        run = _RUNS[key] = FastCLIPRun(data_size=getattr(args, "data_size", None))
        weakref.finalize(args, _RUNS.pop, key, None)
    return run
