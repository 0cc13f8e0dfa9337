#!/usr/bin/env bash
# nvcc for mamba-ssm's and causal-conv1d's builds (gpu_check.sh sets PYTORCH_NVCC to this): their setup.py pass
# -gencode for nine architectures and so make torch ignore TORCH_CUDA_ARCH_LIST; nine times the compile time would
# not fit the check's budget. This drops them all and compiles for the present GPU's, $GPU_CHECK_ARCH (e.g. 90).
set -euo pipefail
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -gencode) shift 2 ;;
    -gencode=*) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
exec "$NVCC_REAL" "${args[@]}" -gencode "arch=compute_${GPU_CHECK_ARCH},code=sm_${GPU_CHECK_ARCH}"
