"""Two real gloo processes with TorchDistributedComm reproduce the single-process FCCO step.

Each rank encodes its half of the global batch with its own replica of a tiny linear encoder,
calls the loss, and averages parameter gradients with all_reduce as DDP does; the average must
equal the single-process gradient and every rank must end with the single-process state.
"""
import math
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from open_clip_patch.comm import LocalComm, TorchDistributedComm
from open_clip_patch.losses import FastCLIPLoss

WORLD_SIZE, LOCAL_BATCH, DATA_SIZE, DIM = 2, 4, 24, 5
CHECKED_VERSIONS = ("v3", "v2")


def batches():
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        ids = torch.randperm(DATA_SIZE, generator=gen)[:WORLD_SIZE * LOCAL_BATCH]
        yield (ids, torch.randn(len(ids), 6, generator=gen, dtype=torch.float64),
               torch.randn(len(ids), 4, generator=gen, dtype=torch.float64))


def initial_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(6, DIM, generator=gen, dtype=torch.float64),
            torch.randn(4, DIM, generator=gen, dtype=torch.float64),
            torch.tensor(math.log(1 / 0.07), dtype=torch.float64)]


def train_steps(version, comm, part):
    """Two steps (γ = 1, then 0.5) on the ``part`` slice of each global batch."""
    loss = FastCLIPLoss(version, DATA_SIZE, comm=comm, state_dtype=torch.float64)
    params = [p.clone().requires_grad_() for p in initial_params()]
    grads = []
    for step, (ids, x_img, x_txt) in enumerate(batches()):
        loss.gamma = 1.0 if step == 0 else 0.5
        loss.set_epoch(step)
        img = torch.nn.functional.normalize(x_img[part] @ params[0], dim=1)
        txt = torch.nn.functional.normalize(x_txt[part] @ params[1], dim=1)
        loss(img, txt, params[2].exp(), ids[part]).backward()
        step_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                      for p in params]
        for p in params:
            p.grad = None
        grads.append(step_grads)
    return grads, loss.state.values.clone()


def rank_main(rank, init_file, out_dir):
    torch.set_num_threads(1)     # a forked child must not reuse the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    try:
        comm = TorchDistributedComm()
        part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results = {}
        for version in CHECKED_VERSIONS:
            grads, state = train_steps(version, comm, part)
            for step_grads in grads:
                for g in step_grads:            # DDP: all-reduce, then divide by world size
                    dist.all_reduce(g)
                    g /= WORLD_SIZE
            results[version] = (grads, state)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    # fork: the ranks inherit the imported modules instead of re-importing open_clip (slow).
    mp.start_processes(rank_main, args=(str(tmp_path / "init"), str(tmp_path)),
                       nprocs=WORLD_SIZE, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    for version in CHECKED_VERSIONS:
        expected_grads, expected_state = train_steps(version, LocalComm(), slice(None))
        for rank in ranks:
            grads, state = rank[version]
            for step_grads, step_expected in zip(grads, expected_grads):
                for g, e in zip(step_grads, step_expected):
                    torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(state, expected_state, rtol=1e-12, atol=0.0)
