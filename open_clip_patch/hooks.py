"""The functions the patched OpenCLIP trainer calls (see patches/series).

Each hook returns OpenCLIP's own behaviour while ``--fastclip`` is off, so the baseline is
exactly upstream's; with it on, the hook hands over to the overlay's modules.
"""
import logging
from functools import partial

import open_clip

from . import checkpoint, indexing, optim, params, temperature
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
    """OpenCLIP's loss, or the FastCLIP loss for ``--fastclip``."""
    if not _fastclip(args):
        return open_clip.create_loss(args)
    from .losses import FastCLIPLoss

    logging.info("FastCLIP configuration: %s", params.effective_config(args))
    loss = FastCLIPLoss(
        version=args.fastclip_version,
        data_size=args.data_size,
        rho=args.rho,
        eps=args.fastclip_eps,
        tau_grad=args.tau_grad,
        temperature=args.temperature,
        lr_tau=args.lr_tau,
        # the per-sample τ Adam (v2) borrows the model optimizer's betas/eps where it has them
        tau_betas=(args.beta1 or 0.9, args.beta2 or 0.999),
        tau_eps=args.eps or 1e-8,
        comm=create_comm(args),
    )
    loss.gamma_schedule = GammaSchedule(args.gamma_schedule, args.gamma_min,
                                        args.gamma_decay_epochs, per_step=args.gamma_per_step)
    logging.info("FastCLIP loss: %s; %s", loss.describe(), loss.gamma_schedule)
    return loss


def on_resume(args, checkpoint_dict):
    """Check the checkpoint's FastCLIP entry now (before the optimizer loads a mismatched one)
    and keep it until the loss exists: the loss is built after the data."""
    if not _fastclip(args):
        return
    entry = checkpoint_dict.get(checkpoint.CHECKPOINT_KEY)
    args.fastclip_resume_entry = entry if checkpoint.check_entry(args, entry, args.resume) else None
    args.fastclip_resume_epoch = checkpoint_dict["epoch"]


def restore_state(args, loss, scheduler):
    """Load the FastCLIP state of a resumed checkpoint into the loss, τ schedule and RNGs."""
    entry = getattr(args, "fastclip_resume_entry", None)
    if not _fastclip(args) or entry is None:
        return
    args.fastclip_resume_entry = None
    checkpoint.check_entry(args, entry, args.resume)  # --data-size is known by now
    loss.load_state_dict(entry["loss"])
    if "scheduler" in entry and hasattr(scheduler, "load_state_dict"):
        scheduler.load_state_dict(entry["scheduler"])
    if args.world_size == 1:
        checkpoint.set_rng_state(entry["rng"])  # bit-exact continuation
    else:
        checkpoint.seed_rank_streams(args.seed, args.rank, args.fastclip_resume_epoch)
    logging.info(f"FastCLIP state restored from {args.resume}")


def checkpoint_extras(args, loss, scheduler):
    if not _fastclip(args):
        return {}
    return {checkpoint.CHECKPOINT_KEY: checkpoint.fastclip_entry(args, loss, scheduler)}


def save_checkpoint(checkpoint_dict, path):
    checkpoint.save_atomically(checkpoint_dict, path)


def end_epoch(args):
    """The epoch this job stops after: --stop-epochs for chained jobs, else --epochs."""
    return min(args.epochs, args.stop_epochs or args.epochs)


# ---- data.py ------------------------------------------------------------------------------
def data_counters(args):
    """Counters shared with the dataloader workers, created once per run."""
    if getattr(args, "data_counters", None) is None:
        args.data_counters = indexing.DataCounters()
    return args.data_counters


def wds_tar_stage(args, tarfile_to_samples):
    """OpenCLIP's shard reader, with a handler that also counts corrupt shards."""
    return partial(tarfile_to_samples, handler=data_counters(args).count_shard_error)


def wds_sample_shuffle(args, bufsize, initial, epoch):
    """The training sample shuffle, seeded by --seed (all runs, baseline included). Callers
    that build args by hand (OpenCLIP's own data tests) may lack seed and rank."""
    return indexing.SeededSampleShuffle(bufsize, initial, getattr(args, "seed", 0),
                                        getattr(args, "rank", 0), epoch)


def wds_to_tuple(args, is_train):
    """The pipeline's last per-sample stages: (image, text) or (image, text, sample_id)."""
    import webdataset as wds

    if not (_fastclip(args) and is_train):
        return [wds.to_tuple("image", "text")]
    if args.data_size is None:
        from open_clip_train.data import expand_urls

        args.data_size = indexing.id_space_of_shards(expand_urls(args.train_data)[0])
        logging.info(f"FastCLIP: --data-size {args.data_size} from the shards' id space")
    stage = indexing.WdsSampleId(args.data_size, args.skip_invalid_ids, data_counters(args))
    return [wds.map(stage), wds.to_tuple("image", "text", "sample_id")]


def with_sample_ids(args, dataset, is_train):
    """CSV / synthetic datasets: the index is the sample id."""
    if not (_fastclip(args) and is_train):
        return dataset
    if args.data_size is None:
        args.data_size = len(dataset)
        logging.info(f"FastCLIP: --data-size {args.data_size} (the dataset's length)")
    return indexing.WithSampleIds(dataset, args.data_size)


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
    loss.gamma = loss.gamma_schedule(epoch, step_in_epoch / steps_per_epoch)


def step_log(args, optimizer):
    """Extra scalars for tensorboard / wandb at each logged step."""
    group = optim.temperature_group(optimizer)
    return {"lr_tau": group["lr"]} if group is not None else {}


def on_epoch_end(args, epoch):
    counters = getattr(args, "data_counters", None)
    if counters is not None:
        counts = counters.snapshot()
        if any(counts.values()):
            logging.warning(f"Epoch {epoch} data problems (cumulative): {counts}")


# ---- distributed --------------------------------------------------------------------------
def count_communication(args, model, optimizer):
    """Once DDP wraps the model and Horovod the optimizer: count what each rank sends per step
    in the gradient reduction and, for the OpenCLIP baseline, in its loss (FastCLIP's comm counts
    its own gathers). One process communicates nothing and gets no meter."""
    from . import traffic

    if not args.distributed or args.world_size < 2:
        return
    meter = args.traffic_meter = traffic.TrafficMeter(args.world_size)
    if args.horovod:
        traffic.count_horovod_gradients(optimizer, meter)
    else:
        traffic.count_ddp_gradients(model, meter)
    if not _fastclip(args):
        traffic.count_openclip_loss(meter, horovod=args.horovod)


def create_comm(args):
    """The loss's collectives on the backend OpenCLIP's flags chose (--horovod, torchrun/SLURM
    process group, or one process), counted into the run's meter."""
    from .comm import create_comm as comm_for

    return comm_for(args, meter=getattr(args, "traffic_meter", None))


def check_state_replicas(args, loss, when):
    """Every rank writes the same gathered rows, so the FCCO state replicas must be bit-identical
    (also after a resume: every rank loads the same checkpoint file). Fail loudly otherwise."""
    from .comm import check_identical_across_ranks

    if not _fastclip(args) or loss.comm.world_size == 1:
        return
    value = check_identical_across_ranks(loss.comm, loss.state.values, f"FCCO state {when}")
    if args.rank == 0:
        logging.info(f"FCCO state identical on all {loss.comm.world_size} ranks {when} "
                     f"(fingerprint {value:012x})")


def end_of_epoch_distributed(args, epoch, data, loss):
    """Check the FCCO replicas, then log the epoch's bytes sent per step (rank 0's figures;
    the replica checks of this epoch are listed apart, not per step)."""
    from .traffic import format_summary

    check_state_replicas(args, loss, f"after epoch {epoch}")
    meter = getattr(args, "traffic_meter", None)
    if meter is not None:
        summary = meter.epoch_summary(data["train"].dataloader.num_batches // args.accum_freq)
        summary["epoch"] = epoch
        if args.rank == 0:
            logging.info(f"Communication per step and rank: {format_summary(summary)}")
