#!/usr/bin/env bash
# Medium scale (docs/algorithm.md §7): FastCLIP-v3 (VERSION=v0|v1|v2|sogclr|isogclr for the others),
# CC3M, RN50, global batch 1024, 37 epochs. Baseline: medium_openclip.sh.
#
# Expected data: img2dataset webdataset shards (10,000 rows each, fewer where downloads
# failed; the ids keep the original URL list's numbering, hence --data-size):
#   $DATA_DIR/cc3m/{00000..00331}.tar    (3,318,333 URLs; 2,723,840 downloaded)
# Run after `make patch` (torchrun on this node's GPUs; srun inside an sbatch allocation;
# DRY_RUN=1 prints the command instead):
#   DATA_DIR=/data bash run_scripts/medium.sh
#   DATA_DIR=/data LAUNCHER=srun NNODES=2 GPUS_PER_NODE=4 bash run_scripts/medium.sh
#   DATA_DIR=/data DRY_RUN=1 bash run_scripts/medium.sh
# Environment and overrides: see run_scripts/common.sh; extra trainer flags go last.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
use_scale medium
fastclip_main "$@"
