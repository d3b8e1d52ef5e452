"""The functions the patched OpenCLIP trainer calls (see patches/series, docs/architecture.md).

While ``--fastclip`` is off the loss, optimizer, temperature, batches and checkpoint contents
are OpenCLIP's own; a few hooks change the baseline too, on purpose: the webdataset sample
shuffle is seeded by --seed (reproducible orders), checkpoints are written atomically,
``--stop-epochs`` ends a job early, ``--count-communication`` counts the bytes each rank sends,
and ``--opt lamb|lion|sgdm`` come from timm. With ``--fastclip`` on, the hooks hand over to the
overlay's modules. What a run builds on the way (counters, meter, resume entry, data size, γ
schedule) lives in its :class:`~open_clip_patch.run.FastCLIPRun`, not on ``args``.
"""
import logging
from functools import partial

import open_clip
import torch

from . import checkpoint, checkpoint_files, indexing, optim, params, temperature
from .run import run_of
from .schedules import GammaSchedule


def _fastclip(args):
    return getattr(args, "fastclip", False)


# ---- main.py ------------------------------------------------------------------------------
def init_temperature(args, model):
    """Initial logit scale from --temperature; frozen for the constant and per-sample schemes."""
    temperature.init_logit_scale(args, model)


def builds_optimizer(args):
    """True when the overlay, not OpenCLIP, builds the optimizer."""
    return _fastclip(args) or args.opt in ("lamb", "lion", "sgdm")


def create_optimizer(args, model):
    lr_tau = args.lr_tau if temperature.learns_global_tau(args) else None
    return optim.create_optimizer(args, model, lr_tau=lr_tau)


def wrap_scheduler(args, scheduler, optimizer, model, total_steps):
    """Give the logit-scale group (if any) its own --lr-tau schedule."""
    return temperature.wrap_scheduler(args, scheduler, optimizer, model, total_steps)


def create_loss(args):
    """OpenCLIP's loss, or the FastCLIP loss for ``--fastclip`` (after the data: see run.py)."""
    if not _fastclip(args):
        return open_clip.create_loss(args)
    from .losses import FastCLIPLoss

    if args.fcco_state_device == "cuda" and args.fcco_state == "sharded" and args.world_size > 1:
        # the shards are saved by DCP over a CPU (gloo) mesh, which holds host tensors only
        raise ValueError("--fcco-state-device cuda needs --fcco-state replicated with more than "
                         "one rank (sharded state checkpoints hold host tensors)")
    run = run_of(args)
    data_size = run.required_data_size()
    logging.info("FastCLIP configuration: %s", {**params.effective_config(args),
                                                 "data_size": data_size})
    loss = FastCLIPLoss(**params.loss_kwargs(args, data_size=data_size), comm=create_comm(args))
    if loss.state.sharded:   # the shards are saved and loaded over a CPU process group
        run.state_group = checkpoint.state_group(args)
    run.gamma_schedule = GammaSchedule(args.gamma_schedule, args.gamma_min,
                                       args.gamma_decay_epochs, per_step=args.gamma_per_step)
    logging.info("FastCLIP loss: %s; %s", loss.describe(), run.gamma_schedule)
    return loss


def on_resume(args, checkpoint_dict, model=None, optimizer=None):
    """Check the checkpoint's FastCLIP entry now (before the optimizer loads a mismatched one)
    and keep it in the run until the loss exists: the loss is built after the data. A
    checkpoint without FCCO state (an OpenCLIP run's) continues under --fcco-state-fresh: see
    :func:`continue_without_fcco_state`."""
    checkpoint.match_module_prefix(checkpoint_dict, ddp=args.distributed and not args.horovod)
    if not _fastclip(args):
        return
    run = run_of(args)
    entry = checkpoint_dict.get(checkpoint.CHECKPOINT_KEY)
    usable = checkpoint.check_entry(args, entry, args.resume, run.data_size)
    run.resume_entry = entry if usable else None
    run.resume_epoch = checkpoint_dict["epoch"]
    if not usable and model is not None:
        continue_without_fcco_state(args, checkpoint_dict, model, optimizer)


def _group_sizes(optimizer_state):
    return [len(group["params"]) for group in optimizer_state["param_groups"]]


def continue_without_fcco_state(args, checkpoint_dict, model, optimizer):
    """--fcco-state-fresh on a checkpoint without FCCO state: the model weights and the epoch
    (hence the lr schedule's step) continue and u starts from zero. The optimizer state is
    kept when its parameter groups are this run's; otherwise (OpenCLIP's two groups against
    FastCLIP's own τ group, or a frozen logit scale that left the groups) it is rebuilt, i.e.
    this run's fresh state is loaded, and the log says so. A scheme with a frozen τ keeps this
    run's τ₀ rather than the logit scale OpenCLIP learned."""
    if optimizer is not None and "optimizer" in checkpoint_dict:
        saved, ours = _group_sizes(checkpoint_dict["optimizer"]), _group_sizes(optimizer.state_dict())
        if saved != ours:
            logging.warning(f"--fcco-state-fresh: the checkpoint's optimizer has parameter groups "
                            f"of sizes {saved}, this run's {ours}: the optimizer state is rebuilt "
                            f"(moments restart from zero; weights and step continue)")
            checkpoint_dict["optimizer"] = optimizer.state_dict()
    if not temperature.learns_global_tau(args):
        state = checkpoint_dict["state_dict"]
        key = next((k for k in ("logit_scale", "module.logit_scale") if k in state), None)
        ours = getattr(model, "module", model).logit_scale
        if key is not None and not torch.equal(state[key], ours.detach()):
            logging.info(f"--fcco-state-fresh: τ is frozen under --temperature-scheme "
                         f"{args.temperature_scheme}, so it stays τ₀={args.temperature} (the "
                         f"checkpoint's logit scale {float(state[key]):.4f} is not used)")
            state[key] = ours.detach().clone()


def restore_state(args, loss, scheduler):
    """Load the FastCLIP state of a resumed checkpoint into the loss, τ schedule and RNGs."""
    run = run_of(args)
    entry = run.resume_entry
    if not _fastclip(args) or entry is None:
        return
    run.resume_entry = None
    checkpoint.check_entry(args, entry, args.resume, run.data_size)  # known by now
    if entry.get("id_ranges") != run.id_ranges:
        raise checkpoint.CheckpointMismatch(
            f"{args.resume} maps sample ids to sources as {entry.get('id_ranges')}, this run's "
            f"--train-data as {run.id_ranges}: the FCCO state would belong to other samples")
    rng, why = checkpoint.restore_fcco_state(args, entry, loss, run.state_group)
    if "scheduler" in entry and hasattr(scheduler, "load_state_dict"):
        scheduler.load_state_dict(entry["scheduler"])
    checkpoint.restore_rng_streams(rng, args.seed, args.rank, run.resume_epoch, why)
    logging.info(f"FastCLIP state restored from {args.resume}")


def checkpoint_extras(args, loss, scheduler):
    if not _fastclip(args):
        return {}
    run = run_of(args)
    entry = checkpoint.fastclip_entry(args, run.data_size, loss, scheduler, run.state_shards,
                                      run.rank_streams)
    if run.id_ranges is not None:
        entry["id_ranges"] = run.id_ranges   # the '::' sources' id ranges (checked on resume)
    return {checkpoint.CHECKPOINT_KEY: entry}


def save_checkpoint(checkpoint_dict, path):
    """Remove the partial files of saves a kill interrupted, then save atomically."""
    import os

    checkpoint_files.remove_partial_saves(os.path.dirname(os.path.abspath(path)))
    checkpoint.save_atomically(checkpoint_dict, path)


def resume_latest(checkpoint_path, remote, newest):
    """--resume latest: the newest checkpoint that loads, older ones as fallback (logged);
    ``newest`` is upstream's lookup, kept for --remote-sync (the listing is remote)."""
    if remote:
        return newest(checkpoint_path, remote=remote)
    return checkpoint_files.newest_loadable(checkpoint_path)


def dist_timeout(args):
    """--dist-timeout as the timedelta for init_process_group (None: torch's default). Horovod
    takes no timeout argument: its stall shutdown time is set instead (unless set already)."""
    import datetime
    import os

    if args.dist_timeout is None:
        return None
    if getattr(args, "horovod", False):
        os.environ.setdefault("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS",
                              str(max(1, round(args.dist_timeout * 60))))
    return datetime.timedelta(minutes=args.dist_timeout)


def exit_status(status):
    """The process's exit status from main()'s return: upstream returns -1 on its errors (e.g.
    "Experiment already exists"), which `python -m` turned into exit 0 for scripts and SLURM."""
    return 1 if status not in (None, 0) else 0


def delete_previous_checkpoint(args, completed_epoch):
    """--delete-previous-checkpoint: upstream removes epoch_{N-1}.pt once epoch_N.pt is
    written; its sharded FCCO state (epoch_{N-1}.fcco/) goes with it, else every epoch's shards
    stayed on disk. Rank 0 only (upstream's save block), after every rank saved its shard."""
    import os
    import shutil

    previous = completed_epoch - 1
    pt = os.path.join(args.checkpoint_path, f"epoch_{previous}.pt")
    if os.path.exists(pt):
        os.remove(pt)
    shards = os.path.join(args.checkpoint_path, checkpoint.shards_name(previous))
    if os.path.isdir(shards):
        shutil.rmtree(shards)


def last_epoch_of_job(args):
    """The epoch this job stops after: --stop-epochs for chained jobs, else --epochs."""
    return min(args.epochs, args.stop_epochs or args.epochs)


# ---- data.py ------------------------------------------------------------------------------
def wds_tar_stage(args, tarfile_to_samples):
    """OpenCLIP's shard reader, with a handler that also counts corrupt shards (the counters
    are shared with the dataloader workers), watched by the run's sample-flow guard: data that
    yields no valid sample stops with one line instead of being read forever (baseline too)."""
    from open_clip_train.data import _SAMPLE_SHUFFLE_INITIAL, _SAMPLE_SHUFFLE_SIZE, expand_urls

    run = run_of(args)
    run.sample_guard = indexing.SampleFlowGuard(
        len(expand_urls(args.train_data)[0]), run.data_counters,
        sample_limit=_SAMPLE_SHUFFLE_SIZE + _SAMPLE_SHUFFLE_INITIAL)
    return run.sample_guard.read(partial(tarfile_to_samples,
                                         handler=run.data_counters.count_shard_error))


def wds_sample_shuffle(args, bufsize, initial, epoch):
    """The training sample shuffle, seeded by --seed (all runs, baseline included). Callers
    that build args by hand (OpenCLIP's own data tests) may lack seed and rank."""
    return indexing.SeededSampleShuffle(bufsize, initial, getattr(args, "seed", 0),
                                        getattr(args, "rank", 0), epoch)


def wds_to_tuple(args, is_train):
    """The pipeline's last per-sample stages: (image, text) or (image, text, sample_id)."""
    import webdataset as wds

    guard = run_of(args).sample_guard if is_train else None
    last = [guard.passed] if guard is not None else []
    if not (_fastclip(args) and is_train):
        return [wds.to_tuple("image", "text"), *last]
    from open_clip_train.data import expand_urls

    run = run_of(args)
    ranges = source_ranges(args, run, expand_urls)
    data_size = run.resolve_data_size(
        lambda: indexing.id_space_of_shards(expand_urls(args.train_data)[0]),
        "from the shards' id space")
    stage = indexing.WdsSampleId(data_size, args.skip_invalid_ids, run.data_counters, ranges)
    return [wds.map(stage), wds.to_tuple("image", "text", "sample_id"), *last]


def source_ranges(args, run, expand_urls):
    """``--train-data a::b`` (with or without --train-data-upsampling-factors): each source
    its own id range, --data-size their sum (given, it must be the sum), the mapping logged;
    None for one source. Refused with one line when a source's id space is unknown."""
    if "::" not in args.train_data:
        return None
    ranges = indexing.source_id_ranges(args.train_data, expand_urls)
    total = sum(r.size for r in ranges)
    if run.data_size is not None and run.data_size != total:
        raise ValueError(f"--data-size {run.data_size} is not the sum {total} of the '::' "
                         f"sources' id spaces {[r.size for r in ranges]}: each source gets its "
                         f"own id range, so give --data-size {total} (or leave it unset)")
    run.data_size, run.id_ranges = total, [r.describe() for r in ranges]
    logging.info(f"FastCLIP: --data-size {total}, one id range per '::' source: " + "; ".join(
        f"{r.source} -> [{r.offset}, {r.offset + r.size})" for r in ranges))
    return ranges


def with_sample_ids(args, dataset, is_train):
    """CSV / synthetic datasets: the index is the sample id."""
    if not (_fastclip(args) and is_train):
        return dataset
    data_size = run_of(args).resolve_data_size(lambda: len(dataset), "the dataset's length")
    return indexing.WithSampleIds(dataset, data_size)


# ---- train.py -----------------------------------------------------------------------------
def unpack_batch(args, batch):
    """(images, texts, extra loss inputs); FastCLIP batches carry the sample ids."""
    if _fastclip(args):
        images, texts, sample_ids = batch
        return images, texts, {"sample_ids": sample_ids}
    images, texts = batch
    return images, texts, {}


def total_loss(losses):
    """Sum of the loss terms; other entries (FastCLIP diagnostics) are only logged."""
    return sum(value for key, value in losses.items() if key.endswith("loss"))


def before_step(args, loss, epoch, step_in_epoch, steps_per_epoch):
    """Set the loss's epoch and γ for this step (γ per epoch, or per step if configured)."""
    if not _fastclip(args):
        return
    loss.set_epoch(epoch)
    loss.gamma = run_of(args).gamma_schedule(epoch, step_in_epoch / steps_per_epoch)


def step_log(args, optimizer):
    """Extra scalars for tensorboard / wandb at each logged step."""
    group = optim.temperature_group(optimizer)
    return {"lr_tau": group["lr"]} if group is not None else {}


def after_epoch(args, epoch):
    """Warn about the data problems counted so far (corrupt shards, skipped ids)."""
    counts = run_of(args).data_counters.snapshot()
    if any(counts.values()):
        logging.warning(f"Epoch {epoch} data problems (cumulative): {counts}")


# ---- distributed --------------------------------------------------------------------------
def count_communication(args, model, optimizer):
    """With --count-communication, once DDP wraps the model and Horovod the optimizer: count what
    each rank sends per step in the gradient reduction and, for the OpenCLIP baseline, in its
    loss (FastCLIP's comm counts its own gathers). Off by default, so OpenCLIP's and Horovod's
    code runs untouched; one process communicates nothing and gets no meter."""
    from . import traffic

    if args.distributed and args.dist_timeout is not None and args.rank == 0:
        logging.info(f"Collective timeout: {args.dist_timeout} min (--dist-timeout)" +
                     (", as Horovod's stall shutdown time" if args.horovod else ""))
    if not args.count_communication or not args.distributed or args.world_size < 2:
        return
    meter = run_of(args).traffic_meter = traffic.TrafficMeter(args.world_size)
    if args.horovod:
        traffic.count_horovod_gradients(optimizer, meter)
    else:
        traffic.count_ddp_gradients(model, meter)
    if not _fastclip(args):
        traffic.count_openclip_loss(meter, horovod=args.horovod)


def create_comm(args):
    """The loss's collectives on the backend OpenCLIP's flags chose (--horovod, torchrun/SLURM
    process group, or one process), counted into the run's meter if it has one."""
    from .comm import create_comm as comm_for

    return comm_for(args, meter=run_of(args).traffic_meter)


def check_state_replicas(args, loss, when):
    """Every rank writes the same gathered rows, so the FCCO state replicas must be bit-identical
    (also after a resume: every rank loads the same checkpoint file); sharded state gets the
    shard checks (comm.check_shards). Fail loudly otherwise."""
    from .comm import check_identical_across_ranks, check_shards

    if not _fastclip(args) or loss.comm.world_size == 1:
        return
    if loss.state.sharded:
        value = check_shards(loss.comm, loss.state, f"FCCO state shards {when}")
        what = "shards consistent"
    else:
        value = check_identical_across_ranks(loss.comm, loss.state.values, f"FCCO state {when}")
        what = "identical"
    if args.rank == 0:
        logging.info(f"FCCO state {what} on all {loss.comm.world_size} ranks {when} "
                     f"(fingerprint {value:012x})")


def saves_checkpoint(args, completed_epoch):
    """Whether upstream's save block writes a checkpoint after ``completed_epoch`` epochs."""
    return (completed_epoch == last_epoch_of_job(args) or args.save_most_recent or (
        args.save_frequency > 0 and completed_epoch % args.save_frequency == 0)) and bool(
        args.logs) and args.logs.lower() != "none"


def save_rank_state(args, epoch, loss):
    """Before rank 0 writes epoch_N.pt (collective, every rank, K > 1): sharded state → every
    rank writes its shard (and ranks > 0 their RNG streams); replicated → every rank's RNG
    streams are gathered for the .pt (rank 0's own are taken again as the .pt is written)."""
    run = run_of(args)
    if not (_fastclip(args) and loss.comm.world_size > 1 and saves_checkpoint(args, epoch + 1)):
        return
    if not loss.state.sharded:
        run.rank_streams = loss.comm.all_gather_object(checkpoint.rng_state())
        return
    name = checkpoint.shards_name(epoch + 1)
    checkpoint.save_state_shards(loss.state, args.checkpoint_path, name, run.state_group)
    run.state_shards = {"name": name, "world_size": loss.comm.world_size}


def after_epoch_distributed(args, epoch, data, loss):
    """Check the FCCO replicas, then log the epoch's bytes sent per step if counted (rank 0's
    figures; the replica checks of this epoch are listed apart, not per step)."""
    from .traffic import format_summary

    check_state_replicas(args, loss, f"after epoch {epoch}")
    save_rank_state(args, epoch, loss)
    meter = run_of(args).traffic_meter
    if meter is not None:
        summary = meter.epoch_summary(data["train"].dataloader.num_batches // args.accum_freq)
        summary["epoch"] = epoch
        if args.rank == 0:
            logging.info(f"Communication per step and rank: {format_summary(summary)}")
