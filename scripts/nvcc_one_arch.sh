#!/usr/bin/env bash
# nvcc for mamba-ssm's and causal-conv1d's builds (gpu_check.sh and gpu_kernels.sh set PYTORCH_NVCC to this): their
# setup.py pass -gencode for nine architectures and so make torch ignore TORCH_CUDA_ARCH_LIST; nine times the compile
# time would not fit the check's budget. This drops them all and compiles for one, $GPU_CHECK_ARCH (e.g. 90).
# It also drops -lineinfo (source lines for profilers; it doubles the cubins) and asks for uncompressed fatbins,
# which xz shrinks ~8x in the bundle where nvcc's own compression leaves nothing for xz to find.
set -euo pipefail
args=()
while [ $# -gt 0 ]; do
  case $1 in
    -gencode) shift 2 ;;
    -gencode=* | -lineinfo) shift ;;
    *) args+=("$1"); shift ;;
  esac
done
exec "$NVCC_REAL" "${args[@]}" --no-compress -gencode "arch=compute_${GPU_CHECK_ARCH},code=sm_${GPU_CHECK_ARCH}"
