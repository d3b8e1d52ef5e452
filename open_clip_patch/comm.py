"""The collectives an FCCO loss needs, behind one small interface.

A communicator has ``world_size``, ``rank`` and two gathers, each concatenating a tensor of the
same shape from every rank along dim 0 in rank order, without autograd:

- ``all_gather_no_grad(t)``: once per step, the stacked [image; text] features (2b x d).
- ``all_gather_scalars(t)``: once per step, the per-sample scalars with the ids packed in
  (float64, so ids up to 2**53 stay exact).

Backends follow OpenCLIP's own flags (``create_comm``): ``--horovod`` gives :class:`HorovodComm`
(``hvd.allgather``), a torch.distributed process group (torchrun, SLURM ``srun``) gives
:class:`TorchDistributedComm`, and one process gives :class:`LocalComm`, which issues no
collective at all. The distributed backends count the bytes they send into an optional
:class:`~open_clip_patch.traffic.TrafficMeter` (the trainer passes one with
``--count-communication``), under the category the caller names ("loss" for the step's two
gathers). Every rank must pass the same local batch size.

This is the only module of the overlay that asks torch.distributed or Horovod for ranks.
"""
import hashlib

import torch
import torch.distributed as dist

from .traffic import LOSS, REPLICA_CHECK

# torch 2.14 renamed all_gather_into_tensor to all_gather_single (same semantics).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class ReplicaMismatch(RuntimeError):
    """State that every rank must hold identically differs between ranks."""


class LocalComm:
    """World size 1: the gathers return their input (detached); no process group needed."""

    world_size = 1
    rank = 0

    def all_gather_no_grad(self, tensor: torch.Tensor, category: str = LOSS) -> torch.Tensor:
        return tensor.detach()

    def all_gather_scalars(self, tensor: torch.Tensor, category: str = LOSS) -> torch.Tensor:
        return tensor.detach()

    def __repr__(self) -> str:
        return "LocalComm()"


class _CountingComm:
    """The two public gathers on top of a subclass's ``_all_gather(tensor, name)``, with byte
    accounting; ``name`` tells Horovod which collective this is (the same on every rank)."""

    def __init__(self, world_size: int, rank: int, meter=None):
        self.world_size = world_size
        self.rank = rank
        self.meter = meter

    def _counted_gather(self, tensor: torch.Tensor, category: str, name: str) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        if self.meter is not None:
            self.meter.all_gather(category, tensor)
        return self._all_gather(tensor, f"fastclip.{category}.{name}")

    def all_gather_no_grad(self, tensor: torch.Tensor, category: str = LOSS) -> torch.Tensor:
        return self._counted_gather(tensor, category, "features")

    def all_gather_scalars(self, tensor: torch.Tensor, category: str = LOSS) -> torch.Tensor:
        return self._counted_gather(tensor, category, "scalars")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


class TorchDistributedComm(_CountingComm):
    """torch.distributed (NCCL, gloo) over ``group`` (default: the default process group)."""

    def __init__(self, group=None, meter=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchDistributedComm needs an initialised torch.distributed "
                               "process group (init_process_group)")
        super().__init__(dist.get_world_size(group), dist.get_rank(group), meter)
        self.group = group

    def _all_gather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        gathered = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_single(gathered, tensor, group=self.group)
        return gathered


class HorovodComm(_CountingComm):
    """Horovod (Gloo, MPI, NCCL): ``hvd.allgather`` outside autograd; needs ``hvd.init()``."""

    def __init__(self, meter=None):
        import horovod.torch as hvd

        super().__init__(hvd.size(), hvd.rank(), meter)
        self._hvd = hvd

    def _all_gather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        # A fixed name per purpose lets Horovod's response cache skip renegotiation each step.
        with torch.no_grad():
            return self._hvd.allgather(tensor, name=name)


def create_comm(args, meter=None):
    """The backend OpenCLIP's flags chose: ``--horovod``, else torch.distributed when the trainer
    initialised a process group (torchrun / SLURM), else one process."""
    if getattr(args, "horovod", False):
        import horovod.torch as hvd

        return HorovodComm(meter) if hvd.size() > 1 else LocalComm()
    if getattr(args, "distributed", False) and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedComm(meter=meter)
    return LocalComm()


def fingerprint(tensor: torch.Tensor) -> int:
    """A 48-bit hash of the tensor's bytes (fits a float64 exactly, so it can be all-gathered)."""
    data = tensor.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy()
    return int.from_bytes(hashlib.blake2b(data, digest_size=6).digest(), "little")


def check_identical_across_ranks(comm, tensor: torch.Tensor, what: str) -> int:
    """Raise ReplicaMismatch unless every rank holds bit-identical ``tensor``; one all-gather of
    one number (counted under REPLICA_CHECK, not per-step traffic). Returns the fingerprint."""
    mine = fingerprint(tensor)
    if comm.world_size == 1:
        return mine
    everyone = comm.all_gather_scalars(torch.tensor([float(mine)], dtype=torch.float64),
                                       category=REPLICA_CHECK)
    differing = [rank for rank, value in enumerate(everyone.tolist()) if int(value) != mine]
    if differing:
        raise ReplicaMismatch(f"{what} differs between ranks: rank {comm.rank} holds fingerprint "
                              f"{mine:012x}, ranks {differing} hold another")
    return mine
