"""The collectives an FCCO loss needs, behind one small interface.

A communicator has ``world_size``, ``rank`` and two gathers, each concatenating a tensor of the
same shape from every rank along dim 0 in rank order, without autograd:

- ``all_gather_no_grad(t)``: once per step, the stacked [image; text] features (2b x d).
- ``all_gather_scalars(t)``: once per step, the per-sample scalars with the ids packed in
  (float64, so ids up to 2**53 stay exact).

A new backend (e.g. Horovod: ``hvd.allgather`` under ``torch.no_grad()``) only has to provide
these four members. Every rank must pass the same local batch size.
"""
import torch
import torch.distributed as dist

# torch 2.14 renamed all_gather_into_tensor to all_gather_single (same semantics).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class LocalComm:
    """World size 1: the gathers return their input (detached); no process group needed."""

    world_size = 1
    rank = 0

    def all_gather_no_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach()

    def all_gather_scalars(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach()

    def __repr__(self) -> str:
        return "LocalComm()"


class TorchDistributedComm:
    """torch.distributed (NCCL, gloo) over ``group`` (default: the default process group)."""

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("TorchDistributedComm needs an initialised torch.distributed "
                               "process group (init_process_group)")
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def _all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().contiguous()
        gathered = tensor.new_empty((self.world_size * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_single(gathered, tensor, group=self.group)
        return gathered

    def all_gather_no_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._all_gather(tensor)

    def all_gather_scalars(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._all_gather(tensor)

    def __repr__(self) -> str:
        return f"TorchDistributedComm(rank={self.rank}, world_size={self.world_size})"


def default_comm():
    """TorchDistributedComm when a process group with several ranks is up, else LocalComm."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributedComm()
    return LocalComm()
