"""run_scripts/: the commands they build (DRY_RUN=1) and a tiny real run through the same path.

The published settings below are copied by hand from docs/algorithm.md §6–§7, independently of
run_scripts/common.sh, so a typo in either shows up here.
"""
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "run_scripts"
VENV_BIN = Path(sys.executable).parent

# docs/algorithm.md §7 (and §6 for data sizes); nodes x GPUs as published.
PUBLISHED = {
    "medium": dict(dir="cc3m", shards="{00000..00331}.tar", data_size=3_318_333,
                   num_samples=2_723_840, model="RN50", nodes=2, gpus=4, batch=1024, epochs=37,
                   lr=1e-3, wd=0.1, warmup=10_000, lr_tau=2e-4, rho=6.5, gamma_min=0.2,
                   gamma_decay=18, fastclip_eps=1e-14, betas=(0.9, 0.999), adam_eps=1e-8),
    "large": dict(dir="cc12m", shards="{00000..01242}.tar", data_size=12_423_374,
                  num_samples=9_187_328, model="ViT-B-32", nodes=2, gpus=4, batch=2048, epochs=33,
                  lr=4e-4, wd=0.1, warmup=10_000, lr_tau=1e-4, rho=8.5, gamma_min=0.2,
                  gamma_decay=16, fastclip_eps=1e-14, betas=(0.9, 0.98), adam_eps=1e-6),
    "xlarge": dict(dir="laion400m", shards="{00000..41407}.tar", data_size=414_080_000,
                   num_samples=315_658_316, model="ViT-B-16", nodes=4, gpus=4, batch=5120,
                   epochs=30, lr=2e-4, wd=0.2, warmup=13_200, lr_tau=5e-5, rho=16.0,
                   gamma_min=0.8, gamma_decay=10, fastclip_eps=1e-6, betas=(0.9, 0.98),
                   adam_eps=1e-6, lr_min=4e-5),
}
# The paper's presets (docs/algorithm.md §4), written out here rather than read from
# versions.py: τ₀, ρ, lr_τ (None: the model's lr), γ schedule.
PAPER_PRESETS = {
    "v0": dict(temperature=0.07, rho=0.0, lr_tau=None, gamma_schedule="cosine"),
    "v1": dict(temperature=0.07, rho=0.0, lr_tau=None, gamma_schedule="cosine"),
    "v2": dict(temperature=0.03, rho=7.0, lr_tau=0.0133, gamma_schedule="cosine"),
    "v3": dict(temperature=0.07, rho=6.5, lr_tau=2e-4, gamma_schedule="cosine"),
    "sogclr": dict(temperature=0.07, rho=0.0, lr_tau=None, gamma_schedule="constant"),
    "isogclr": dict(temperature=0.01, rho=6.0, lr_tau=0.01, gamma_schedule="constant"),
}
SEED, WORKERS = 2024, 6
LAUNCHERS = ("torchrun", "torchrun-multinode", "srun", "horovodrun")
TRAINER = ["-m", "open_clip_train.main"]


def program(name):
    """What the scripts run by default: the repository's venv copy when there is one."""
    path = REPO / ".venv" / "bin" / name
    return str(path) if os.access(path, os.X_OK) else name


def clean_env(**extra):
    """The caller's environment minus anything the scripts read, plus ``extra``."""
    read = {"DATA_DIR", "TRAIN_DATA", "DATA_SIZE", "TRAIN_NUM_SAMPLES", "MODEL", "EPOCHS",
            "GLOBAL_BATCH", "VERSION", "LAUNCHER", "NNODES", "GPUS_PER_NODE", "MASTER_ADDR",
            "MASTER_PORT", "NODE_RANK", "HOSTS", "WORKERS", "LOGS", "NAME", "SEED", "PRECISION",
            "DEVICE", "PYTHON", "TORCHRUN", "SRUN", "HOROVODRUN", "DRY_RUN", "RUN",
            "EPOCHS_PER_JOB"}
    env = {k: v for k, v in os.environ.items() if k not in read and not k.startswith("SLURM_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script, env, *args, cwd=REPO):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def dry_run(script, launcher="torchrun", nodes=1, gpus=8, *args, **env):
    launcher_env = dict(LAUNCHER=launcher.split("-")[0], NNODES=nodes, GPUS_PER_NODE=gpus)
    if launcher == "torchrun-multinode":
        launcher_env.update(MASTER_ADDR="node1", MASTER_PORT=29511, NODE_RANK=1)
    if launcher == "srun":
        launcher_env.update(MASTER_ADDR="node1")
    if launcher == "horovodrun":
        launcher_env.update(HOSTS=",".join(f"node{i}:{gpus}" for i in range(1, nodes + 1)))
    env = clean_env(DRY_RUN=1, DATA_DIR="/datasets", **{**launcher_env, **env})
    proc = run_script(script, env, *args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one line, nothing else on stdout
    return shlex.split(lines[0])


def split_command(words):
    """(launcher words, trainer flags) around ``-m open_clip_train.main``."""
    for i in range(len(words) - 1):
        if words[i:i + 2] == TRAINER:
            return words[:i], words[i + 2:]
    raise AssertionError(f"no `{' '.join(TRAINER)}` in {words}")


def flag_values(flags):
    """{flag: value or True}; the last occurrence wins, as in argparse."""
    values, i = {}, 0
    while i < len(flags):
        assert flags[i].startswith("--"), flags[i:]
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            values[flags[i]] = flags[i + 1]
            i += 2
        else:
            values[flags[i]] = True
            i += 1
    return values


def layout(scale, launcher):
    """(nodes, GPUs per node): as published, or one node with all of them for plain torchrun."""
    pub = PUBLISHED[scale]
    if launcher == "torchrun":
        return 1, pub["nodes"] * pub["gpus"]
    return pub["nodes"], pub["gpus"]


def assert_launcher(launcher_words, trainer_flags, launcher, nodes, gpus):
    world = nodes * gpus
    if launcher.startswith("torchrun"):
        assert launcher_words[0] == program("torchrun")
        assert launcher_words[launcher_words.index("--nproc-per-node") + 1] == str(gpus)
        assert trainer_flags[0] == "--", "torchrun needs `--` before the trainer's flags"
        if launcher == "torchrun":
            assert "--standalone" in launcher_words
        else:
            lw = flag_values(launcher_words[1:])
            assert (lw["--nnodes"], lw["--node-rank"]) == (str(nodes), "1")
            assert (lw["--master-addr"], lw["--master-port"]) == ("node1", "29511")
        return trainer_flags[1:]
    if launcher == "srun":
        assert launcher_words[:3] == ["env", "MASTER_ADDR=node1", "MASTER_PORT=29500"]
        srun = launcher_words[3:]
        assert srun[0] == "srun" and srun[-2:] == [program("python"), "-u"]
        sv = flag_values(srun[1:-2])
        assert (sv["--nodes"], sv["--ntasks-per-node"]) == (str(nodes), str(gpus))
        return trainer_flags
    assert launcher == "horovodrun"
    assert launcher_words[:5] == [program("horovodrun"), "-np", str(world), "-H",
                                  ",".join(f"node{i}:{gpus}" for i in range(1, nodes + 1))]
    assert launcher_words[5:] == [program("python")]
    assert trainer_flags[0] == "--horovod"
    return trainer_flags[1:]


def assert_common(values, scale, nodes, gpus, name):
    pub = PUBLISHED[scale]
    assert values["--train-data"] == f"/datasets/{pub['dir']}/{pub['shards']}"
    assert values["--dataset-type"] == "webdataset"
    assert int(values["--train-num-samples"]) == pub["num_samples"]
    assert values["--model"] == pub["model"]
    assert int(values["--batch-size"]) * nodes * gpus == pub["batch"]
    assert int(values["--epochs"]) == pub["epochs"]
    assert float(values["--lr"]) == pub["lr"]
    assert float(values["--wd"]) == pub["wd"]
    assert int(values["--warmup"]) == pub["warmup"]
    assert (float(values["--beta1"]), float(values["--beta2"])) == pub["betas"]
    assert float(values["--eps"]) == pub["adam_eps"]
    assert values["--opt"] == "adamw" and values["--lr-scheduler"] == "cosine"
    assert int(values["--seed"]) == SEED and int(values["--workers"]) == WORKERS
    assert values["--save-frequency"] == "1" and values["--name"] == name
    # the published xlarge cosine ended at 4e-5; the others decay to 0 as OpenCLIP's does
    assert float(values.get("--lr-min", 0.0)) == pub.get("lr_min", 0.0)


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("scale", sorted(PUBLISHED))
def test_fastclip_v3_command_has_the_published_settings(scale, launcher):
    pub = PUBLISHED[scale]
    nodes, gpus = layout(scale, launcher)
    words = dry_run(f"{scale}.sh", launcher, nodes, gpus)
    flags = assert_launcher(*split_command(words), launcher, nodes, gpus)
    values = flag_values(flags)
    assert_common(values, scale, nodes, gpus, f"{scale}_fastclipv3")
    assert values["--fastclip"] is True and values["--fastclip-version"] == "v3"
    assert int(values["--data-size"]) == pub["data_size"]
    assert float(values["--lr-tau"]) == pub["lr_tau"] and float(values["--rho"]) == pub["rho"]
    assert float(values["--gamma-min"]) == pub["gamma_min"]
    assert int(values["--gamma-decay-epochs"]) == pub["gamma_decay"]
    assert float(values["--fastclip-eps"]) == pub["fastclip_eps"]
    assert values["--fcco-mode"] == "reference"  # the published ρ were tuned under it
    assert "--local-loss" not in values


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("scale", sorted(PUBLISHED))
def test_openclip_baseline_matches_fastclip_but_for_the_loss(scale, launcher):
    nodes, gpus = layout(scale, launcher)
    baseline = dry_run(f"{scale}_openclip.sh", launcher, nodes, gpus)
    fastclip = dry_run(f"{scale}.sh", launcher, nodes, gpus)
    b_launch, b_flags = split_command(baseline)
    f_launch, f_flags = split_command(fastclip)
    assert b_launch == f_launch
    values = flag_values(assert_launcher(b_launch, b_flags, launcher, nodes, gpus))
    assert_common(values, scale, nodes, gpus, f"{scale}_openclip")
    assert values["--local-loss"] is True and values["--gather-with-grad"] is True
    assert not any(flag.startswith(("--fastclip", "--fcco", "--rho", "--gamma", "--tau", "--lr-tau"))
                   for flag in values)
    f_values = flag_values(assert_launcher(f_launch, f_flags, launcher, nodes, gpus))
    shared = {k: v for k, v in f_values.items() if k in values and k != "--name"}
    assert shared == {k: values[k] for k in shared} and len(shared) == len(values) - 3


def parse_trainer(flags):
    """The patched trainer's own parser on these flags (presets applied, values validated)."""
    from open_clip_train.params import parse_args

    return parse_args(flags)


@pytest.mark.parametrize("version", ["v0", "v1", "v2", "v3", "sogclr", "isogclr"])
def test_version_switch_keeps_the_scale_and_uses_the_preset(version):
    pub = PUBLISHED["medium"]
    _, flags = split_command(dry_run("medium.sh", "torchrun", 1, 8, VERSION=version))
    values = flag_values(flags[1:])
    assert_common(values, "medium", 1, 8, f"medium_fastclip{version}")
    assert values["--fastclip-version"] == version
    assert int(values["--data-size"]) == pub["data_size"]
    args = parse_trainer(flags[1:])
    assert args.fastclip and args.fastclip_version == version
    assert (args.gamma_min, args.gamma_decay_epochs) == (pub["gamma_min"], pub["gamma_decay"])
    assert args.fastclip_eps == pub["fastclip_eps"]
    assert (args.batch_size, args.lr, args.epochs) == (128, pub["lr"], pub["epochs"])
    # every version reproduces the published runs in the reference implementation's mode
    assert values["--fcco-mode"] == "reference" and args.fcco_mode == "reference"
    paper = PAPER_PRESETS[version]
    assert args.gamma_schedule == paper["gamma_schedule"]
    assert args.temperature == paper["temperature"]
    if version == "v3":
        assert (args.rho, args.lr_tau) == (pub["rho"], pub["lr_tau"])
    else:  # the preset's own ρ / lr_tau / temperature
        assert not {"--rho", "--lr-tau", "--temperature"} & set(values)
        assert args.rho == paper["rho"]
        assert args.lr_tau == (paper["lr_tau"] if paper["lr_tau"] is not None else pub["lr"])


@pytest.mark.parametrize("scale, script",
                         [("large", "large.sh"), ("xlarge", "xlarge_openclip.sh")])
def test_commands_parse_in_the_patched_trainer(scale, script):
    for launcher in ("srun", "horovodrun"):
        _, flags = split_command(dry_run(script, launcher, 2, 4))
        args = parse_trainer(flags)
        assert args.batch_size * 8 == PUBLISHED[scale]["batch"]
        assert args.horovod == (launcher == "horovodrun")
        assert args.lr_min == PUBLISHED[scale].get("lr_min")


def test_overrides_and_extra_flags_come_last():
    words = dry_run("large.sh", "torchrun", 1, 2, "--warmup", "5", "--name", "it's mine",
                    MODEL="fastclip-tiny-vit", TRAIN_DATA="/d/{0..1}.tar", DATA_SIZE=20000,
                    TRAIN_NUM_SAMPLES=100, EPOCHS=2, GLOBAL_BATCH=16, DEVICE="cpu", WORKERS=0,
                    LOGS="/tmp/my logs")
    values = flag_values(split_command(words)[1][1:])
    assert values["--train-data"] == "/d/{0..1}.tar" and values["--model"] == "fastclip-tiny-vit"
    assert (values["--data-size"], values["--train-num-samples"]) == ("20000", "100")
    assert (values["--epochs"], values["--batch-size"], values["--workers"]) == ("2", "8", "0")
    assert (values["--device"], values["--precision"]) == ("cpu", "fp32")
    assert (values["--warmup"], values["--name"]) == ("5", "it's mine")
    assert values["--logs"] == "/tmp/my logs"


def test_horovodrun_hosts_and_cpu_controller():
    words = dry_run("medium.sh", "horovodrun", 1, 2, HOSTS="", DEVICE="cpu", GLOBAL_BATCH=16)
    launch, flags = split_command(words)
    assert launch == [program("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
                      program("python")]
    assert flags[0] == "--horovod" and flag_values(flags[1:])["--batch-size"] == "8"


@pytest.mark.parametrize("script", ["medium.sh", "large_openclip.sh", "xlarge.sh"])
def test_missing_data_names_the_variable(script, tmp_path):
    env = clean_env(GPUS_PER_NODE=8)
    proc = run_script(script, env)
    assert proc.returncode != 0 and "DATA_DIR" in proc.stderr and not proc.stdout
    proc = run_script(script, clean_env(GPUS_PER_NODE=8, DATA_DIR=tmp_path))  # no shards there
    assert proc.returncode != 0 and f"DATA_DIR={tmp_path}" in proc.stderr
    proc = run_script(script, clean_env(GPUS_PER_NODE=8, TRAIN_DATA="/x/{0..1}.tar",
                                        TRAIN_NUM_SAMPLES=5, DRY_RUN=1))
    assert proc.returncode != 0 and "DATA_SIZE" in proc.stderr


@pytest.mark.parametrize("env, message", [
    (dict(GPUS_PER_NODE=3), "does not divide"),
    (dict(GPUS_PER_NODE=4, NNODES=2), "MASTER_ADDR"),
    (dict(GPUS_PER_NODE=4, NNODES=2, LAUNCHER="horovodrun"), "HOSTS"),
    (dict(GPUS_PER_NODE=4, LAUNCHER="srun"), "MASTER_ADDR"),
    (dict(GPUS_PER_NODE=4, LAUNCHER="mpirun"), "LAUNCHER"),
    (dict(GPUS_PER_NODE=4, VERSION="v4"), "VERSION"),
    (dict(PATH="/usr/bin:/bin"), "GPUS_PER_NODE"),  # no nvidia-smi, no SLURM
])
def test_bad_settings_fail_with_a_clear_error(env, message):
    proc = run_script("large.sh", clean_env(DRY_RUN=1, DATA_DIR="/datasets", **env))
    assert proc.returncode != 0 and message in proc.stderr and not proc.stdout


FAKE_SLURM = {
    "scontrol": 'echo "${SLURM_JOB_NODELIST%%,*}"\n',
    "sbatch": 'echo "$*" >> "$FAKE_LOG/sbatch"\n',
    # Records its command and writes the checkpoint the trainer would write at --stop-epochs.
    "srun": '''echo "$*" >> "$FAKE_LOG/srun"
declare -A v; while (($#)); do case $1 in --*) v[$1]=${2:-}; esac; shift; done
mkdir -p "${v[--logs]}/${v[--name]}/checkpoints"
touch "${v[--logs]}/${v[--name]}/checkpoints/epoch_${v[--stop-epochs]}.pt"
''',
}


def test_xlarge_chain_resumes_in_three_epoch_jobs(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(), log.mkdir(), (tmp_path / "data" / "laion400m").mkdir(parents=True)
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=log, SLURM_SUBMIT_DIR=REPO,
                    SLURM_JOB_NODELIST="gpu7,gpu8,gpu9,gpu10", SLURM_JOB_NUM_NODES=4,
                    SLURM_TASKS_PER_NODE="4(x4)", SLURM_CPUS_PER_TASK=6, SLURM_JOB_NAME="xl",
                    EPOCHS=7,
                    DATA_DIR=tmp_path / "data", LOGS=tmp_path / "logs")
    for _ in range(4):  # 0→3, 3→6, 6→7, then nothing left
        proc = subprocess.run(["bash", str(SCRIPTS / "xlarge_chain.sbatch"), "--foo", "1"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert "all 7 epochs done" in proc.stdout
    runs = [shlex.split(line) for line in (log / "srun").read_text().splitlines()]
    trainer_flags = [flag_values(run[run.index("--train-data"):]) for run in runs]
    assert [values["--stop-epochs"] for values in trainer_flags] == ["3", "6", "7"]
    for run, values in zip(runs, trainer_flags):
        assert values["--epochs"] == "7" and values["--resume"] == "latest"
        assert values["--name"] == "xlarge_fastclipv3" and values["--foo"] == "1"
        assert values["--batch-size"] == str(5120 // 16)
        assert run[:7] == ["--nodes", "4", "--ntasks-per-node", "4", "--kill-on-bad-exit=1",
                           "--cpus-per-task", "6"]
    resubmits = (log / "sbatch").read_text().splitlines()
    assert resubmits == ["--job-name xl run_scripts/xlarge_chain.sbatch --foo 1"] * 2


# --- a tiny real run through the same scripts --------------------------------------------------
@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
    from demo.data.digits import write_digits_shards

    return write_digits_shards(tmp_path_factory.mktemp("digits"), num_shards=2, num_samples=64)


LOSS_RE = re.compile(r"Contrastive_loss: ([-+0-9.eE]+|nan|inf)")


def test_tiny_large_and_baseline_train_through_the_scripts(digits_shards, tmp_path):
    """large.sh under torchrun and large_openclip.sh as one plain process, side by side (CPU)."""
    common = dict(MODEL="fastclip-tiny-vit", TRAIN_DATA=digits_shards.pattern,
                  DATA_SIZE=digits_shards.id_space, TRAIN_NUM_SAMPLES=32, EPOCHS=1,
                  GLOBAL_BATCH=16, DEVICE="cpu", WORKERS=1, NNODES=1, GPUS_PER_NODE=1,
                  LOGS=tmp_path, PATH=f"{VENV_BIN}:{os.environ['PATH']}",
                  OMP_NUM_THREADS=1, CUDA_VISIBLE_DEVICES="", WANDB_MODE="offline")
    extra = ["--warmup", "1", "--log-every-n-steps", "1"]
    # Both at once: two single-threaded processes share the two cores.
    procs = {}
    for name, script, launcher in [("large_fastclipv3", "large.sh", "torchrun"),
                                   ("large_openclip", "large_openclip.sh", "python")]:
        with open(tmp_path / f"{name}.txt", "w") as output:
            procs[name] = subprocess.Popen(["bash", str(SCRIPTS / script), *extra], cwd=REPO,
                                           env=clean_env(LAUNCHER=launcher, **common),
                                           stdout=output, stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        proc.wait(timeout=300)
        output = (tmp_path / f"{name}.txt").read_text()
        assert proc.returncode == 0, f"{name}:\n{output[-4000:]}"
        log = (tmp_path / name / "out.log").read_text()
        losses = [float(x) for x in LOSS_RE.findall(log)]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
        assert (tmp_path / name / "checkpoints" / "epoch_1.pt").is_file()
        assert ("FastCLIP configuration" in log) == (name == "large_fastclipv3")
    assert "'fcco_mode': 'reference'" in (tmp_path / "large_fastclipv3" / "out.log").read_text()
