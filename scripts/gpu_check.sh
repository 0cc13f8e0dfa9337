#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions run in child shells (run_step), which shellcheck does not follow
# `make gpu-check`, on a GPU machine without network (Python 3.12 with torch and triton, nvcc): a venv over the
# machine's Python (itself a venv there), what it lacks installed offline from gpu_bundle/ (`make gpu-bundle`):
# mamba-ssm's, causal-conv1d's and fairseq's wheels prebuilt by `make gpu-kernels` where the machine's torch
# git_version, CUDA, Python tag and GPU's compute capability are theirs, else built from the sdists here (the CUDA
# kernels for the present GPU only, with nvcc); then the CUDA tests, benchmarks/bench_gpu.py and the CPU's fp16/bf16
# tests. Writes $OUT/gpu_check.json and gpu_check.md (default OUT: runs/gpu_check), the logs in $OUT/logs. Each step
# is timed and capped; a failed step is recorded and the next ones run where they can; steps left when
# GPU_CHECK_BUDGET_S (default 540) is spent are recorded as skipped.
#   --skip-install   reuse GPU_CHECK_VENV as it is (no unpacking, venv or pip step)
# Exit status: 0 every step passed; 1 a step failed or was skipped; 2 bad usage; 3 no CUDA device: every step that
# needs none ran and passed, the CUDA steps did not run (the dry run of a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export REPO=$PWD
OUT=${OUT:-runs/gpu_check}
export BUNDLE=${GPU_BUNDLE:-gpu_bundle}
export VENV=${GPU_CHECK_VENV:-.venv-gpu}
export WORK=${GPU_CHECK_WORK:-build/gpu_check}
export BASE_PYTHON=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
SKIP_INSTALL=0
case ${1:-} in
  "") ;;
  --skip-install) SKIP_INSTALL=1 ;;
  *) echo "usage: $0 [--skip-install]" >&2; exit 2 ;;
esac
mkdir -p "$OUT/logs" "$WORK"
OUT=$(cd "$OUT" && pwd)
export OUT
STEPS="$OUT/steps.tsv"
: > "$STEPS"
START=$EPOCHREALTIME
FAILED=0
STOPPED=""
export VPY="$VENV/bin/python"
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WORK/packages" PIP_DISABLE_PIP_VERSION_CHECK=1  # never the network
for cuda_root in "${CUDA_HOME:-}" /usr/local/cuda; do  # where nvcc lives when it is not on PATH
  if ! command -v nvcc >/dev/null && [ -n "$cuda_root" ] && [ -x "$cuda_root/bin/nvcc" ]; then
    PATH="$PATH:$cuda_root/bin"
  fi
done

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS"; echo "[gpu_check] $1: $2 (${3} s)"; }

# run_step NAME CAP_S FUNCTION: FUNCTION in a child bash, its output in $OUT/logs/NAME.log, killed after CAP_S
# or when the budget runs out
run_step() {
  local name=$1 cap=$2 fn=$3 left rc status t0 log
  log="$OUT/logs/${name// /_}.log"
  left=$(awk -v s="$START" -v now="$EPOCHREALTIME" -v b="$BUDGET_S" 'BEGIN { printf "%d", b - (now - s) }')
  if [ "$left" -le 5 ]; then
    record "$name" "skipped (the ${BUDGET_S} s budget is spent)" 0 ""
    FAILED=1
    return 1
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "[gpu_check] $name (at most $cap s) ..."
  t0=$EPOCHREALTIME
  timeout --kill-after=10 "$cap" bash -c "$fn" > "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after $cap s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$name" "$status" "$(elapsed "$t0")" "$log"
  if [ "$rc" -ne 0 ]; then
    tail -n 5 "$log" | sed 's/^/    /'
    FAILED=1
  fi
  return "$rc"
}
skip() { record "$1" "skipped ($2)" 0 ""; }

unpack_bundle() { rm -rf "$WORK/packages" && tar -xJf "$BUNDLE/packages.tar.xz" -C "$WORK"; }
# The machine's python3 may itself be a venv (the GPU machine's is, holding torch): a venv made from it sees the base
# interpreter's packages, not that venv's, so a .pth names the parent's site-packages (after the new venv's own)
make_venv() {
  [ -x "$VPY" ] || "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
  local site
  site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$BASE_PYTHON" -c "import site; print('\n'.join(site.getsitepackages()))" > "$site/gpu_check_parent.pth"
  "$VPY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
}
# what the bundle left out as the machine's own: there, and at the version named
check_preinstalled() {
  "$VPY" - scripts/gpu_preinstalled.txt <<'PYTHON'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

wrong = []
for line in Path(sys.argv[1]).read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, _, wanted = line.strip().partition("==")
        try:
            found = version(name)
        except PackageNotFoundError:
            found = None
        if found is None or (wanted and found.split("+")[0] != wanted):
            wrong.append(f"{name}: wanted {wanted or 'any version'}, found {found or 'none'}")
print("\n".join(wrong) or "all there")
sys.exit(1 if wrong else 0)
PYTHON
}
install_wheels() { "$VPY" -m pip install -r scripts/gpu_requirements.txt; }
# the prebuilt wheels where they fit this torch, CUDA and Python (the GPU's capability is checked at the CUDA step),
# else fairseq from its sdist (the kernels then at the CUDA step); $WORK/prebuilt says which, for that step and the
# report. CUDA_HOME unset: fairseq's setup.py adds CUDA extensions (which nothing here uses) whenever it is set
install_compiled() {
  if "$VPY" scripts/gpu_kernels_info.py match "$WORK/packages/prebuilt" > "$WORK/prebuilt"; then
    "$VPY" -m pip install --no-deps "$WORK"/packages/prebuilt/*.whl
  else
    sed -i '1s/^/not used, built from the sdists: /' "$WORK/prebuilt"
    env -u CUDA_HOME "$VPY" -m pip install --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
  fi
  cat "$WORK/prebuilt"
}
install_project() { "$VPY" -m pip install --no-build-isolation --no-deps -e .; }
check_imports() { "$VPY" -c "import fairseq.tasks, mamba_hubert, tests.conftest, sacrebleu; print('imports ok')"; }
# half precision on the CPU: autocast, MI capture, bf16/fp16 weight decay groups, the kernel's bf16, streaming
test_low_precision() {
  "$VPY" -m pytest -q -p no:cacheprovider tests/test_half_precision.py tests/test_weight_decay.py \
    tests/test_cpu_kernel.py tests/test_streaming.py -k "autocast or fp16 or amp or low_precision or half or dtype" \
    --junitxml="$OUT/logs/test_low_precision.xml"
}
cuda_device() { "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
# the prebuilt kernels where they were installed and are for this GPU's compute capability, else both packages'
# wheels built side by side (one arch each, MAX_JOBS compiles at once), then installed
build_kernels() {
  local capability
  capability=$("$VPY" -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")
  if grep -q '^the prebuilt' "$WORK/prebuilt" 2>/dev/null &&
    "$VPY" scripts/gpu_kernels_info.py match "$WORK/packages/prebuilt" --capability "$capability"; then
    echo "prebuilt for sm_${capability/./}: no build"
    return 0
  fi
  echo "building from the sdists for sm_${capability/./}"
  if ! command -v nvcc >/dev/null; then
    echo "no nvcc on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin to build them with"
    return 1
  fi
  GPU_CHECK_ARCH=$("$VPY" -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}{minor}')")
  NVCC_REAL=$(command -v nvcc)
  export GPU_CHECK_ARCH NVCC_REAL PYTORCH_NVCC="$REPO/scripts/nvcc_one_arch.sh" MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export TORCH_CUDA_ARCH_LIST="${GPU_CHECK_ARCH:0:-1}.${GPU_CHECK_ARCH: -1}"
  export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE  # build here: never look for a prebuilt wheel online
  rm -rf "$WORK/kernels" && mkdir -p "$WORK/kernels"
  "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/kernels" causal-conv1d==1.7.0 \
    > "$OUT/logs/build_causal_conv1d.log" 2>&1 &
  local conv=$!
  "$VPY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/kernels" mamba-ssm==2.3.2.post1 \
    > "$OUT/logs/build_mamba_ssm.log" 2>&1
  local mamba=$?
  wait "$conv"
  local conv_rc=$?
  if [ "$conv_rc" -ne 0 ] || [ "$mamba" -ne 0 ]; then
    tail -n 15 "$OUT"/logs/build_*.log  # the builds' own logs: run_step shows this function's tail
    return 1
  fi
  "$VPY" -m pip install --no-deps --force-reinstall "$WORK"/kernels/*.whl
}
# `import mamba_ssm` runs its __init__, which imports these from the machine's transformers and huggingface_hub;
# checked before the CUDA steps, which they do not need
check_mamba_ssm_imports() {
  "$VPY" -c "
from transformers.generation import GenerateDecoderOnlyOutput, TextStreamer
from transformers.utils import WEIGHTS_NAME, CONFIG_NAME
from transformers.utils.hub import cached_file
from huggingface_hub import PyTorchModelHubMixin
print('mamba-ssm imports ok')"
  # where the prebuilt wheels are installed, they load against this torch without a GPU
  if grep -q '^the prebuilt' "$WORK/prebuilt"; then
    "$VPY" -c "
import torch, selective_scan_cuda, causal_conv1d_cuda, mamba_ssm, causal_conv1d
print('prebuilt kernels load: mamba_ssm', mamba_ssm.__version__, 'causal_conv1d', causal_conv1d.__version__)"
  fi
}
check_kernel() {
  "$VPY" -c "
import torch, mamba_ssm, causal_conv1d
from mamba_hubert.ops.selective_scan import fused_mamba_inner, resolve_scan_impl
assert resolve_scan_impl('auto', torch.device('cuda')) == 'cuda', 'the selective scan does not use the kernel'
assert fused_mamba_inner('auto', torch.device('cuda')) is not None, 'the blocks do not use the fused path'
print('mamba_ssm', mamba_ssm.__version__, 'causal_conv1d', causal_conv1d.__version__, torch.cuda.get_device_name())"
}
# a skipped test here means the kernel was not found: a failure for this check. Triton's fp32 dots compare in IEEE
# fp32 (its default on a GPU is TF32, ~1e-2 off at these sizes); the test module sets it too
test_cuda_path() {
  TRITON_F32_DEFAULT=ieee "$VPY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda_path.py \
    --junitxml="$OUT/logs/test_cuda_path.xml" &&
    grep -q 'skipped="0"' "$OUT/logs/test_cuda_path.xml"
}
bench_gpu() { "$VPY" benchmarks/bench_gpu.py --out "$OUT/bench"; }
export -f unpack_bundle make_venv check_preinstalled install_wheels install_compiled install_project check_imports \
  check_mamba_ssm_imports test_low_precision build_kernels check_kernel test_cuda_path bench_gpu

# each install step needs the one before it
reason=""
for step in "unpack bundle:60:unpack_bundle" "venv:60:make_venv" "check preinstalled:30:check_preinstalled" \
  "install wheels:120:install_wheels" "install compiled:480:install_compiled" "install project:60:install_project"; do
  IFS=: read -r name cap fn <<< "$step"
  if [ "$SKIP_INSTALL" -eq 1 ]; then
    skip "$name" "--skip-install"
  elif [ -n "$reason" ]; then
    skip "$name" "$reason"
  else
    run_step "$name" "$cap" "$fn" || reason="$name did not pass"
  fi
done
run_step "check imports" 60 check_imports
if [ "$SKIP_INSTALL" -eq 1 ]; then
  skip "check mamba-ssm imports" "--skip-install"
else
  run_step "check mamba-ssm imports" 60 check_mamba_ssm_imports
fi
# the CUDA steps first, as the budget is for them; the CPU-only half-precision tests after
if ! cuda_device; then
  STOPPED="cuda kernels"
else
  if run_step "cuda kernels" 420 build_kernels; then
    run_step "check kernel" 60 check_kernel
  else
    skip "check kernel" "cuda kernels did not pass"
  fi
  run_step "test cuda path" 120 test_cuda_path
  run_step "bench gpu" 240 bench_gpu
fi
run_step "test fp16 bf16" 300 test_low_precision
[ -n "$STOPPED" ] && echo "[gpu_check] no CUDA device: stopped before $STOPPED"

REPORT_PY=$VPY
[ -x "$REPORT_PY" ] || REPORT_PY=$BASE_PYTHON
PREBUILT=$(head -n 1 "$WORK/prebuilt" 2>/dev/null || echo "not tried")
echo "[gpu_check] prebuilt kernels: $PREBUILT"
"$REPORT_PY" scripts/gpu_check_report.py --out "$OUT" --stopped-before "$STOPPED" --total-s "$(elapsed "$START")" \
  --prebuilt "$PREBUILT"
if [ "$FAILED" -ne 0 ]; then
  exit 1
fi
[ -n "$STOPPED" ] && exit 3
exit 0
