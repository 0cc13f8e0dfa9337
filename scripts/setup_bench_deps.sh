#!/usr/bin/env bash
# The anchor only the benchmarks compare against, installed into .venv for benchmarking: mambapy (pure PyTorch).
# mamba-ssm's Python part, the other anchor, is in every .venv (scripts/setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --no-deps mambapy==1.2.0
