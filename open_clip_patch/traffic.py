"""Bytes each rank sends per training step, counted where the collectives are issued.

Only with ``--count-communication`` (``make bench-comm`` sets it): the hook
``count_communication`` then wraps the gradient reduction and, for the OpenCLIP baseline, the
module globals its loss communicates through; without the flag none of this is installed and
OpenCLIP's and Horovod's code runs untouched. The FCCO replica checks do not depend on it.

    .venv/bin/python tools/bench_comm.py --quick

Categories (per rank, per step):
  loss       the loss's collectives: FastCLIP's two all-gathers (comm.py) and, with sharded
             FCCO state, its all-to-all of old state rows; or OpenCLIP's feature gathers
             including the backward of its autograd all-gather;
  gradients  the gradient reduction: DDP's bucket all-reduces (seen by a DDP comm hook) or the
             allreduces of Horovod's DistributedOptimizer.
Other categories (REPLICA_CHECK) are reported as epoch totals, not per step.

Each collective is counted from the tensors actually passed to it, as the bytes this rank puts on
the wire in the standard bandwidth-optimal algorithm (K ranks, n = the tensor's bytes):
  all-gather       (K-1)·n            this rank's block reaches K-1 peers (ring or direct)
  all-reduce       2(K-1)·n/K         ring: reduce-scatter, then all-gather, of n/K chunks
  reduce-scatter   (K-1)·n_out        ring: K-1 partial sums of this rank's output size
  scatter          root: the K-1 chunks for the others; other ranks send nothing
  all-to-all       the K-1 chunks addressed to the others (uneven splits: the rows addressed
                   to the others, as the sharded FCCO state's row exchange sends them)
For K = 2 every algorithm gloo, NCCL or Horovod may pick sends exactly these amounts.

How OpenCLIP's ``--gather-with-grad`` communicates (torch 2.14, torch/distributed/nn/
functional.py): forward ``dist.all_gather`` of each b x d feature matrix; backward on NCCL/XCCL a
``reduce_scatter`` of the K gradient blocks, on other backends (gloo) an all-to-all emulated by K
``dist.scatter`` calls, rank i scattering its K blocks. Those modules call ``dist.<collective>``
through their module-global ``dist``; :func:`count_openclip_loss` points that name at a stand-in
that counts and forwards, so exactly what they send is counted, forward and backward.
Horovod's autograd ``hvd.allgather`` backward (horovod/torch/mpi_ops.py, HorovodAllgather)
all-reduces the whole K·b x d gradient and all-gathers each rank's row count (one int32).

Not counted: DDP's broadcast of module buffers from rank 0 before each forward (the same for
both methods), and one-off collectives at start-up (parameter broadcast, object broadcasts).
Counting costs a dictionary update per collective; nothing synchronises.
"""
import json
from collections import Counter
from functools import partial

import torch
import torch.distributed as dist

LOSS, GRADIENTS, REPLICA_CHECK = "loss", "gradients", "replica_check"
PER_STEP = (LOSS, GRADIENTS)


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class TrafficMeter:
    """Bytes sent and collectives issued by this rank, keyed by (category, collective)."""

    def __init__(self, world_size: int):
        self.world_size = int(world_size)
        self.sent = Counter()
        self.calls = Counter()
        self._reported_sent = Counter()
        self._reported_calls = Counter()

    def record(self, category: str, collective: str, sent_bytes: int) -> None:
        self.sent[category, collective] += int(sent_bytes)
        self.calls[category, collective] += 1

    def all_gather(self, category: str, tensor: torch.Tensor) -> None:
        self.record(category, "all_gather", (self.world_size - 1) * nbytes(tensor))

    def all_reduce(self, category: str, tensor: torch.Tensor) -> None:
        k = self.world_size
        self.record(category, "all_reduce", 2 * (k - 1) * nbytes(tensor) // k)

    def reduce_scatter(self, category: str, output: torch.Tensor) -> None:
        self.record(category, "reduce_scatter", (self.world_size - 1) * nbytes(output))

    def scatter(self, category: str, chunks, src: int) -> None:
        """``chunks`` is the root's list (None on the other ranks, which send nothing)."""
        sent = 0 if chunks is None else sum(nbytes(c) for i, c in enumerate(chunks) if i != src)
        self.record(category, "scatter", sent)

    def all_to_all(self, category: str, chunks) -> None:
        # Equal chunks (as in autograd's all-to-all): all but this rank's own leave the rank.
        total = sum(nbytes(c) for c in chunks)
        self.record(category, "all_to_all", total * (self.world_size - 1) // self.world_size)

    def all_to_all_rows(self, category: str, tensor: torch.Tensor, send_splits, rank: int):
        """An all-to-all with uneven splits (rows of ``tensor``): all but this rank's own."""
        row_bytes = nbytes(tensor) // max(tensor.shape[0], 1)
        sent = sum(n for peer, n in enumerate(send_splits) if peer != rank) * row_bytes
        self.record(category, "all_to_all", sent)

    def epoch_summary(self, steps: int) -> dict:
        """Per-step figures for everything recorded since the previous summary."""
        sent, calls = self.sent - self._reported_sent, self.calls - self._reported_calls
        self._reported_sent, self._reported_calls = self.sent.copy(), self.calls.copy()
        steps = max(int(steps), 1)
        summary = {"world_size": self.world_size, "steps": steps}
        for category in PER_STEP:
            summary[f"{category}_bytes_per_step"] = _per_step(
                sum(v for (c, _), v in sent.items() if c == category), steps)
            summary[f"{category}_collectives_per_step"] = {
                op: _per_step(n, steps) for (c, op), n in sorted(calls.items()) if c == category}
        summary["total_bytes_per_step"] = sum(summary[f"{c}_bytes_per_step"] for c in PER_STEP)
        others = {c: v for (c, _), v in sent.items() if c not in PER_STEP}
        if others:
            summary["other_bytes_in_epoch"] = others
        return summary


def _per_step(value, steps):
    per_step = value / steps
    return int(per_step) if per_step == int(per_step) else round(per_step, 1)


def format_summary(summary: dict) -> str:
    """One log line: a human part, then ``|`` and the summary as JSON (for tools to parse)."""
    def part(category, title):
        ops = ", ".join(f"{op} x{n}" for op, n in summary[f"{category}_collectives_per_step"].items())
        return f"{title} {summary[f'{category}_bytes_per_step']:,} B ({ops or 'none'})"

    return (f"{part(LOSS, 'loss collectives')}, {part(GRADIENTS, 'gradient reduction')}, "
            f"total {summary['total_bytes_per_step']:,} B | {json.dumps(summary)}")


# ---- gradient reduction ----------------------------------------------------------------------
def _counting_allreduce_hook(meter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    meter.all_reduce(GRADIENTS, bucket.buffer())
    return allreduce_hook(None, bucket)   # DDP's own averaging all-reduce, unchanged


def count_ddp_gradients(ddp_model, meter: TrafficMeter) -> None:
    """Count DDP's bucket all-reduces (before the first backward)."""
    ddp_model.register_comm_hook(state=meter, hook=_counting_allreduce_hook)


def count_horovod_gradients(optimizer, meter: TrafficMeter) -> None:
    """Count the allreduces a ``hvd.DistributedOptimizer`` submits from its gradient hooks."""
    submit_one = optimizer._allreduce_grad_async
    submit_group = optimizer._grouped_allreduce_grad_async

    def counted_one(p):
        submitted = submit_one(p)   # creates a zero gradient first if backward gave none
        meter.all_reduce(GRADIENTS, p.grad)
        return submitted

    def counted_group(params):
        for p in params:
            meter.all_reduce(GRADIENTS, p.grad)
        return submit_group(params)

    optimizer._allreduce_grad_async = counted_one
    optimizer._grouped_allreduce_grad_async = counted_group


# ---- OpenCLIP's loss -------------------------------------------------------------------------
class _CountingTorchDistributed:
    """Stands in for ``torch.distributed`` inside one module: counts the collectives that module
    calls (all_gather, scatter, reduce_scatter, all_to_all), forwards everything else."""

    def __init__(self, meter: TrafficMeter, category: str):
        self._meter, self._category = meter, category

    def __getattr__(self, name):
        return getattr(dist, name)

    def all_gather(self, tensor_list, tensor, *args, **kwargs):
        self._meter.all_gather(self._category, tensor)
        return dist.all_gather(tensor_list, tensor, *args, **kwargs)

    def scatter(self, tensor, scatter_list=None, src=None, *args, **kwargs):
        self._meter.scatter(self._category, scatter_list, src)
        return dist.scatter(tensor, scatter_list, src, *args, **kwargs)

    def reduce_scatter(self, output, input_list, *args, **kwargs):
        self._meter.reduce_scatter(self._category, output)
        return dist.reduce_scatter(output, input_list, *args, **kwargs)

    def all_to_all(self, output_list, input_list, *args, **kwargs):
        self._meter.all_to_all(self._category, input_list)
        return dist.all_to_all(output_list, input_list, *args, **kwargs)


class _CountingHorovod:
    """Stands in for ``horovod.torch`` inside OpenCLIP's loss: counts ``allgather`` and, when the
    result carries gradient, the allreduce + row-count allgather its backward performs."""

    def __init__(self, hvd, meter: TrafficMeter, category: str):
        self._hvd, self._meter, self._category = hvd, meter, category

    def __getattr__(self, name):
        return getattr(self._hvd, name)

    def allgather(self, tensor, *args, **kwargs):
        self._meter.all_gather(self._category, tensor)
        gathered = self._hvd.allgather(tensor, *args, **kwargs)
        if gathered.requires_grad:
            gathered.register_hook(partial(_count_horovod_allgather_backward, self._meter,
                                           self._category))
        return gathered


def _count_horovod_allgather_backward(meter, category, grad):
    meter.all_reduce(category, grad)
    meter.all_gather(category, torch.empty(1, dtype=torch.int32))


def count_openclip_loss(meter: TrafficMeter, horovod: bool) -> None:
    """Count what OpenCLIP's ClipLoss sends, forward and backward (see the module docstring)."""
    import open_clip.loss
    import torch.distributed.nn.functional as autograd_collectives

    if horovod:
        import horovod.torch as hvd

        open_clip.loss.hvd = _CountingHorovod(hvd, meter, LOSS)
        return
    stand_in = _CountingTorchDistributed(meter, LOSS)
    open_clip.loss.dist = stand_in               # gathers without gradient
    autograd_collectives.dist = stand_in          # torch.distributed.nn.all_gather and its backward
