"""mamba-ssm's CUDA kernels (its fused block where causal-conv1d is installed) give what the CPU path gives: a whole
model in float32, outputs and gradients within 1e-3. Runs only where a CUDA device and mamba-ssm's compiled kernel
exist; the project's CPU machines skip it (tests/test_against_mamba_ssm.py checks the fused path's wiring on CPU)."""

import pytest
import torch

from mamba_hubert.ops.selective_scan import fused_mamba_inner, resolve_scan_impl
from tests.conftest import MAMBA_LAYER_TYPES, tiny_model


def _cuda_scan_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return resolve_scan_impl("auto", torch.device("cuda")) == "cuda"
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not _cuda_scan_available(), reason="needs a CUDA device and mamba-ssm's kernel")


@pytest.mark.parametrize("layer_type", MAMBA_LAYER_TYPES)
def test_cuda_scan_equals_cpu(layer_type, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convs alone differ by ~1e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = tiny_model(layer_type).eval()
    gpu_model = tiny_model(layer_type).eval().cuda()  # same seed, same weights (deepcopy trips on weight_norm)
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 12000:] = True  # the bidirectional paths reverse within each utterance's length
    on_cpu = model.extract_features(audio, padding_mask=padding)[0]
    on_gpu = gpu_model.extract_features(audio.cuda(), padding_mask=padding.cuda())[0]
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)
    on_cpu.square().mean().backward()
    on_gpu.square().mean().backward()
    for (name, cpu_param), gpu_param in zip(model.named_parameters(), gpu_model.parameters(), strict=True):
        if cpu_param.grad is not None:
            torch.testing.assert_close(gpu_param.grad.cpu(), cpu_param.grad, rtol=1e-3, atol=1e-3, msg=name)


def test_blocks_take_mamba_ssms_fused_path():
    """With causal-conv1d as well (the `[cuda]` extra), every Mamba block runs mamba-ssm's `mamba_inner_fn`; the test
    above then compares that fused path with the CPU one."""
    pytest.importorskip("causal_conv1d", reason="the fused block needs causal-conv1d")
    assert fused_mamba_inner("auto", torch.device("cuda")) is not None
