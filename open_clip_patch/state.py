"""Per-sample FCCO state, indexed by a training sample's global id in [0, data_size).

Two layouts (``--fcco-state``, docs/algorithm.md §5):

- replicated: every rank holds all rows (as the reference implementation does); a step reads the
  rows of its local ids and, after the scalar all-gather, writes those of the whole global batch,
  so the replicas stay identical.
- sharded: rank r of K holds only the contiguous block of ids
  [r·⌈N/K⌉, min(N, (r+1)·⌈N/K⌉)) (:func:`block_of`), 1/K of the memory. Blocks (not id mod K) are
  torch.chunk's split of dim 0, i.e. DTensor's ``Shard(0)``, so torch.distributed.checkpoint
  reshards a K-rank checkpoint onto K′ ranks by itself; img2dataset ids of a shuffled batch are
  spread over the whole id space, so the owners' loads stay even
  (tests/test_state.py::test_blocks_share_shuffled_batches_evenly).

The owned rows live in one (rows, C) tensor: reading a batch is a single row gather and a single
host-to-device copy, and only the batch's rows ever leave the storage device.
"""
import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch


def last_occurrences(ids: torch.Tensor, rows: torch.Tensor):
    """(unique ids, the row of each id's last occurrence, how many rows were dropped): an id met
    twice in one global batch (resampling, a shard listed twice) has its update defined as the
    last write, in the gathered order (rank, then position); indexed assignment with duplicate
    indices is undefined in torch."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    dropped = ids.numel() - unique.numel()
    if dropped == 0:
        return ids, rows, 0
    position = torch.arange(ids.numel(), device=ids.device)
    last = torch.full((unique.numel(),), -1, dtype=torch.long, device=ids.device)
    last.scatter_reduce_(0, inverse, position, reduce="amax")
    return unique, rows[last.to(rows.device)], dropped


def block_size(data_size: int, world_size: int) -> int:
    """Ids per owner: ⌈data_size / world_size⌉ (the last owners may hold fewer, or none)."""
    return -(-int(data_size) // int(world_size))


def block_of(rank: int, world_size: int, data_size: int) -> Tuple[int, int]:
    """The ids [start, stop) rank ``rank`` owns in the sharded layout."""
    size = block_size(data_size, world_size)
    start = min(rank * size, data_size)
    return start, min(start + size, data_size)


def owner_of(ids: torch.Tensor, world_size: int, data_size: int) -> torch.Tensor:
    """The rank owning each id in the sharded layout."""
    return torch.div(ids, block_size(data_size, world_size), rounding_mode="floor")


class PerSampleState:
    """Named float columns of length ``data_size``, stored row-major on ``device``.

    ``columns`` maps each column name to its initial value (e.g. ``-inf`` for log u, the initial
    temperature for τ). ``shard=(rank, world_size)`` keeps only that rank's block of rows
    (:func:`block_of`); ids are global either way, and a sharded state reads and writes only the
    ids it owns.
    """

    def __init__(self, data_size: int, columns: Mapping[str, float], device="cpu",
                 dtype: torch.dtype = torch.float32, shard: Optional[Tuple[int, int]] = None):
        if int(data_size) != data_size or data_size <= 0:
            raise ValueError(f"data_size must be a positive integer, got {data_size!r}")
        if not columns:
            raise ValueError("PerSampleState needs at least one column")
        if not dtype.is_floating_point:
            raise ValueError(f"state dtype must be a floating point type, got {dtype}")
        self.data_size = int(data_size)
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self.start, self.stop = (0, self.data_size) if shard is None else block_of(
            self.shard[0], self.shard[1], self.data_size)
        self.columns = tuple(columns)
        self._column_index = {name: i for i, name in enumerate(self.columns)}
        self.values = torch.empty((self.stop - self.start, len(self.columns)), dtype=dtype,
                                  device=device)
        for name, initial in columns.items():
            self.values[:, self._column_index[name]].fill_(initial)
        self.last_shared = None   # sharded: (ids, rows) of the latest step's gather, for checks
        self.duplicate_ids = 0    # rows dropped because their id came again later in a write

    @property
    def sharded(self) -> bool:
        return self.shard is not None

    def owns(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the (global) ids whose rows this state holds."""
        return (ids >= self.start) & (ids < self.stop)

    def owner_of(self, ids: torch.Tensor) -> torch.Tensor:
        return owner_of(ids, self.shard[1] if self.sharded else 1, self.data_size)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def nbytes(self) -> int:
        """Bytes this process holds (a replica, or one shard)."""
        return self.values.numel() * self.values.element_size()

    def validate_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Return ``ids`` as a 1-D int64 tensor on the storage device, or raise ValueError."""
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids)
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"sample ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.dim() != 1:
            raise ValueError(f"sample ids must be 1-D, got shape {tuple(ids.shape)}")
        ids = ids.to(device=self.device, dtype=torch.long)
        outside = (ids < 0) | (ids >= self.data_size)
        if bool(outside.any()):
            bad = int(ids[outside][0])
            raise ValueError(
                f"sample id {bad} is outside [0, data_size={self.data_size}); "
                f"data_size must cover the dataset's whole id space")
        return ids

    def read(self, ids: torch.Tensor, device=None, dtype=None, validated: bool = False):
        """Rows of ``ids`` as a (len(ids), C) tensor, moved to ``device``/``dtype``.

        ``validated=True`` skips the id check for ids that already came out of
        :meth:`validate_ids` (the loss checks each step's ids once, not per access).
        """
        rows = self.values[self._local(ids if validated else self.validate_ids(ids))]
        return rows.to(device=device if device is not None else self.device,
                       dtype=dtype if dtype is not None else self.dtype)

    def write(self, ids: torch.Tensor, rows: torch.Tensor, validated: bool = False) -> None:
        """Overwrite the rows of ``ids``; ``rows`` may live on any device/dtype."""
        if not validated:
            ids = self.validate_ids(ids)
        if rows.shape != (ids.numel(), len(self.columns)):
            raise ValueError(f"expected rows of shape {(ids.numel(), len(self.columns))}, "
                             f"got {tuple(rows.shape)}")
        ids, rows, dropped = last_occurrences(ids, rows)
        if dropped:
            self._count_duplicates(dropped)
        self.values[self._local(ids)] = rows.detach().to(device=self.device, dtype=self.dtype)

    def _count_duplicates(self, dropped: int) -> None:
        first = self.duplicate_ids == 0
        self.duplicate_ids += dropped
        if first or self.duplicate_ids // 1000 > (self.duplicate_ids - dropped) // 1000:
            logging.warning(f"FCCO state: {self.duplicate_ids} duplicate sample id(s) within a "
                            f"global batch so far; each id keeps the u of its last occurrence "
                            f"(docs/algorithm.md §6)")

    def _local(self, ids: torch.Tensor) -> torch.Tensor:
        """Row positions of global ids in ``values``; a shard refuses ids it does not own."""
        if not self.sharded:
            return ids
        if not bool(self.owns(ids).all()):
            bad = int(ids[~self.owns(ids)][0])
            raise ValueError(f"sample id {bad} is not in this shard's ids "
                             f"[{self.start}, {self.stop})")
        return ids - self.start

    def unpack(self, rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Split (b, C) rows into a dict of (b,) columns by name."""
        return {name: rows[:, i] for name, i in self._column_index.items()}

    def pack(self, columns: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unpack`: stack named (b,) columns into (b, C) rows."""
        missing = set(self.columns) - set(columns)
        if missing:
            raise KeyError(f"missing state columns {sorted(missing)}")
        return torch.stack([columns[name] for name in self.columns], dim=1)

    def column(self, name: str) -> torch.Tensor:
        """A view of one column over the rows held here (for inspection and tests)."""
        return self.values[:, self._column_index[name]]

    def state_dict(self) -> Dict[str, object]:
        return {"columns": list(self.columns), "values": self.values}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        columns = tuple(state["columns"])
        values = state["values"]
        if columns != self.columns:
            raise ValueError(f"state columns {list(columns)} do not match {list(self.columns)}")
        if self.sharded and tuple(values.shape) == (self.data_size, len(self.columns)):
            values = values[self.start:self.stop]   # a whole table (replicated checkpoint)
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"state of shape {tuple(values.shape)} does not match "
                             f"data_size={self.data_size} x {len(self.columns)} columns"
                             + (f" (rows [{self.start}, {self.stop}) of it)" if self.sharded else ""))
        self.values.copy_(values)

    def __repr__(self) -> str:
        rows = f", rows [{self.start}, {self.stop})" if self.sharded else ""
        return (f"PerSampleState(data_size={self.data_size}{rows}, columns={list(self.columns)}, "
                f"{self.nbytes() / 2**20:.1f} MiB {self.dtype} on {self.device})")


def column_names(base: Sequence[str], modalities=("image", "text")) -> list:
    """``["log_u", "tau"] -> ["log_u_image", "log_u_text", "tau_image", "tau_text"]``."""
    return [f"{name}_{modality}" for name in base for modality in modalities]
