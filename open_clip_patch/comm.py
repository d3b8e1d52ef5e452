"""The collectives an FCCO loss needs, behind one small interface.

A communicator has ``world_size``, ``rank`` and two gathers, each concatenating a tensor of the
same shape from every rank along dim 0 in rank order, without autograd:

- ``all_gather_no_grad(t)``: once per step, the stacked [image; text] features (2b x d).
- ``all_gather_scalars(t)``: once per step, the per-sample scalars with the ids packed in
  (float64, so ids up to 2**53 stay exact).
- ``all_to_all(t, send_splits, recv_splits)``: once per step with sharded FCCO state, the old
  rows each owner holds for the other ranks' local ids (rows of ``t`` go to the ranks in order,
  ``send_splits[s]`` of them to rank s; ``recv_splits[s]`` arrive from rank s).

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

    def all_to_all(self, tensor, send_splits, recv_splits, category: str = LOSS):
        return tensor.detach()

    def all_gather_object(self, obj) -> list:
        return [obj]

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

    def all_to_all(self, tensor: torch.Tensor, send_splits, recv_splits,
                   category: str = LOSS) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        send_splits, recv_splits = [int(n) for n in send_splits], [int(n) for n in recv_splits]
        if self.meter is not None:
            self.meter.all_to_all_rows(category, tensor, send_splits, self.rank)
        return self._all_to_all(tensor, send_splits, recv_splits, f"fastclip.{category}.rows")

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

    def _all_to_all(self, tensor, send_splits, recv_splits, name):
        received = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
        dist.all_to_all_single(received, tensor, output_split_sizes=recv_splits,
                               input_split_sizes=send_splits, group=self.group)
        return received

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (checkpoint-time only: not counted in the per-step traffic)."""
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
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

    def _all_to_all(self, tensor, send_splits, recv_splits, name):
        with torch.no_grad():
            received, counts = self._hvd.alltoall(tensor, splits=torch.tensor(send_splits,
                                                                                dtype=torch.int32),
                                                  name=name)
        if counts.tolist() != recv_splits:
            raise RuntimeError(f"rank {self.rank} expected rows {recv_splits} from the owners, "
                               f"received {counts.tolist()}")
        return received

    def all_gather_object(self, obj) -> list:
        return self._hvd.allgather_object(obj, name="fastclip.objects")


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


def check_shards(comm, state, what: str) -> int:
    """Sharded FCCO state has no replicas to compare, so check what every rank must agree on:
    the layout (data_size, world size, columns; each rank's block where state.block_of puts
    it), the rows of the latest step's gather (ids and new rows: the same on every rank), and
    that the owners hold exactly those rows. Raise ReplicaMismatch otherwise; returns the
    fingerprint of the layout and the latest gathered rows."""
    from .state import block_of

    if state.shard is None or (state.start, state.stop) != block_of(*state.shard,
                                                                    state.data_size):
        raise ReplicaMismatch(f"{what}: rank {comm.rank} holds rows [{state.start}, "
                              f"{state.stop}), not its block of the sharded layout")
    layout = torch.tensor([state.data_size, comm.world_size, len(state.columns)],
                          dtype=torch.float64)
    shared = [layout]
    if state.last_shared is not None:
        ids, rows = state.last_shared
        shared += [ids.double(), rows.double().reshape(-1)]
        once = torch.unique(ids, return_counts=True)
        single = once[0][once[1] == 1]
        mine = single[state.owns(single)]
        position = {int(i): p for p, i in enumerate(ids.tolist())}
        expected = rows[[position[int(i)] for i in mine.tolist()]].to(state.dtype)
        if not torch.equal(state.read(mine, validated=True), expected.to(state.device)):
            raise ReplicaMismatch(f"{what}: rank {comm.rank}'s shard does not hold the rows "
                                  f"it was sent for the ids it owns")
    return check_identical_across_ranks(comm, torch.cat(shared),
                                        f"{what} (layout and latest shared rows)")
