"""Per-sample FCCO state, indexed by a training sample's global id in [0, data_size).

Every rank keeps a full replica (as the reference implementation does, docs/algorithm.md §5): a step
reads the rows of its local ids, and after the one scalar all-gather writes the rows of the whole
global batch, so all replicas stay identical. The columns live in one (data_size, C) tensor:
reading a batch is a single row gather and a single host-to-device copy, and only the batch's rows
ever leave the storage device.
"""
from typing import Dict, Mapping, Sequence

import torch


class PerSampleState:
    """Named float columns of length ``data_size``, stored row-major on ``device``.

    ``columns`` maps each column name to its initial value (e.g. ``-inf`` for log u, the initial
    temperature for τ).
    """

    def __init__(self, data_size: int, columns: Mapping[str, float], device="cpu",
                 dtype: torch.dtype = torch.float32):
        if int(data_size) != data_size or data_size <= 0:
            raise ValueError(f"data_size must be a positive integer, got {data_size!r}")
        if not columns:
            raise ValueError("PerSampleState needs at least one column")
        if not dtype.is_floating_point:
            raise ValueError(f"state dtype must be a floating point type, got {dtype}")
        self.data_size = int(data_size)
        self.columns = tuple(columns)
        self._column_index = {name: i for i, name in enumerate(self.columns)}
        self.values = torch.empty((self.data_size, len(self.columns)), dtype=dtype, device=device)
        for name, initial in columns.items():
            self.values[:, self._column_index[name]].fill_(initial)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def nbytes(self) -> int:
        """Bytes held by this replica (one per process)."""
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
        rows = self.values[ids if validated else self.validate_ids(ids)]
        return rows.to(device=device if device is not None else self.device,
                       dtype=dtype if dtype is not None else self.dtype)

    def write(self, ids: torch.Tensor, rows: torch.Tensor, validated: bool = False) -> None:
        """Overwrite the rows of ``ids``; ``rows`` may live on any device/dtype."""
        if not validated:
            ids = self.validate_ids(ids)
        if rows.shape != (ids.numel(), len(self.columns)):
            raise ValueError(f"expected rows of shape {(ids.numel(), len(self.columns))}, "
                             f"got {tuple(rows.shape)}")
        self.values[ids] = rows.detach().to(device=self.device, dtype=self.dtype)

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
        """A (data_size,) view of one column (for inspection and tests)."""
        return self.values[:, self._column_index[name]]

    def state_dict(self) -> Dict[str, object]:
        return {"columns": list(self.columns), "values": self.values}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        columns = tuple(state["columns"])
        values = state["values"]
        if columns != self.columns:
            raise ValueError(f"state columns {list(columns)} do not match {list(self.columns)}")
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"state of shape {tuple(values.shape)} does not match "
                             f"data_size={self.data_size} x {len(self.columns)} columns")
        self.values.copy_(values)

    def __repr__(self) -> str:
        return (f"PerSampleState(data_size={self.data_size}, columns={list(self.columns)}, "
                f"{self.nbytes() / 2**20:.1f} MiB {self.dtype} on {self.device})")


def column_names(base: Sequence[str], modalities=("image", "text")) -> list:
    """``["log_u", "tau"] -> ["log_u_image", "log_u_text", "tau_image", "tau_text"]``."""
    return [f"{name}_{modality}" for name in base for modality in modalities]
