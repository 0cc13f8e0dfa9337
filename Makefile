# The README's two commands: `make demo` (the whole pipeline on a generated corpus) and `make test`;
# `make paper`: the paper's comparison (a linear vs a Conformer head, a reconstruction-task Mamba, MI through each).
# `make gpu-kernels` and `make gpu-bundle` here (network), then `make gpu-check` on a GPU machine without network
# (docs/GPU.md, GPU check).
PYTHON ?= .venv/bin/python
DEMO_DIR ?= runs/demo
PAPER_DIR ?= runs/paper

.PHONY: demo paper test lint system-deps bench gpu-kernels gpu-bundle gpu-check

.venv/.installed: scripts/setup_venv.sh setup.py
	bash scripts/setup_venv.sh

system-deps:
	bash scripts/install_system_deps.sh

demo: .venv/.installed system-deps
	$(PYTHON) -m mamba_hubert.demo --out $(DEMO_DIR)

paper: .venv/.installed system-deps
	$(PYTHON) -m mamba_hubert.demo.paper --out $(PAPER_DIR)

test: .venv/.installed system-deps
	$(PYTHON) -m pytest -q tests

lint: .venv/.installed
	.venv/bin/ruff check .

bench: .venv/.installed
	bash scripts/setup_bench_deps.sh
	$(PYTHON) benchmarks/bench_scan.py --out benchmarks/results/scan --png

# ~20 CPU minutes, not part of `test`: needs nvcc 13.0 and a CPython 3.12, no GPU
gpu-kernels:
	bash scripts/gpu_kernels.sh

gpu-bundle: .venv/.installed
	bash scripts/gpu_bundle.sh

# no .venv here: the GPU machine's own Python and torch, everything else from gpu_bundle/
gpu-check:
	bash scripts/gpu_check.sh
