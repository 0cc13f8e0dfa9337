#!/usr/bin/env bash
# `make gpu-bundle`: writes gpu_bundle/ (git-ignored), everything scripts/gpu_check.sh installs offline on a GPU
# machine without network (Python 3.12, linux x86_64): the wheels `make gpu-kernels` built (gpu_kernels/, with their
# build_info.json), the three sdists it builds instead where those do not fit the machine, and the wheels of
# scripts/gpu_requirements.txt with their dependencies, less what the machine holds (scripts/gpu_preinstalled.txt:
# torch, triton, numpy, transformers, ...). All of it is one packages.tar.xz, as what travels there with the working
# tree is limited to 64 MiB; the bundle keeps to 56 of them.
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
PY=${PYTHON:-.venv/bin/python}
TARGET_PYTHON=${GPU_BUNDLE_PYTHON:-3.12}  # the target's; another (3.11) only to dry-run the check on this machine
LIMIT_MIB=56
KERNELS=${GPU_KERNELS_DIR:-gpu_kernels}
pip() { "$PY" -m pip "$@"; }
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
packages="$staging/packages"
mkdir -p "$packages"

# mamba-ssm's and causal-conv1d's setup.py import torch even for their metadata, and look for nvcc unless told to skip
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
  pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$packages" \
  fairseq-fixed==0.12.3.1 mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
# 9 of fairseq's 23 MB unpacked are its examples' test arrays, audio, images and notebooks, which neither its build
# nor this project reads; kept as a plain .tar, which pip installs, as the xz below compresses it better than gzip
tar -xzf "$packages/fairseq_fixed-0.12.3.1.tar.gz" -C "$staging"
find "$staging/fairseq_fixed-0.12.3.1/fairseq/examples" -type f \
  \( -name '*.npy' -o -name '*.flac' -o -name '*.png' -o -name '*.ipynb' \) -delete
tar -cf "$packages/fairseq_fixed-0.12.3.1.tar" -C "$staging" fairseq_fixed-0.12.3.1
rm "$packages/fairseq_fixed-0.12.3.1.tar.gz"

# hydra-core's parser runtime has no wheel on PyPI; it is pure Python, so a wheel built here installs there
pip wheel -q --no-deps --no-binary :all: -w "$packages" antlr4-python3-runtime==4.9.3
# manylinux_2_28 is torch's own wheel tag, so a machine that runs the preinstalled torch runs these too; pip
# does not widen a --platform to the older glibc tags such a machine also runs, so each is named
wheel_args=(--only-binary :all: --implementation cp --python-version "$TARGET_PYTHON" --find-links "$packages"
  -d "$packages" --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for glibc_minor in $(seq 5 28); do
  wheel_args+=(--platform "manylinux_2_${glibc_minor}_x86_64")
done
pip download -q "${wheel_args[@]}" -r scripts/gpu_requirements.txt
# the dependencies the machine already holds stay out: its own versions are the ones installed beside its torch
"$PY" - "$packages" scripts/gpu_preinstalled.txt <<'PYTHON'
import re, sys
from pathlib import Path

def normal(name):
    return re.sub(r"[-_.]+", "_", name).lower()

held = {normal(re.split(r"[=<>!~ ]", line.strip())[0]) for line in Path(sys.argv[2]).read_text().splitlines()
        if line.strip() and not line.startswith("#")}
for wheel in Path(sys.argv[1]).glob("*.whl"):
    if normal(wheel.name.split("-")[0]) in held:
        wheel.unlink()
PYTHON
forbidden=$(find "$packages" -maxdepth 1 \( -iname 'torch-*' -o -iname 'nvidia_*' -o -iname 'triton-*' \) -printf '%f\n')
if [ -n "$forbidden" ]; then
  echo "gpu_bundle: the GPU machine's own packages were pulled in: $forbidden" >&2
  exit 1
fi
if [ -f "$KERNELS/build_info.json" ]; then
  mkdir -p "$packages/prebuilt"
  cp "$KERNELS"/*.whl "$KERNELS/build_info.json" "$packages/prebuilt/"
else
  echo "gpu_bundle: no prebuilt kernels ($KERNELS/build_info.json; make gpu-kernels): the check will build them" >&2
fi
# wheels stored uncompressed (same files, same RECORD) so that xz compresses their contents across files: a third
# smaller than their own per-file deflate
"$PY" - "$packages" <<'PYTHON'
import sys, zipfile
from pathlib import Path

for wheel in Path(sys.argv[1]).glob("**/*.whl"):
    stored = wheel.with_suffix(".stored")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)  # before the info says "stored", or it would be read back as such
            info.compress_type = zipfile.ZIP_STORED
            target.writestr(info, data)
    stored.replace(wheel)
PYTHON

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
(cd "$packages" && find . -type f -printf '%P %s\n' | sort) > "$BUNDLE/contents.txt"
tar -cf - -C "$staging" packages | xz -T0 -6 > "$BUNDLE/packages.tar.xz"
size_kib=$(du -sk "$BUNDLE" | cut -f1)
echo "$BUNDLE: $(wc -l < "$BUNDLE/contents.txt") packages, $((size_kib / 1024)) MiB (limit $LIMIT_MIB MiB)"
if [ "$size_kib" -ge $((LIMIT_MIB * 1024)) ]; then
  echo "gpu_bundle: over $LIMIT_MIB MiB, it cannot travel to the GPU machine" >&2
  exit 1
fi
