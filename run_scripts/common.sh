# Shared by run_scripts/{medium,large,xlarge}{,_openclip}.sh: turns one scale's published
# settings (docs/algorithm.md §7) plus the environment into one launcher command, and runs or prints it.
# Sourced, not executed: a scale script calls `use_scale NAME`, then `fastclip_main "$@"` or
# `openclip_main "$@"`. The published values live only in use_scale below, so FastCLIP and its
# OpenCLIP baseline cannot drift apart.
#
# Environment read here (all optional except the data location):
#   DATA_DIR        root of the shards ($DATA_DIR/$DATA_SUBDIR/$SHARDS); required unless TRAIN_DATA
#   TRAIN_DATA      explicit --train-data (then DATA_SIZE and TRAIN_NUM_SAMPLES are required too)
#   DATA_SIZE TRAIN_NUM_SAMPLES MODEL EPOCHS GLOBAL_BATCH   override the published values
#   VERSION         FastCLIP version v0|v1|v2|v3|sogclr|isogclr (default v3)
#   LAUNCHER        torchrun (default) | srun | horovodrun | python (one process, no launcher)
#   NNODES          nodes (default: SLURM's node count, else 1)
#   GPUS_PER_NODE   processes per node (default: SLURM's tasks per node, else nvidia-smi's count)
#   MASTER_ADDR MASTER_PORT NODE_RANK   multi-node torchrun; srun derives MASTER_ADDR from SLURM
#   HOSTS           horovodrun -H list, e.g. node1:4,node2:4 (default: SLURM's nodes, else localhost)
#   WORKERS (6)  LOGS (./logs)  NAME  SEED (2024)  PRECISION (amp; fp32 with DEVICE=cpu)  DEVICE
#   PYTHON TORCHRUN HOROVODRUN   programs (default: the repository's .venv/bin/ ones, so the
#                   scripts work right after `make patch` without activating; else from PATH)
#   SRUN (srun)
#   DRY_RUN=1       print the command (one line, shell-quoted) instead of running it
# Flags given to the scale script ("$@") are appended last, so they override anything here
# (argparse keeps the last value), e.g. `bash run_scripts/large.sh --warmup 500`.

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
    echo "run_scripts/${SCALE:-?}: error: $*" >&2
    exit 2
}

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

# --- the published settings (docs/algorithm.md §6, §7) --------------------------------------------
# Shards: img2dataset writes 10,000 rows per shard, so the shard count is ceil(id space / 10^4).
# DATA_SIZE is the original URL list (the id space), NUM_SAMPLES the pairs actually downloaded.
# AdamW betas/eps are OpenCLIP's per-architecture defaults, written out so the command shows them.
use_scale() {
    SCALE=$1
    PUB_LR_MIN=""   # a floor of the cosine lr, where the published run had one
    case "$SCALE" in
        medium)
            DATA_SUBDIR=cc3m SHARDS='{00000..00331}.tar'
            PUB_DATA_SIZE=3318333 PUB_NUM_SAMPLES=2723840
            PUB_MODEL=RN50 PUB_GLOBAL_BATCH=1024 PUB_EPOCHS=37
            PUB_LR=1e-3 PUB_WD=0.1 PUB_WARMUP=10000 PUB_BETA1=0.9 PUB_BETA2=0.999 PUB_EPS=1e-8
            PUB_GAMMA_MIN=0.2 PUB_GAMMA_DECAY_EPOCHS=18 PUB_FASTCLIP_EPS=1e-14
            PUB_V3_LR_TAU=2e-4 PUB_V3_RHO=6.5 ;;
        large)
            DATA_SUBDIR=cc12m SHARDS='{00000..01242}.tar'
            PUB_DATA_SIZE=12423374 PUB_NUM_SAMPLES=9187328
            PUB_MODEL=ViT-B-32 PUB_GLOBAL_BATCH=2048 PUB_EPOCHS=33
            PUB_LR=4e-4 PUB_WD=0.1 PUB_WARMUP=10000 PUB_BETA1=0.9 PUB_BETA2=0.98 PUB_EPS=1e-6
            PUB_GAMMA_MIN=0.2 PUB_GAMMA_DECAY_EPOCHS=16 PUB_FASTCLIP_EPS=1e-14
            PUB_V3_LR_TAU=1e-4 PUB_V3_RHO=8.5 ;;
        xlarge)
            # The published run's cosine lr ended at 4e-5 (OpenCLIP's alone decays to 0): --lr-min.
            DATA_SUBDIR=laion400m SHARDS='{00000..41407}.tar'
            PUB_DATA_SIZE=414080000 PUB_NUM_SAMPLES=315658316
            PUB_MODEL=ViT-B-16 PUB_GLOBAL_BATCH=5120 PUB_EPOCHS=30
            PUB_LR=2e-4 PUB_WD=0.2 PUB_WARMUP=13200 PUB_BETA1=0.9 PUB_BETA2=0.98 PUB_EPS=1e-6
            PUB_GAMMA_MIN=0.8 PUB_GAMMA_DECAY_EPOCHS=10 PUB_FASTCLIP_EPS=1e-6
            PUB_V3_LR_TAU=5e-5 PUB_V3_RHO=16.0 PUB_LR_MIN=4e-5 ;;
        *) die "unknown scale '$SCALE' (medium, large or xlarge)" ;;
    esac
}

# --- data ---------------------------------------------------------------------------------
# Fills TRAIN_DATA_PATH, DATA_SIZE_VALUE, NUM_SAMPLES_VALUE.
resolve_data() {
    if [[ -n "${TRAIN_DATA:-}" ]]; then
        # The published id space / sample count describe the published shards only: a different
        # dataset must state its own, or FCCO state would be sized for the wrong dataset.
        [[ -n "${DATA_SIZE:-}" ]] ||
            die "TRAIN_DATA is set, so DATA_SIZE (the sample-id space, --data-size) must be set too"
        [[ -n "${TRAIN_NUM_SAMPLES:-}" ]] ||
            die "TRAIN_DATA is set, so TRAIN_NUM_SAMPLES (--train-num-samples) must be set too"
        TRAIN_DATA_PATH=$TRAIN_DATA
    else
        [[ -n "${DATA_DIR:-}" ]] || die "DATA_DIR is not set: point it at the folder that holds" \
            "$DATA_SUBDIR/$SHARDS (img2dataset webdataset shards), or set TRAIN_DATA"
        local dir="${DATA_DIR%/}/$DATA_SUBDIR"
        # Only a real run needs the files; a dry run may describe another machine's layout.
        if [[ "${DRY_RUN:-0}" != 1 && ! -d "$dir" ]]; then
            die "DATA_DIR=$DATA_DIR has no $DATA_SUBDIR/ folder (expected $dir/$SHARDS)"
        fi
        TRAIN_DATA_PATH="$dir/$SHARDS"
    fi
    DATA_SIZE_VALUE=${DATA_SIZE:-$PUB_DATA_SIZE}
    NUM_SAMPLES_VALUE=${TRAIN_NUM_SAMPLES:-$PUB_NUM_SAMPLES}
    is_positive_int "$DATA_SIZE_VALUE" || die "DATA_SIZE must be a positive integer, got '$DATA_SIZE_VALUE'"
    is_positive_int "$NUM_SAMPLES_VALUE" ||
        die "TRAIN_NUM_SAMPLES must be a positive integer, got '$NUM_SAMPLES_VALUE'"
}

# --- processes and batch ------------------------------------------------------------------
# SLURM_TASKS_PER_NODE looks like "4" or "4(x2)" or "4(x2),3"; the first count is what we need.
slurm_tasks_per_node() {
    echo "${SLURM_TASKS_PER_NODE%%[(,]*}"
}

# Fills NNODES_VALUE, GPUS_VALUE, WORLD_SIZE, PER_GPU_BATCH.
resolve_processes() {
    NNODES_VALUE=${NNODES:-${SLURM_JOB_NUM_NODES:-1}}
    GPUS_VALUE=${GPUS_PER_NODE:-}
    if [[ -z "$GPUS_VALUE" && "${LAUNCHER:-}" == python ]]; then
        GPUS_VALUE=1
    fi
    if [[ -z "$GPUS_VALUE" && -n "${SLURM_TASKS_PER_NODE:-}" ]]; then
        GPUS_VALUE=$(slurm_tasks_per_node)
    fi
    if [[ -z "$GPUS_VALUE" ]] && command -v nvidia-smi >/dev/null 2>&1; then
        GPUS_VALUE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    [[ -n "$GPUS_VALUE" && "$GPUS_VALUE" != 0 ]] ||
        die "GPUS_PER_NODE is not set and no GPU was detected: set GPUS_PER_NODE"
    is_positive_int "$NNODES_VALUE" || die "NNODES must be a positive integer, got '$NNODES_VALUE'"
    is_positive_int "$GPUS_VALUE" || die "GPUS_PER_NODE must be a positive integer, got '$GPUS_VALUE'"
    WORLD_SIZE=$((NNODES_VALUE * GPUS_VALUE))

    # The published runs fix the *global* batch; FCCO and the lr were tuned for it, so the
    # per-process batch follows from the number of processes rather than the other way round.
    local global=${GLOBAL_BATCH:-$PUB_GLOBAL_BATCH}
    is_positive_int "$global" || die "GLOBAL_BATCH must be a positive integer, got '$global'"
    if ((global % WORLD_SIZE != 0)); then
        die "global batch $global does not divide over" \
            "NNODES=$NNODES_VALUE x GPUS_PER_NODE=$GPUS_VALUE = $WORLD_SIZE processes"
    fi
    PER_GPU_BATCH=$((global / WORLD_SIZE))
}

# The venv `make patch` installed the patched trainer into, if there is one.
venv_program() {
    local program="$REPO_ROOT/.venv/bin/$1"
    if [[ -x "$program" ]]; then echo "$program"; else echo "$1"; fi
}

# --- launchers ----------------------------------------------------------------------------
# Each fills LAUNCH (array): the command up to and including the trainer's module, and
# TRAINER_PREFIX (array): flags the trainer needs because of the launcher.
launcher_python() {
    # One process, no launcher: for debugging on one GPU or a CPU.
    ((WORLD_SIZE == 1)) || die "LAUNCHER=python runs one process, but NNODES x GPUS_PER_NODE = $WORLD_SIZE"
    LAUNCH=("${PYTHON:-$(venv_program python)}" -u -m open_clip_train.main)
    TRAINER_PREFIX=()
}

launcher_torchrun() {
    LAUNCH=("${TORCHRUN:-$(venv_program torchrun)}" --nproc-per-node "$GPUS_VALUE")
    if ((NNODES_VALUE == 1)); then
        LAUNCH+=(--standalone)
    else
        # Static rendezvous: every node runs this script with the same MASTER_ADDR/PORT and
        # its own NODE_RANK (0 on the master).
        local name
        for name in MASTER_ADDR MASTER_PORT NODE_RANK; do
            [[ -n "${!name:-}" ]] ||
                die "NNODES=$NNODES_VALUE with LAUNCHER=torchrun needs $name in the environment"
        done
        LAUNCH+=(--nnodes "$NNODES_VALUE" --node-rank "$NODE_RANK"
                 --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
    fi
    # `--` ends torchrun's own options: without it torchrun rejects the trainer's --logs as an
    # ambiguous abbreviation of its --logs-specs. torchrun drops the `--` before the trainer.
    LAUNCH+=(-m open_clip_train.main --)
    TRAINER_PREFIX=()
}

launcher_srun() {
    # OpenCLIP reads rank and world size from SLURM_PROCID/SLURM_NTASKS itself, but joins the
    # process group through env://, so every task needs MASTER_ADDR/MASTER_PORT.
    local addr=${MASTER_ADDR:-}
    if [[ -z "$addr" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
        addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')  # no SIGPIPE
    fi
    [[ -n "$addr" ]] || die "LAUNCHER=srun needs MASTER_ADDR" \
        "(or run inside a SLURM allocation, which sets SLURM_JOB_NODELIST)"
    # Explicit node and task counts make srun refuse an allocation that does not match the
    # per-process batch computed above, instead of silently changing the global batch.
    LAUNCH=(env "MASTER_ADDR=$addr" "MASTER_PORT=${MASTER_PORT:-29500}"
            "${SRUN:-srun}" --nodes "$NNODES_VALUE" --ntasks-per-node "$GPUS_VALUE" --kill-on-bad-exit=1)
    # Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task; without it each task
    # gets one CPU and the dataloader workers crawl.
    [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && LAUNCH+=(--cpus-per-task "$SLURM_CPUS_PER_TASK")
    LAUNCH+=("${PYTHON:-$(venv_program python)}" -u -m open_clip_train.main)
    TRAINER_PREFIX=()
}

launcher_horovodrun() {
    local hosts=${HOSTS:-}
    if [[ -z "$hosts" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
        hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" |
            awk -v n="$NNODES_VALUE" -v g="$GPUS_VALUE" 'NR <= n {printf "%s%s:%s", (NR > 1 ? "," : ""), $0, g}')
    fi
    if [[ -z "$hosts" ]]; then
        ((NNODES_VALUE == 1)) || die "NNODES=$NNODES_VALUE with LAUNCHER=horovodrun needs HOSTS" \
            "(e.g. node1:$GPUS_VALUE,node2:$GPUS_VALUE)"
        hosts="localhost:$GPUS_VALUE"
    fi
    LAUNCH=("${HOROVODRUN:-$(venv_program horovodrun)}" -np "$WORLD_SIZE" -H "$hosts")
    # Horovod builds without MPI (like this project's CPU build) need the Gloo controller.
    [[ "${DEVICE:-}" == cpu ]] && LAUNCH+=(--gloo)
    LAUNCH+=("${PYTHON:-$(venv_program python)}" -m open_clip_train.main)
    TRAINER_PREFIX=(--horovod)
}

resolve_launcher() {
    case "${LAUNCHER:-torchrun}" in
        torchrun) launcher_torchrun ;;
        srun) launcher_srun ;;
        horovodrun) launcher_horovodrun ;;
        python) launcher_python ;;
        *) die "LAUNCHER must be torchrun, srun, horovodrun or python, got '${LAUNCHER}'" ;;
    esac
}

# --- the command --------------------------------------------------------------------------
# Flags shared by FastCLIP and the OpenCLIP baseline: same data, model, batch, schedule, seed,
# so the two runs differ only in the loss (and its temperature handling).
common_flags() {
    local model=${MODEL:-$PUB_MODEL}
    local precision=${PRECISION:-amp}
    [[ -z "${PRECISION:-}" && "${DEVICE:-}" == cpu ]] && precision=fp32  # CPU autocast only slows tiny runs
    COMMON=(
        --train-data "$TRAIN_DATA_PATH" --dataset-type webdataset
        --train-num-samples "$NUM_SAMPLES_VALUE"
        --model "$model" --batch-size "$PER_GPU_BATCH" --epochs "${EPOCHS:-$PUB_EPOCHS}"
        --lr "$PUB_LR" --wd "$PUB_WD" --warmup "$PUB_WARMUP" --lr-scheduler cosine
        --opt adamw --beta1 "$PUB_BETA1" --beta2 "$PUB_BETA2" --eps "$PUB_EPS"
        --precision "$precision" --workers "${WORKERS:-6}" --seed "${SEED:-2024}"
        --save-frequency 1 --logs "${LOGS:-./logs}" --name "$RUN_NAME"
    )
    [[ -n "${PUB_LR_MIN:-}" ]] && COMMON+=(--lr-min "$PUB_LR_MIN")
    [[ -n "${DEVICE:-}" ]] && COMMON+=(--device "$DEVICE")
    return 0
}

# Single-quote a word unless it is made of characters the shell leaves alone (printf %q would
# backslash every brace and comma of a shard pattern; this stays readable and paste-able).
shell_quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$1"
    else
        local close_escape_reopen="'\\''"
        printf "'%s'" "${1//\'/$close_escape_reopen}"
    fi
}

# Runs or prints: launcher, launcher-required trainer flags, our flags, the user's flags.
launch() {
    local cmd=("${LAUNCH[@]}" "${TRAINER_PREFIX[@]}" "$@")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        local word line=""
        for word in "${cmd[@]}"; do
            line+="${line:+ }$(shell_quote "$word")"
        done
        echo "$line"
    else
        echo "run_scripts/$SCALE: global batch ${GLOBAL_BATCH:-$PUB_GLOBAL_BATCH}" \
            "= $WORLD_SIZE processes x $PER_GPU_BATCH" >&2
        exec "${cmd[@]}"
    fi
}

setup_run() {
    [[ -n "${SCALE:-}" ]] || die "the calling script did not call use_scale"
    resolve_data
    resolve_processes
    resolve_launcher
    common_flags
}

# FastCLIP: v3 by default with the published v3 settings; VERSION picks another preset, which
# then keeps its own ρ / lr_tau / temperature (open_clip_patch/versions.py) but this scale's γ and ε.
fastclip_main() {
    local version=${VERSION:-v3}
    case "$version" in
        v0|v1|v2|v3|sogclr|isogclr) ;;
        *) die "VERSION must be one of v0 v1 v2 v3 sogclr isogclr, got '$version'" ;;
    esac
    RUN_NAME=${NAME:-${SCALE}_fastclip${version}}
    setup_run
    local flags=(
        --fastclip --fastclip-version "$version" --data-size "$DATA_SIZE_VALUE"
        --gamma-min "$PUB_GAMMA_MIN" --gamma-decay-epochs "$PUB_GAMMA_DECAY_EPOCHS"
        --fastclip-eps "$PUB_FASTCLIP_EPS"
        # The published ρ, lr_τ and lr were tuned under the reference implementation's loss
        # (½ scale, v0/v3's doubled τ·∂g/u term, v2's weighting, shifted ε and Adam;
        # docs/algorithm.md §9); our default, `exact`, would need them re-tuned.
        --fcco-mode reference
    )
    if [[ "$version" == v3 ]]; then
        flags+=(--lr-tau "$PUB_V3_LR_TAU" --rho "$PUB_V3_RHO")
    fi
    launch "${COMMON[@]}" "${flags[@]}" "$@"
}

# OpenCLIP baseline: the mini-batch contrastive loss over the global batch, features gathered
# with autograd (the setting FastCLIP is compared against in the paper).
openclip_main() {
    RUN_NAME=${NAME:-${SCALE}_openclip}
    setup_run
    launch "${COMMON[@]}" --local-loss --gather-with-grad "$@"
}
