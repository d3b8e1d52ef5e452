"""Distributed FastCLIP with 2 CPU ranks: one step equals one process with the whole batch, the
FCCO replicas stay identical, the bytes sent per step are counted, and the trainer runs under
torchrun and a SLURM-style launch (resuming consistently on every rank).

The cases run in tests/distributed_worker.py: once on torch.distributed (2 forked gloo ranks,
DDP) and once on Horovod (``horovodrun -np 2 -H localhost:2 --gloo``; skipped, with the reason,
when horovod cannot be imported). Errors are measured per tensor as max|a - e| / max|e|.
"""
import importlib
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import distributed_worker as cases
from open_clip_patch.traffic import TrafficMeter
from trainer_utils import PYTHON

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
WORKER = Path(cases.__file__)


def _rank_env():
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # fork: the ranks inherit the imported modules instead of re-importing open_clip (slow).
    mp.start_processes(cases.run_ddp_rank, args=(str(out / "init"), str(out)),
                       nprocs=cases.WORLD_SIZE, start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(cases.WORLD_SIZE)]


@pytest.fixture(scope="module")
def horovod_ranks(tmp_path_factory):
    try:
        importlib.import_module("horovod.torch")
    except ImportError as error:
        pytest.skip(f"horovod.torch cannot be imported ({error}); `make horovod` builds it")
    out = tmp_path_factory.mktemp("horovod")
    horovodrun = Path(sysconfig.get_path("scripts")) / "horovodrun"
    proc = subprocess.run([PYTHON, str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo",
                           PYTHON, str(WORKER), str(out)], env=_rank_env(), cwd=out, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, f"horovodrun failed:\n{proc.stdout[-6000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(cases.WORLD_SIZE)]


@pytest.fixture(params=["ddp", "horovod"])
def ranks(request):
    return request.getfixturevalue(f"{request.param}_ranks")


@pytest.fixture(scope="module")
def references():
    return {}


def reference(references, key, compute):
    """Computed once per module, on one thread: a busy 2-core machine makes OpenMP crawl."""
    if key not in references:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            references[key] = compute()
        finally:
            torch.set_num_threads(threads)
    return references[key]


def relative_error(actual, expected):
    """max|a - e| / max|e| over finite entries; non-finite entries (u never seen) must agree."""
    finite = torch.isfinite(expected)
    assert torch.equal(finite, torch.isfinite(actual))
    assert torch.equal(actual[~finite], expected[~finite])
    if not finite.any():
        return 0.0
    scale = expected[finite].abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((actual[finite] - expected[finite]).abs().max() / scale)


def assert_gradients_close(actual, expected, tolerance):
    assert actual.keys() == expected.keys()
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, f"{worst}: relative error {errors[worst]:.2e}"


def assert_state_close(actual, expected, tolerance):
    for column in range(expected.shape[1]):   # per column: log u, τ and moments differ in scale
        error = relative_error(actual[:, column], expected[:, column])
        assert error <= tolerance, f"state column {column}: relative error {error:.2e}"


# ---- equivalence with one process ----------------------------------------------------------
@pytest.mark.parametrize("dtype", cases.DTYPES, ids=str)
@pytest.mark.parametrize("version", cases.VERSIONS)
def test_fastclip_step_on_two_ranks_equals_one_rank(ranks, references, version, dtype):
    expected = reference(references, (version, dtype), lambda: cases.reference_step(dtype, version))
    for rank in ranks:
        result = rank[f"step/{version}/{dtype}"]
        assert_gradients_close(result["grads"], expected["grads"], TOLERANCE[dtype])
        assert_state_close(result["state"], expected["state"], TOLERANCE[dtype])
        touched = torch.isfinite(result["state"][:, 0]).sum()
        assert touched == cases.WORLD_SIZE * cases.LOCAL_BATCH   # the whole global batch
    torch.testing.assert_close(ranks[0][f"step/{version}/{dtype}"]["state"],
                               ranks[1][f"step/{version}/{dtype}"]["state"], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=str)
def test_openclip_baseline_on_two_ranks_equals_one_rank(ddp_ranks, references, dtype):
    expected = reference(references, ("baseline", dtype), lambda: cases.reference_step(dtype))
    for rank in ddp_ranks:
        assert_gradients_close(rank[f"baseline/{dtype}"]["grads"], expected["grads"],
                               TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=str)
def test_openclip_baseline_under_horovod_averages_the_gathered_gradient(horovod_ranks,
                                                                        references, dtype):
    """Upstream behaviour, pinned: under --horovod the baseline does NOT equal one process, since
    hvd.allgather's backward averages what torch.distributed.nn.all_gather's sums."""
    expected = reference(references, ("horovod baseline", dtype),
                         lambda: cases.reference_horovod_baseline(dtype))
    one_process = reference(references, ("baseline", dtype), lambda: cases.reference_step(dtype))
    for rank in horovod_ranks:
        grads = rank[f"baseline/{dtype}"]["grads"]
        assert_gradients_close(grads, expected["grads"], TOLERANCE[dtype])
        with pytest.raises(AssertionError):
            assert_gradients_close(grads, one_process["grads"], 1e-2)


@pytest.mark.parametrize("version", cases.THREE_STEP_VERSIONS)
def test_three_steps_keep_fcco_state_identical_on_every_rank(ranks, references, version):
    expected = reference(references, ("three", version),
                         lambda: cases.reference_three_steps(version))
    first, second = (rank[f"three_steps/{version}"] for rank in ranks)
    for step, (a, b, e) in enumerate(zip(first["states"], second["states"], expected)):
        assert torch.equal(a, b), f"replicas differ after step {step}"
        assert_state_close(a, e, 1e-4)   # AdamW steps on float32 weights; still the same run
    assert first["fingerprints"] == second["fingerprints"]
    for rank in (first, second):   # an altered replica is reported on every rank
        assert "altered replica differs between ranks" in rank["caught"]


# ---- sharded vs replicated FCCO state ----------------------------------------------------------
@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    mp.start_processes(cases.run_layout_rank, args=(4, str(out / "init"), str(out)), nprocs=4,
                       start_method="fork")
    return [torch.load(out / f"rank{r}.pt") for r in range(4)]


@pytest.mark.parametrize("version", cases.LAYOUT_VERSIONS)
@pytest.mark.parametrize("world", [2, 4])
def test_sharded_state_equals_replicated_bit_for_bit(request, world, version):
    """Same arithmetic, other storage: losses, gradients and rows are bit-equal on 2 and 4 ranks
    (2: gloo and, when built, Horovod); each shard holds its block, together the whole table;
    and both equal one process with the whole batch (float64, ≤ 1e-10 relative)."""
    backends = ["ddp_ranks", "horovod_ranks"] if world == 2 else ["four_ranks"]
    expected = cases.layouts_case(cases.one_process_comm(), version, "replicated", world=world)
    for backend in backends:
        try:
            ranks = request.getfixturevalue(backend)
        except pytest.skip.Exception:
            continue
        sharded = [rank[f"layouts/{version}/sharded"] for rank in ranks]
        replicated = [rank[f"layouts/{version}/replicated"] for rank in ranks]
        for shard, replica in zip(sharded, replicated):
            assert shard["sharded"] and not replica["sharded"]
            assert torch.equal(shard["losses"], replica["losses"])
            assert torch.equal(shard["grads"], replica["grads"])
        blocks = [shard["rows"] for shard in sharded]
        assert blocks[0][0] == 0 and blocks[-1][1] == cases.LAYOUT_DATA
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        whole = torch.cat([shard["values"] for shard in sharded])
        assert torch.equal(whole, replicated[0]["values"])
        assert_state_close(whole, expected["values"], 1e-10)
        b = cases.LAYOUT_BATCH
        one_process_grads = expected["grads"].view(3, 2, world, b, -1)
        for rank, shard in enumerate(sharded):   # only this rank's loss sees its features,
            # normalised by 1/b, not 1/N: K × the one-process gradient (docs/algorithm.md §5)
            mine = one_process_grads[:, :, rank].reshape(3, 2 * b, -1) * world
            assert relative_error(shard["grads"], mine) <= 1e-10


@pytest.mark.parametrize("world", [2, 4])
def test_shard_checks_pass_intact_and_fail_loudly_when_altered(request, world):
    """comm.check_shards: silent on intact shards; every rank raises when one rank's copy of the
    gathered rows differs, and each rank whose owned row was altered raises on its own."""
    for rank in request.getfixturevalue("ddp_ranks" if world == 2 else "four_ranks"):
        for version in cases.LAYOUT_VERSIONS:
            checks = rank[f"layouts/{version}/sharded"]["shard_checks"]
            assert checks["intact"] == ""
            assert "altered gather (layout and latest shared rows) differs" in checks["gathered"]
            # layout_inputs' last batch gives every rank of 2 and 4 an owned id to alter
            assert "does not hold the rows" in checks["owned"]


def test_sharded_state_sends_the_owned_rows_and_fewer_ids(ddp_ranks):
    """Sharded: the ids ride in the feature gather (padded to a row of d), the scalar gather
    drops them, and the all-to-all sends 8·C bytes per row another rank's batch needs."""
    for rank, result in enumerate(ddp_ranks):
        replica = result["layouts/v2/replicated"]["sent"]
        shard = result["layouts/v2/sharded"]["sent"]
        steps, b, d = 3, cases.LAYOUT_BATCH, cases.LAYOUT_DIM
        id_rows = -(-b // d) * d * 8    # b int64 ids as float64 elements, padded to rows of d
        assert shard[("loss", "all_gather")] == replica[("loss", "all_gather")] + steps * (
            id_rows - b * 8)            # (K - 1) = 1 peer
        assert replica.get(("loss", "all_to_all"), 0) == 0
        sent_rows = 0
        for step in range(steps):
            _, _, ids = cases.layout_inputs(step, 2)
            others = ids.view(2, b)[1 - rank]
            sent_rows += int(((others >= result["layouts/v2/sharded"]["rows"][0])
                              & (others < result["layouts/v2/sharded"]["rows"][1])).sum())
        assert shard[("loss", "all_to_all")] == sent_rows * 10 * 8   # v2: 10 float64 columns


# ---- bytes sent per step ---------------------------------------------------------------------
def fastclip_loss_bytes(version, itemsize):
    """(K-1) x [stacked b x d image and text features + b rows of float64 id and state]."""
    b, d = cases.LOCAL_BATCH, 64
    rows = 1 + cases.fastclip_loss(version, torch.float64, None).state.values.shape[1]
    rows += 2 if version == "v2" else 0   # the τ each anchor used, for the negative part
    return (cases.WORLD_SIZE - 1) * (2 * b * d * itemsize + b * rows * 8)


def baseline_loss_bytes(backend, feature_bytes):
    """What --local-loss --gather-with-grad sends for the image and text features (K = 2)."""
    if backend == "ddp":   # forward all_gather; backward on gloo: K scatters, one as root
        return {("loss", "all_gather"): 2 * feature_bytes, ("loss", "scatter"): 2 * feature_bytes}
    # Horovod: allgather; backward allreduces the K·b x d gradient and allgathers an int32 count
    return {("loss", "all_gather"): 2 * feature_bytes + 2 * 4,
            ("loss", "all_reduce"): 2 * cases.WORLD_SIZE * feature_bytes}


def test_bytes_sent_per_step_are_counted(ranks):
    feature_bytes = cases.LOCAL_BATCH * 64 * 4   # one b x d float32 feature matrix
    for rank in ranks:
        for version in cases.VERSIONS:
            step = rank[f"step/{version}/{torch.float32}"]
            loss_calls = {k: n for k, n in step["calls"].items() if k[0] == "loss"}
            assert loss_calls == {("loss", "all_gather"): 2}   # features, then scalars + ids
            assert step["sent"][("loss", "all_gather")] == fastclip_loss_bytes(version, 4)
            assert step["sent"][("gradients", "all_reduce")] == step["trainable_bytes"]
        baseline = rank[f"baseline/{torch.float32}"]
        loss_sent = {k: v for k, v in baseline["sent"].items() if k[0] == "loss"}
        assert loss_sent == baseline_loss_bytes(rank["backend"], feature_bytes)
        assert baseline["sent"][("gradients", "all_reduce")] == baseline["trainable_bytes"]


def test_traffic_meter_rules_and_per_epoch_summary():
    meter = TrafficMeter(world_size=4)
    hundred_bytes = torch.zeros(25, dtype=torch.float32)
    quarter = torch.zeros(25, dtype=torch.uint8)
    for _ in range(2):   # two steps
        meter.all_gather("loss", hundred_bytes)                      # 3 peers x 100
        meter.scatter("loss", [quarter] * 4, src=1)                  # root: 3 chunks of 25
        meter.scatter("loss", None, src=2)                           # not the root: nothing
        meter.all_reduce("gradients", hundred_bytes)                 # ring: 2 x 3/4 x 100
    meter.all_gather("replica_check", torch.zeros(1, dtype=torch.float64))
    summary = meter.epoch_summary(steps=2)
    assert summary["loss_bytes_per_step"] == 300 + 75
    assert summary["loss_collectives_per_step"] == {"all_gather": 1, "scatter": 2}
    assert summary["gradients_bytes_per_step"] == 150
    assert summary["total_bytes_per_step"] == 525
    assert summary["other_bytes_in_epoch"] == {"replica_check": 24}
    meter.reduce_scatter("loss", hundred_bytes)                      # next epoch only
    later = meter.epoch_summary(steps=1)
    assert later["loss_bytes_per_step"] == 300 and later["gradients_bytes_per_step"] == 0


def test_communication_is_counted_only_when_asked():
    """Without --count-communication a 2-rank run installs nothing: OpenCLIP's loss and torch's
    autograd collectives keep torch.distributed, the model gets no comm hook, the run no meter."""
    import open_clip.loss
    import torch.distributed.nn.functional as autograd_collectives
    from open_clip_patch import hooks
    from open_clip_patch.run import run_of
    from open_clip_train.params import parse_args

    class UnhookableModel:
        def register_comm_hook(self, *args, **kwargs):
            raise AssertionError("a DDP comm hook was registered without --count-communication")

    args = parse_args(["--model", "fastclip-tiny-vit"])
    assert args.count_communication is False
    args.distributed, args.world_size, args.rank, args.horovod = True, 2, 0, False
    hooks.count_communication(args, UnhookableModel(), optimizer=None)
    assert open_clip.loss.dist is torch.distributed
    assert autograd_collectives.dist is torch.distributed
    assert run_of(args).traffic_meter is None
