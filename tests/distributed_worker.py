"""The cases of tests/test_distributed.py, run by every rank of a 2-rank job.

One job runs all cases on the tiny model (``fastclip-tiny-vit``, dropout 0) and saves what the
tests compare to ``OUT_DIR/rank<r>.pt``:
  step/<version>/<dtype>     one FastCLIP step (v1, v2, v3; float32, float64) on the rank's half
                             of a fixed global batch: reduced gradients, FCCO state, bytes sent
  baseline/<dtype>           the same for OpenCLIP's ClipLoss --local-loss --gather-with-grad
  three_steps/<version>      the FCCO state after each of 3 optimizer steps, and whether an
                             altered replica on rank 1 is caught afterwards
  layouts/<version>/<layout> 3 loss steps on fixed float64 features, replicated vs sharded
                             state (:func:`layouts_case`; also run on 1 and 4 gloo ranks by
                             :func:`run_layout_rank`)
Gradients are reduced the way the trainer reduces them: DDP (gloo) or Horovod's
DistributedOptimizer. ``reference_*`` compute the single-process results the tests expect.

Horovod ranks run this file as a script (``horovodrun -np 2 -H localhost:2 --gloo python
distributed_worker.py OUT_DIR``); torch.distributed ranks are forked by the test and call
:func:`run_ddp_rank`.
"""
import os
import sys
from argparse import Namespace
from datetime import timedelta

import torch

import open_clip_patch  # noqa: F401  (registers fastclip-tiny-vit)
import open_clip
from open_clip_patch.comm import (HorovodComm, LocalComm, ReplicaMismatch, TorchDistributedComm,
                                  check_identical_across_ranks, check_shards, create_comm)
from open_clip_patch.losses import FastCLIPLoss
from open_clip_patch.versions import VERSIONS as LOSS_VERSIONS
from open_clip_patch.traffic import (TrafficMeter, count_ddp_gradients, count_horovod_gradients,
                                     count_openclip_loss)

WORLD_SIZE, LOCAL_BATCH, DATA_SIZE = 2, 4, 40
VERSIONS = ("v1", "v2", "v3")
DTYPES = (torch.float32, torch.float64)
THREE_STEP_VERSIONS = ("v2", "v3")
MODEL = "fastclip-tiny-vit"


# ---- inputs and models ---------------------------------------------------------------------
def global_batch(step=0, dtype=torch.float32):
    """(images, texts, ids) of WORLD_SIZE * LOCAL_BATCH pairs; ids overlap between steps."""
    gen = torch.Generator().manual_seed(100 + step)
    n = WORLD_SIZE * LOCAL_BATCH
    images = torch.randn(n, 3, 32, 32, generator=gen, dtype=dtype)
    texts = torch.randint(1, 49408, (n, 32), generator=gen)
    ids = torch.randperm(DATA_SIZE, generator=gen)[:n]
    return images, texts, ids


def tiny_model(dtype, version=None):
    """The same initial weights on every call; the logit scale is frozen where the version's τ
    is not a learnable global one (as the trainer's temperature hook does)."""
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL, output_dict=True).to(dtype)
    if version is not None and not LOSS_VERSIONS[version].learnable_global_tau:
        model.logit_scale.requires_grad_(False)
    return model


def fastclip_loss(version, dtype, comm):
    return FastCLIPLoss(version, DATA_SIZE, comm=comm, state_dtype=dtype)


def openclip_loss(rank, world_size, horovod=False):
    return open_clip.ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1,
                              rank=rank, world_size=world_size, use_horovod=horovod)


def forward_backward(model, loss_fn, images, texts, ids):
    out = model(images, texts)
    extra = {"sample_ids": ids} if isinstance(loss_fn, FastCLIPLoss) else {}
    loss_fn(out["image_features"], out["text_features"], out["logit_scale"], **extra).backward()


def gradients(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- backends: how a rank wraps the model and reduces gradients ----------------------------
def comm_from_flags(meter=None, **flags):
    """The communicator the trainer's hook would build for these OpenCLIP flags."""
    return create_comm(Namespace(**{"horovod": False, "distributed": False, **flags}), meter)


class DDPBackend:
    horovod = False

    def __init__(self):
        self.rank = torch.distributed.get_rank()

    def comm(self, meter):
        comm = comm_from_flags(meter, distributed=True)
        assert isinstance(comm, TorchDistributedComm) and comm.meter is meter, comm
        return comm

    def wrap(self, model, meter, lr=0.0):
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        count_ddp_gradients(ddp, meter)
        return ddp, torch.optim.AdamW(model.parameters(), lr=lr)

    def reduce(self, optimizer):
        """DDP has already averaged the gradients during backward."""


class HorovodBackend:
    horovod = True

    def __init__(self):
        import horovod.torch as hvd

        self.hvd = hvd
        self.rank = hvd.rank()

    def comm(self, meter):
        comm = comm_from_flags(meter, horovod=True, distributed=True)
        assert isinstance(comm, HorovodComm) and comm.meter is meter, comm
        return comm

    def wrap(self, model, meter, lr=0.0):
        optimizer = self.hvd.DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=lr),
                                                  named_parameters=model.named_parameters())
        count_horovod_gradients(optimizer, meter)
        return model, optimizer

    def reduce(self, optimizer):
        optimizer.synchronize()  # wait for the allreduces; p.grad now holds the average


# ---- the cases ------------------------------------------------------------------------------
def one_step_case(backend, dtype, version=None):
    """One step on this rank's half of the global batch: FastCLIP ``version`` or the baseline."""
    model = tiny_model(dtype, version)
    meter = TrafficMeter(WORLD_SIZE)
    wrapped, optimizer = backend.wrap(model, meter)
    if version is None:
        count_openclip_loss(meter, horovod=backend.horovod)
        loss_fn = openclip_loss(backend.rank, WORLD_SIZE, backend.horovod)
    else:
        loss_fn = fastclip_loss(version, dtype, backend.comm(meter))
    images, texts, ids = global_batch(dtype=dtype)
    part = slice(backend.rank * LOCAL_BATCH, (backend.rank + 1) * LOCAL_BATCH)
    forward_backward(wrapped, loss_fn, images[part], texts[part], ids[part])
    backend.reduce(optimizer)
    result = {"grads": gradients(model), "sent": dict(meter.sent), "calls": dict(meter.calls),
              "trainable_bytes": sum(p.numel() * p.element_size()
                                     for p in model.parameters() if p.requires_grad)}
    if version is not None:
        result["state"] = loss_fn.state.values.clone()
    return result


def three_steps_case(backend, version, steps=3):
    """AdamW steps with γ = 1 then 0.5; the state after each, then a replica altered on rank 1."""
    model = tiny_model(torch.float32, version)
    meter = TrafficMeter(WORLD_SIZE)
    wrapped, optimizer = backend.wrap(model, meter, lr=1e-3)
    comm = backend.comm(meter)
    loss_fn = fastclip_loss(version, torch.float32, comm)
    part = slice(backend.rank * LOCAL_BATCH, (backend.rank + 1) * LOCAL_BATCH)
    states, fingerprints = [], []
    for step in range(steps):
        loss_fn.gamma = 1.0 if step == 0 else 0.5
        images, texts, ids = global_batch(step)
        optimizer.zero_grad()
        forward_backward(wrapped, loss_fn, images[part], texts[part], ids[part])
        optimizer.step()   # Horovod's step waits for its allreduces first
        states.append(loss_fn.state.values.clone())
        fingerprints.append(check_identical_across_ranks(comm, loss_fn.state.values, "test"))
    if backend.rank == 1:   # the last column of a sample the last step touched
        loss_fn.state.values[ids[0], -1] += 1.0
    try:
        check_identical_across_ranks(comm, loss_fn.state.values, "altered replica")
        caught = ""
    except ReplicaMismatch as error:
        caught = str(error)
    return {"states": states, "fingerprints": fingerprints, "caught": caught}


LAYOUT_VERSIONS = ("v0", "v1", "v2", "v3", "isogclr")
LAYOUT_BATCH, LAYOUT_DIM, LAYOUT_DATA = 3, 8, 37


def layout_inputs(step, world):
    gen = torch.Generator().manual_seed(step)
    n = world * LAYOUT_BATCH
    image, text = (torch.nn.functional.normalize(torch.randn(n, LAYOUT_DIM, generator=gen,
                                                             dtype=torch.float64), dim=1)
                   for _ in range(2))
    return image, text, torch.randperm(LAYOUT_DATA, generator=gen)[:n]


def layouts_case(comm, version, layout, steps=3, world=None):
    """The loss alone, 3 steps (γ 1, then 0.6) of a fixed global batch split over the ranks:
    per-step losses, the gradients of this rank's features and the rows this rank holds.
    One process (``world``: the job it stands for) takes the whole global batch."""
    loss_fn = FastCLIPLoss(version, LAYOUT_DATA, comm=comm, state_dtype=torch.float64,
                           state_layout=layout)
    world = world or comm.world_size
    part = (slice(comm.rank * LAYOUT_BATCH, (comm.rank + 1) * LAYOUT_BATCH)
            if comm.world_size > 1 else slice(None))
    meter = getattr(comm, "meter", None)
    before = dict(meter.sent) if meter is not None else {}
    losses, grads = [], []
    for step in range(steps):
        image, text, ids = layout_inputs(step, world)
        image, text = image[part].requires_grad_(), text[part].requires_grad_()
        loss_fn.gamma = 1.0 if step == 0 else 0.6
        value = loss_fn(image, text, torch.tensor(10.0, dtype=torch.float64), ids[part])
        value.backward()
        losses.append(value.detach())
        grads.append(torch.cat([image.grad, text.grad]))
    state = loss_fn.state
    sent = {k: v - before.get(k, 0) for k, v in (meter.sent if meter else {}).items()}
    return {"losses": torch.stack(losses), "grads": torch.stack(grads),
            "rows": (state.start, state.stop), "values": state.values.clone(),
            "sharded": state.sharded, "sent": sent,
            "shard_checks": shard_check_cases(comm, state) if state.sharded else None}


def _caught(check):
    try:
        check()
    except ReplicaMismatch as error:
        return str(error)
    return ""


def shard_check_cases(comm, state):
    """comm.check_shards on intact shards, then on two alterations: rank 1's copy of the last
    step's gathered rows differs for an id rank 0 owns (every rank reaches the fingerprint
    comparison), and every rank alters a row it owns of that step (each fails its own check;
    only when every rank owns one, so that none waits in the comparison alone)."""
    intact = _caught(lambda: check_shards(comm, state, "intact"))
    ids, rows = state.last_shared
    altered_rows = rows.clone()
    if comm.rank == 1:   # layout_inputs' last batch always holds ids of rank 0's block
        altered_rows[int((state.owner_of(ids) == 0).nonzero()[0])] += 1.0
    state.last_shared = (ids, altered_rows)
    gathered = _caught(lambda: check_shards(comm, state, "altered gather"))
    state.last_shared = (ids, rows)
    owners = state.owner_of(ids)
    owned = None
    if bool((torch.bincount(owners, minlength=comm.world_size) > 0).all()):
        mine = ids[owners == comm.rank][:1]
        state.write(mine, state.read(mine, validated=True) + 1.0, validated=True)
        owned = _caught(lambda: check_shards(comm, state, "altered shard"))
    return {"intact": intact, "gathered": gathered, "owned": owned}


def run_layout_cases(comm):
    return {f"layouts/{version}/{layout}": layouts_case(comm, version, layout)
            for version in LAYOUT_VERSIONS for layout in ("replicated", "sharded")}


def run_layout_rank(rank, world_size, init_file, out_dir):
    """One gloo rank of a ``world_size``-rank job running only the layout cases."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size, timeout=timedelta(seconds=120))
    try:
        save(run_layout_cases(TorchDistributedComm(meter=TrafficMeter(world_size))), out_dir,
             rank)
    finally:
        torch.distributed.destroy_process_group()


def run_all_cases(backend):
    results = {"backend": "horovod" if backend.horovod else "ddp"}
    for dtype in DTYPES:
        for version in VERSIONS:
            results[f"step/{version}/{dtype}"] = one_step_case(backend, dtype, version)
        results[f"baseline/{dtype}"] = one_step_case(backend, dtype)
    for version in THREE_STEP_VERSIONS:
        results[f"three_steps/{version}"] = three_steps_case(backend, version)
    results.update(run_layout_cases(backend.comm(TrafficMeter(WORLD_SIZE))))
    return results


def save(results, out_dir, rank):
    path = os.path.join(out_dir, f"rank{rank}.pt")
    torch.save(results, path + ".tmp")
    os.replace(path + ".tmp", path)


# ---- single-process references --------------------------------------------------------------
def one_process_comm():
    comm = comm_from_flags()
    assert isinstance(comm, LocalComm), comm
    return comm


def reference_step(dtype, version=None):
    model = tiny_model(dtype, version)
    loss_fn = openclip_loss(0, 1) if version is None else fastclip_loss(version, dtype,
                                                                         one_process_comm())
    forward_backward(model, loss_fn, *global_batch(dtype=dtype))
    return {"grads": gradients(model),
            "state": None if version is None else loss_fn.state.values.clone()}


def reference_horovod_baseline(dtype):
    """What OpenCLIP's --local-loss --gather-with-grad computes under Horovod, in one process:
    HorovodAllgather.backward allreduces the gathered features' gradient with average=True, so
    their gradient (the features' part as negatives of other ranks' anchors) is divided by K,
    where torch.distributed.nn.all_gather sums it. Each rank's local loss, averaged as Horovod
    averages the parameter gradients."""
    k, b = WORLD_SIZE, LOCAL_BATCH
    model = tiny_model(dtype)
    images, texts, _ = global_batch(dtype=dtype)
    out = model(images, texts)
    image, text, scale = out["image_features"], out["text_features"], out["logit_scale"]
    # the same values, with the gradient through the gathered copies scaled by 1/K
    gathered_image = image.detach() + (image - image.detach()) / k
    gathered_text = text.detach() + (text - text.detach()) / k
    total = 0.0
    for rank in range(k):
        local = slice(rank * b, (rank + 1) * b)
        labels = torch.arange(b) + rank * b
        per_image = scale * image[local] @ gathered_text.T
        per_text = scale * text[local] @ gathered_image.T
        total = total + (torch.nn.functional.cross_entropy(per_image, labels)
                         + torch.nn.functional.cross_entropy(per_text, labels)) / 2 / k
    total.backward()
    return {"grads": gradients(model), "state": None}


def reference_three_steps(version, steps=3):
    model = tiny_model(torch.float32, version)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = fastclip_loss(version, torch.float32, one_process_comm())
    states = []
    for step in range(steps):
        loss_fn.gamma = 1.0 if step == 0 else 0.5
        optimizer.zero_grad()
        forward_backward(model, loss_fn, *global_batch(step))
        optimizer.step()
        states.append(loss_fn.state.values.clone())
    return states


# ---- entry points ---------------------------------------------------------------------------
def run_ddp_rank(rank, init_file, out_dir):
    """One torch.distributed rank (forked by the test): gloo, CPU, one thread."""
    torch.set_num_threads(1)   # a forked child must not reuse the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    try:
        save(run_all_cases(DDPBackend()), out_dir, rank)
    finally:
        torch.distributed.destroy_process_group()


def run_horovod_rank(out_dir):
    import horovod.torch as hvd

    torch.set_num_threads(1)
    hvd.init()
    assert hvd.size() == WORLD_SIZE, f"expected {WORLD_SIZE} Horovod ranks, got {hvd.size()}"
    try:
        save(run_all_cases(HorovodBackend()), out_dir, hvd.rank())
    finally:
        hvd.shutdown()


if __name__ == "__main__":
    run_horovod_rank(sys.argv[1])
