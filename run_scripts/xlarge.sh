#!/usr/bin/env bash
# Extra-large scale (docs/algorithm.md §7): FastCLIP-v3 (VERSION=... for the others), LAION-400M's 315M
# downloaded subset, ViT-B/16, global batch 5120, 30 epochs. Too long for one SLURM job:
# xlarge_chain.sbatch runs it as 3-epoch jobs. Baseline: xlarge_openclip.sh.
#
# Expected data: img2dataset webdataset shards (10,000 rows each, fewer where downloads
# failed; the ids keep the original URL list's numbering, hence --data-size):
#   $DATA_DIR/laion400m/{00000..41407}.tar (414,080,000 URLs; 315,658,316 downloaded)
# Run after `make patch` (torchrun on this node's GPUs; srun inside an sbatch allocation;
# DRY_RUN=1 prints the command instead):
#   DATA_DIR=/data bash run_scripts/xlarge.sh
#   DATA_DIR=/data LAUNCHER=srun NNODES=2 GPUS_PER_NODE=4 bash run_scripts/xlarge.sh
#   DATA_DIR=/data DRY_RUN=1 bash run_scripts/xlarge.sh
# Environment and overrides: see run_scripts/common.sh; extra trainer flags go last.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
use_scale xlarge
fastclip_main "$@"
