#!/usr/bin/env bash
# `make gpu-kernels`: builds, on this machine and without a GPU, the wheels gpu_check.sh would otherwise build in the
# GPU machine's minutes: mamba-ssm's and causal-conv1d's CUDA kernels for sm_90 (H100, H200) and fairseq-fixed's C++
# extensions, against PyPI's torch==2.11.0 (cp312, the GPU machine's 2.11.0+cu130) in a CPython 3.12 venv, with
# nvcc 13.0. Writes gpu_kernels/ (git-ignored): the wheels and build_info.json (what they were built against, sizes,
# CPU and wall seconds), then installs them in that venv and imports their entry points. ~20 CPU minutes.
#   CUDA_HOME       the CUDA 13.0 toolkit (default: the first of /usr/local/cuda-13.0, /usr/local/cuda with nvcc 13.0)
#   GPU_KERNELS_PYTHON  a CPython 3.12 (default: python3.12 on PATH, else pyenv's)
#   MAX_JOBS        compiles at once (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${GPU_KERNELS_DIR:-gpu_kernels}
VENV=${GPU_KERNELS_VENV:-.venv-gpu-build}
LOGS=build/gpu_kernels  # the builds' own output
ARCH=90
PACKAGES=(causal-conv1d==1.7.0 mamba-ssm==2.3.2.post1 fairseq-fixed==0.12.3.1)

nvcc_release() { "$1/bin/nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*' || true; }
missing=()
if [ -z "${CUDA_HOME:-}" ]; then
  for candidate in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ "$(nvcc_release "$candidate")" = "release 13.0" ]; then CUDA_HOME=$candidate && break; fi
  done
fi
if [ "$(nvcc_release "${CUDA_HOME:-/nonexistent}")" != "release 13.0" ]; then
  missing+=("nvcc 13.0 (set CUDA_HOME to a CUDA 13.0 toolkit: the folder holding bin/nvcc, not a wrapper on PATH)")
fi
is_312() { [ "$("$1" -c 'import sys; print(sys.version_info[:2] == (3, 12))' 2>/dev/null)" = True ]; }
PY312=""
# a pyenv shim on PATH answers to python3.12 even where that version is not the selected one: each is tried
for candidate in ${GPU_KERNELS_PYTHON:-$(command -v python3.12) $(find "${PYENV_ROOT:-$HOME/.pyenv}/versions" \
  -maxdepth 3 -path '*/3.12.*/bin/python3.12' 2>/dev/null | sort -rV)}; do
  if is_312 "$candidate"; then PY312=$candidate && break; fi
done
[ -n "$PY312" ] || missing+=("CPython 3.12 (set GPU_KERNELS_PYTHON, or put python3.12 on PATH)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'gpu_kernels: missing %s\n' "${missing[@]}" >&2
  exit 2
fi
export CUDA_HOME
echo "gpu_kernels: $("$PY312" --version) ($PY312), nvcc $(nvcc_release "$CUDA_HOME") ($CUDA_HOME)"

[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
# torch first and pinned; fairseq's build needs numpy and cython, mamba-ssm's setup.py imports packaging and wheel
pip install -q torch==2.11.0
pip install -q "numpy<2.5" cython ninja packaging "setuptools<82" wheel

mkdir -p "$LOGS"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# cuBLAS and cuSPARSE headers of torch's own CUDA 13 wheels, which the toolkit folder here lacks
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
export NVCC_REAL="$CUDA_HOME/bin/nvcc" GPU_CHECK_ARCH=$ARCH PYTORCH_NVCC="$PWD/scripts/nvcc_one_arch.sh"
export TORCH_CUDA_ARCH_LIST="${ARCH:0:-1}.${ARCH: -1}" MAX_JOBS=${MAX_JOBS:-2}
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE  # build: never fetch a prebuilt wheel from GitHub
export CFLAGS="${CFLAGS:-} -g0"  # after the interpreter's own -g: host debug info would only make the wheels bigger
# A wheel already in $OUT_DIR with its build time in builds.tsv is kept (the pins above do not change): delete the
# folder to build all again. --no-binary: PyPI has a cp312 wheel of fairseq-fixed, built against another torch.
mkdir -p "$OUT_DIR"
touch "$OUT_DIR/builds.tsv"
for package in "${PACKAGES[@]}"; do
  name=${package%%==*}
  wheel_prefix="${name//-/_}-${package##*==}-"
  if compgen -G "$OUT_DIR/$wheel_prefix*.whl" > /dev/null && grep -q "^$name	" "$OUT_DIR/builds.tsv"; then
    echo "gpu_kernels: $package kept from an earlier build"
    continue
  fi
  echo "gpu_kernels: building $package ..."
  build_env=()
  # fairseq's setup.py adds CUDA extensions (which nothing here uses) whenever CUDA_HOME is set
  [[ $name == fairseq-fixed ]] && build_env=(-u CUDA_HOME)
  rm -rf "$staging/wheels"
  if ! /usr/bin/time -f "$name\t%e\t%U\t%S" -o "$staging/time.tsv" \
    env "${build_env[@]}" "$VENV/bin/python" -m pip wheel -v --no-build-isolation --no-deps --no-binary "$name" \
    -w "$staging/wheels" "$package" > "$LOGS/$name.log" 2>&1; then
    tail -n 30 "$LOGS/$name.log" >&2
    echo "gpu_kernels: $package did not build (log: $LOGS/$name.log)" >&2
    exit 1
  fi
  rm -f "$OUT_DIR/$wheel_prefix"*.whl
  mv "$staging"/wheels/*.whl "$OUT_DIR/"
  { grep -v "^$name	" "$OUT_DIR/builds.tsv" || true; cat "$staging/time.tsv"; } > "$staging/builds.tsv"
  mv "$staging/builds.tsv" "$OUT_DIR/builds.tsv"
done

"$VENV/bin/python" scripts/gpu_kernels_info.py record "$OUT_DIR" --arch "$ARCH" --builds "$OUT_DIR/builds.tsv" \
  --nvcc "$("$CUDA_HOME/bin/nvcc" --version | tail -n 2 | head -n 1)"

# the wheels install and load against that torch; their entry points are there (the kernels need a GPU to run)
pip install -q --no-deps --force-reinstall "$OUT_DIR"/*.whl
"$VENV/bin/python" - <<'PYTHON'
import importlib.machinery, importlib.util, sysconfig
from pathlib import Path

import torch  # first: the extensions link against its libraries
import causal_conv1d_cuda, selective_scan_cuda

for module, names in ((selective_scan_cuda, ("fwd", "bwd")),
                      (causal_conv1d_cuda, ("causal_conv1d_fwd", "causal_conv1d_bwd", "causal_conv1d_update"))):
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{module.__name__} lacks {missing}"
    print(module.__name__, ", ".join(names))
# fairseq's package __init__ imports hydra and the rest, which this venv does not hold: its extensions load alone
site = Path(sysconfig.get_paths()["platlib"]) / "fairseq"
for relative in ("libbase", "libnat", "libbleu", "data/data_utils_fast", "data/token_block_utils_fast"):
    path = next(site.glob(relative + ".cpython-312-*.so"))
    name = path.name.split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("fairseq", relative, "loads:", ", ".join(n for n in dir(module) if not n.startswith("_"))[:80])
PYTHON
du -b "$OUT_DIR"/* | sed "s|$OUT_DIR/||"
