#!/usr/bin/env bash
# The anchors the benchmarks compare against, installed into .venv only for benchmarking:
# mambapy (pure PyTorch), and mamba-ssm's pure-Python parts without its CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --no-deps mambapy==1.2.0 einops==0.8.2
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install -q --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
