"""FastCLIP state in OpenCLIP checkpoints: one key, checked on resume, written atomically.

Everything FastCLIP adds to a checkpoint lives under ``checkpoint["fastclip"]`` and comes from
the overlay objects' ``state_dict()``: the loss (per-sample u, and for per-sample τ the τ values
and their optimizer moments), the τ learning-rate schedule, and the RNG streams (so a resumed run
draws the same data order and augmentations as an uninterrupted one). The γ schedule is a pure
function of the epoch.

Sharded FCCO state (``--fcco-state sharded``, K > 1 ranks) is not in the .pt: every rank writes
its block with torch.distributed.checkpoint into ``epoch_N.fcco/`` beside ``epoch_N.pt`` (a
temporary folder, renamed once complete, before the .pt that refers to it is written, so
``--resume latest`` always finds a complete pair).

RNG streams (torch, numpy, python) are those at the end of the epoch, after upstream's
validation, which only rank 0 runs: rank 0's are captured into the .pt as it is written; every
other rank's (nothing draws from them between the epoch's end and the save) into its shard
(sharded) or gathered into the .pt's ``rng_ranks`` (replicated, K > 1). Resume rules:
  same K        every rank restores its own streams: bit-exact on CPU, either --fcco-state;
  another K′    the state is resharded (DCP) or sliced from the whole table; the streams restart
                from (--seed, rank, epoch), which the log says (the model, optimizer and FCCO
                state continue; augmentations and the CSV/synthetic order do not);
  whole → shard a replicated / one-process checkpoint is sliced into blocks; RNG as above.
Dataloader workers reseed their own streams at each epoch (indexing.seed_worker_streams).
A mismatched --data-size, version or column set is refused either way.

    python -m pytest -q tests/test_checkpoint.py
"""
import logging
import os
import random
import shutil
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

CHECKPOINT_KEY = "fastclip"
FORMAT_VERSION = 1


class CheckpointMismatch(RuntimeError):
    """A checkpoint that cannot continue this run's FastCLIP state."""


def rng_state():
    # Only tensors and plain Python values: OpenCLIP loads checkpoints with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def seed_rank_streams(seed, rank, epoch):
    """Distinct, reproducible RNG streams per rank for a resumed multi-process run.

    A checkpoint is written by rank 0 and carries only its streams; restoring them on every
    rank would give all ranks the same augmentations, so each rank reseeds instead."""
    value = seed + rank + 100_003 * epoch
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def restore_rng_streams(saved, seed, rank, epoch, why=""):
    """Continue bit-exactly from this rank's saved streams when the checkpoint has them (one
    process; every rank of a sharded checkpoint resumed at the same world size); else reseed
    from (seed, rank, epoch) (:func:`seed_rank_streams`) and say so (``why``)."""
    if saved is not None:
        set_rng_state(saved)
        return
    seed_rank_streams(seed, rank, epoch)
    if rank == 0:
        logging.warning(f"FastCLIP resume: {why}; the torch, numpy and python RNG streams of "
                        f"every rank restart from (--seed, rank, epoch {epoch}), so the "
                        f"augmentations and the CSV/synthetic data order are not those of an "
                        f"uninterrupted run; the model, optimizer and FCCO state are")


def fastclip_entry(args, data_size, loss, scheduler, shards=None, rank_streams=None):
    """What a FastCLIP run adds to its checkpoint (references to the live state, no copies).
    Sharded state stays in its DCP folder (``shards``: its name and world size); replicated
    K > 1 runs add every rank's RNG streams (``rank_streams``, gathered at the epoch's end)."""
    entry = {"format": FORMAT_VERSION, "version": args.fastclip_version,
             "data_size": data_size, "rng": rng_state(),
             "loss": None if loss.state.sharded else loss.state_dict()}
    if rank_streams is not None:
        entry["rng_ranks"] = rank_streams
    if loss.state.sharded:
        if shards is None:
            raise RuntimeError("sharded FCCO state must be saved (save_state_shards) before the "
                               "checkpoint that refers to it")
        entry["state_shards"] = {**shards, "columns": list(loss.state.columns)}
    if hasattr(scheduler, "state_dict"):
        entry["scheduler"] = scheduler.state_dict()
    return entry


def check_entry(args, entry, source, data_size):
    """Refuse a checkpoint whose FastCLIP state does not belong to this run (``data_size``: the
    run's sample-id space, None while the data has not resolved it)."""
    if entry is None:
        if args.fcco_state_fresh:
            logging.warning("!" * 20 + f" {source} has no FastCLIP state: --fcco-state-fresh given, "
                            "so u (and per-sample τ) restart from zero " + "!" * 20)
            return False
        raise CheckpointMismatch(
            f"{source} has no FastCLIP state (key '{CHECKPOINT_KEY}'), so this FastCLIP run "
            f"cannot continue it; pass --fcco-state-fresh to start the FCCO state from zero")
    if entry["version"] != args.fastclip_version:
        raise CheckpointMismatch(
            f"{source} was written by FastCLIP {entry['version']}, this run is "
            f"--fastclip-version {args.fastclip_version}")
    if data_size is not None and entry["data_size"] != data_size:
        raise CheckpointMismatch(
            f"{source} holds FCCO state for --data-size {entry['data_size']}, this run has "
            f"--data-size {data_size}")
    return True


def save_atomically(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


# ---- sharded FCCO state: one torch.distributed.checkpoint (DCP) folder beside epoch_N.pt -------
STATE_KEY = "fcco_state"


def shards_name(epoch: int) -> str:
    """The shard folder of the checkpoint written after ``epoch`` epochs."""
    return f"epoch_{epoch}.fcco"


def _rng_key(rank: int) -> str:
    return f"rng_rank{rank}"


def _as_dtensor(state, group):
    """This rank's block as a DTensor with Shard(0) over a CPU mesh: DCP then records each
    block's offset and reshards on load (state.block_of is torch.chunk's split, DTensor's)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = DeviceMesh.from_group(group if group is not None else dist.group.WORLD, "cpu")
    shape = (state.data_size, len(state.columns))
    return DTensor.from_local(state.values, mesh, [Shard(0)], run_check=False, shape=shape,
                              stride=(shape[1], 1))


def save_state_shards(state, folder: str, name: str, group) -> None:
    """Every rank writes its block (and ranks > 0 their RNG streams: rank 0's go into the .pt,
    captured after its validation) into ``folder/.name.tmp`` with DCP; rank 0
    renames it to ``folder/name`` once DCP's metadata (written after every rank's shard) exists.
    A crash before that leaves only the temporary folder, and no epoch_N.pt refers to it."""
    rank = dist.get_rank(group)
    final, tmp = os.path.join(folder, name), os.path.join(folder, f".{name}.tmp")
    if rank == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)   # left by a job killed while saving
    dist.barrier(group)
    request = {STATE_KEY: _as_dtensor(state, group)}
    if rank > 0:
        request[_rng_key(rank)] = rng_state()
    dcp.save(request, checkpoint_id=tmp, process_group=group)
    if rank == 0:
        _replace_folder(tmp, final)
    dist.barrier(group)


def state_group(args):
    """The CPU (gloo) process group DCP saves and loads the shards over: the default group when
    it is gloo, else a gloo group of the same ranks (NCCL cannot move CPU tensors). Horovod has
    no torch process group, so one is started beside it, its rendezvous address passed by
    hvd.broadcast_object (rank 0's host and a free port). Collective: call on every rank."""
    if getattr(args, "horovod", False):
        if not dist.is_initialized():
            _init_gloo_beside_horovod()
        return None
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def _init_gloo_beside_horovod():
    import socket

    import horovod.torch as hvd

    address = None
    if hvd.rank() == 0:
        with socket.socket() as probe:
            probe.bind(("", 0))
            address = (socket.gethostbyname(socket.gethostname()), probe.getsockname()[1])
    host, port = hvd.broadcast_object(address, root_rank=0, name="fastclip.state_group")
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=hvd.rank(),
                            world_size=hvd.size())


def _replace_folder(tmp: str, final: str) -> None:
    old = final + ".old"
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)
    directory = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_state_shards(state, folder: str, saved_world_size: int, group, rank: int,
                      world_size: int):
    """Fill ``state`` (a shard, or the whole table) from a DCP shard folder written by
    ``saved_world_size`` ranks; DCP reads the overlapping parts of the saved blocks. Returns this
    rank's saved RNG streams when the world size is unchanged and the rank is not 0 (rank 0's
    are in the .pt), else None."""
    if not os.path.isdir(folder):
        raise CheckpointMismatch(f"the FCCO state shards {folder} are missing")
    target = _as_dtensor(state, group) if state.sharded else state.values
    request = {STATE_KEY: target}
    has_streams = saved_world_size == world_size and rank > 0
    if has_streams:
        request[_rng_key(rank)] = rng_state()   # a template of the right structure
    distributed = dist.is_available() and dist.is_initialized()
    dcp.load(request, checkpoint_id=folder, process_group=group, no_dist=not distributed)
    if state.sharded and request[STATE_KEY].to_local().data_ptr() != state.values.data_ptr():
        state.values.copy_(request[STATE_KEY].to_local())
    return request[_rng_key(rank)] if has_streams else None


def restore_fcco_state(args, entry, loss, group):
    """Load the entry's FCCO state into ``loss`` whatever layout wrote it and whatever layout
    this run has (whole table → shard: the block is sliced; shards → any K′ or one process: DCP
    reshards). Returns (this rank's saved RNG streams or None, why they are not restored)."""
    shards = entry.get("state_shards")
    if shards is None:
        loss.load_state_dict(entry["loss"])
        streams = entry.get("rng_ranks") or [entry["rng"]]
        if len(streams) == args.world_size:
            return (entry["rng"] if args.rank == 0 else streams[args.rank]), ""
        return None, (f"the checkpoint holds the RNG streams of {len(streams)} rank(s), this run "
                      f"has {args.world_size}")
    if list(shards["columns"]) != list(loss.state.columns):
        raise CheckpointMismatch(f"{args.resume}: FCCO state columns {shards['columns']} do "
                                 f"not match this run's {list(loss.state.columns)}")
    folder = os.path.join(os.path.dirname(os.path.abspath(args.resume)), shards["name"])
    saved_world = shards["world_size"]
    rng = load_state_shards(loss.state, folder, saved_world, group, args.rank, args.world_size)
    if saved_world == args.world_size:
        return (entry["rng"] if args.rank == 0 else rng), ""
    if args.rank == 0:
        logging.info(f"FastCLIP resume: FCCO state resharded from {saved_world} ranks onto "
                     f"{args.world_size}")
    return None, (f"the checkpoint was written by {saved_world} ranks, this run has "
                  f"{args.world_size}, so no rank's saved streams are its own")


def match_module_prefix(checkpoint_dict, ddp: bool) -> None:
    """Model keys carry DDP's ``module.`` prefix exactly when this run wraps the model in DDP.
    Upstream strips it for one process but never adds it, so a one-process (or Horovod)
    checkpoint failed to resume under DDP with ``Missing key(s) "module.…"``; baseline too."""
    state = checkpoint_dict.get("state_dict")
    if not state:
        return
    prefixed = next(iter(state)).startswith("module.")
    if ddp and not prefixed:
        checkpoint_dict["state_dict"] = {f"module.{k}": v for k, v in state.items()}
    elif not ddp and prefixed:
        checkpoint_dict["state_dict"] = {k[len("module."):]: v for k, v in state.items()}
