#!/usr/bin/env bash
# Large scale (docs/algorithm.md §7): FastCLIP-v3 (VERSION=v0|v1|v2|sogclr|isogclr for the others),
# CC12M, ViT-B/32, global batch 2048, 33 epochs. Baseline: large_openclip.sh.
#
# Expected data: img2dataset webdataset shards (10,000 rows each, fewer where downloads
# failed; the ids keep the original URL list's numbering, hence --data-size):
#   $DATA_DIR/cc12m/{00000..01242}.tar   (12,423,374 URLs; 9,187,328 downloaded)
# Run after `make patch` (torchrun on this node's GPUs; srun inside an sbatch allocation;
# DRY_RUN=1 prints the command instead):
#   DATA_DIR=/data bash run_scripts/large.sh
#   DATA_DIR=/data LAUNCHER=srun NNODES=2 GPUS_PER_NODE=4 bash run_scripts/large.sh
#   DATA_DIR=/data DRY_RUN=1 bash run_scripts/large.sh
# Environment and overrides: see run_scripts/common.sh; extra trainer flags go last.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
use_scale large
fastclip_main "$@"
