# FastCLIP over OpenCLIP 3.3.0 — set-up, patch workflow, tests.
# `make test` (what CI runs) builds everything it needs from nothing.

PY_SYS   ?= python3.11
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
PYTEST_ARGS ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Tests and tools never use a GPU unless asked; the machine has none anyway.
export OMP_NUM_THREADS ?= 2

SETUP_STAMP := $(VENV)/.setup-done
PATCH_STAMP := build/.installed-open-clip

.PHONY: help setup horovod patch refresh-patches check-patches test test-fast test-upstream clean \
        eval eval-imagenet report bench bench-comm demo demo-data demo-study gpu-bundle gpu-check mutate

help:
	@echo "make setup           venv with pinned torch, deps and Horovod (Gloo, CPU)"
	@echo "make patch           unpack pinned open_clip_torch sdist, apply patches/, install editable"
	@echo "make refresh-patches re-export build/open_clip commits on top of 'upstream' into patches/"
	@echo "make check-patches   apply from scratch and prove patches/ is current"
	@echo "make test            setup + patch + check-patches + pytest (what CI runs)"
	@echo "make test-upstream   OpenCLIP's heavier offline training tests against the patched tree"
	@echo "make mutate          mutmut over losses.py, state.py, schedules.py on the fast tests; survivors listed"
	@echo "make demo            OpenCLIP vs FastCLIP-v3 vs SigLIP on the emoji/icon pool, CPU (DEMO_QUICK=1: fast)"
	@echo "make demo-data       only the demo's data (pool from npm, rasterised once, cached)"
	@echo "make demo-study      5 seeds x 6 methods at the demo's settings + batch-size curve (hours)"
	@echo "make bench           FastCLIP's cost vs the OpenCLIP baseline (step time, bytes, memory, quality)"
	@echo "make bench-comm      bytes sent per step, FastCLIP-v3 vs OpenCLIP, 2 gloo ranks"
	@echo "make gpu-bundle      wheels + patched OpenCLIP for the GPU machine -> build/gpu_bundle/"
	@echo "make gpu-check       correctness and cost on one GPU (GPU_CHECK_ARGS='--device cpu --tiny')"
	@echo "make eval CKPT=.. DATA=..  DataComp 38-task eval of checkpoint(s) on local wds sets"
	@echo "make eval-imagenet CKPT=.. IMAGENET_VAL=..  ImageNet & variants zero-shot"
	@echo "make report RUNS='a=logs/x b=logs/y' OUT=..  markdown table + plots"

# ---- environment -------------------------------------------------------------------------
$(SETUP_STAMP): requirements.in constraints.txt
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch first: the machine's pip serves these two from disk (do not lift its cap)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -r requirements.in -c constraints.txt
	touch $@

setup: $(SETUP_STAMP)
	$(MAKE) horovod

horovod: $(SETUP_STAMP)
	# make's own MAKEFLAGS (e.g. "w") would stop the script from choosing -j<cores> for cmake's make
	env -u MAKEFLAGS VENV=$(VENV) bash tools/build_horovod.sh

# ---- patch set ---------------------------------------------------------------------------
patch: $(SETUP_STAMP)
	PYTHON=$(PY) bash tools/patchset.sh apply
	@if [ ! -f $(PATCH_STAMP) ] || ! cmp -s build/open_clip.stamp $(PATCH_STAMP) \
	    || ! $(PY) -c "import open_clip_train.main, open_clip_patch" 2>/dev/null; then \
	  echo "installing the patched OpenCLIP tree and the overlay (editable)"; \
	  $(PIP) install -q --no-deps --no-build-isolation -e build/open_clip -e . && \
	  cp build/open_clip.stamp $(PATCH_STAMP); \
	fi

refresh-patches:
	PYTHON=$(PY) bash tools/patchset.sh refresh

check-patches: $(SETUP_STAMP)
	PYTHON=$(PY) bash tools/patchset.sh check

# ---- tests -------------------------------------------------------------------------------
test: setup patch check-patches
	$(PY) -m pytest -q $(PYTEST_ARGS) tests
	cd build/open_clip && ../../$(PY) -m pytest -q tests/test_wds.py tests/test_num_shards.py

# the project's own tests only (no setup, patch or upstream checks): the inner loop
test-fast:
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test-upstream: setup patch
	cd build/open_clip && ../../$(PY) -m pytest -q tests/test_training_simple.py::test_training tests/test_training_simple.py::test_training_unfreezing_vit \
	  $(PYTEST_ARGS)

# mutation testing of losses.py, state.py, schedules.py on the fast tests (~15 min; not in test)
mutate: setup patch
	PYTHON=$(PY) bash tools/mutate.sh

# ---- demo ----------------------------------------------------------------------------------
# DEMO_QUICK=1 (or DEMO_ARGS=--quick): the digits fallback, two short epochs.
# demo-data: only the data (the first build rasterises the pool once, ~6 min, progress bar);
# demo-study: seeds x methods at the demo's settings (reusing its runs), then the batch-size
# curve (hours; STUDY_ARGS).
demo: setup patch demo-data
	bash run_scripts/demo.sh $(DEMO_ARGS)

demo-data: setup
	bash run_scripts/demo.sh data $(DEMO_ARGS)

demo-study: setup patch
	bash run_scripts/demo.sh study --jobs 2 $(STUDY_ARGS)
	bash run_scripts/demo.sh batch-curve --jobs 2 $(STUDY_ARGS)

# ---- benchmarks (ratios against the baseline measured in the same run) -------------------
bench: setup patch
	$(PY) tools/bench.py $(BENCH_ARGS)

bench-comm: setup patch
	$(PY) tools/bench_comm.py

# ---- GPU (README "GPU"): prepare here, run there ----------------------------------------
# gpu-bundle needs this machine's network once; the GPU machine has none and no venv, so
# gpu-check runs with whichever python holds torch: the venv here, python3 there (with
# PYTHONPATH set to the installed bundle, see tools/gpu_bundle.sh).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=

gpu-bundle: patch
	PYTHON=$(PY) bash tools/gpu_bundle.sh

gpu-check:
	$(GPU_PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

# ---- evaluation (local data only; see README "Evaluation") ------------------------------
CKPT ?=
DATA ?=
EVAL_ARGS ?=

eval:
	@test -n "$(CKPT)" -a -n "$(DATA)" || { echo "usage: make eval CKPT=<checkpoint(s), globs ok> DATA=<dir> [EVAL_ARGS=--allow-missing]"; exit 2; }
	set -e; for c in $(CKPT); do $(PY) -m eval.datacomp --checkpoint $$c --data-dir $(DATA) $(EVAL_ARGS); done

eval-imagenet:
	@test -n "$(CKPT)" -a -n "$(IMAGENET_VAL)" || { echo "usage: make eval-imagenet CKPT=<checkpoint(s)> IMAGENET_VAL=<dir> [EVAL_ARGS='--imagenet-v2 DIR ...']"; exit 2; }
	set -e; for c in $(CKPT); do $(PY) -m eval.imagenet --checkpoint $$c --imagenet-val $(IMAGENET_VAL) $(EVAL_ARGS); done

report:
	@test -n "$(RUNS)" -a -n "$(OUT)" || { echo "usage: make report RUNS='baseline=logs/a fastclip-v3=logs/b' OUT=<dir>"; exit 2; }
	$(PY) -m eval.report $(foreach r,$(RUNS),--run $(r)) --output-dir $(OUT)

clean:
	rm -rf build
