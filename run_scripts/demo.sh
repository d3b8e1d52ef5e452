#!/usr/bin/env bash
# `make demo`: OpenCLIP vs FastCLIP-v3 vs SigLIP side by side on the demo's emoji/icon pool, on a
# CPU (the demo/ package does the work: data, training, per-epoch evaluation, report). Run after
# `make patch`, from anywhere:
#   bash run_scripts/demo.sh data             # only the data (first build: ~6 min, cached)
#   bash run_scripts/demo.sh                  # full demo -> build/demo/report.md, curves.png
#   bash run_scripts/demo.sh study --jobs 2   # 5 seeds x 6 methods -> build/demo/study_b16.md
#   bash run_scripts/demo.sh batch-curve --jobs 2   # global batch 8/16/32/64/128, 3 seeds
#   bash run_scripts/demo.sh --quick          # digits, 2 short epochs (what the tests run)
#   DEMO_QUICK=1 bash run_scripts/demo.sh     # the same
#   bash run_scripts/demo.sh --methods openclip,fastclip-v3 --out build/demo-two
#   bash run_scripts/demo.sh tune --jobs 2    # re-run the tuning grids (validation split only)
#   bash run_scripts/demo.sh --batch-size 32 --methods openclip,fastclip-v3,fastclip-v1  # regime
# Environment: PYTHON (default: the repository's .venv python, else python from PATH),
# OMP_NUM_THREADS (default 2: the evaluation's threads; every trainer runs at one thread, two at
# once, so the demo's runs are the study's). Flags go to `python -m demo`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # REPO_ROOT, venv_program
cd "$REPO_ROOT"   # demo/ and eval/ are packages of the repository root, not installed ones
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "${PYTHON:-$(venv_program python)}" -m demo "$@"
