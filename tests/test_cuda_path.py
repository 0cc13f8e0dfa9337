"""mamba-ssm's CUDA kernels (its fused block where causal-conv1d is installed) and its Mamba-2 Triton kernels give what
the CPU path gives: a whole model in float32, outputs and gradients within 1e-3; each scan in fp16 and bf16 within
a multiple of the CPU path's own error at that dtype. Runs only where a CUDA device and mamba-ssm's compiled kernel
exist; the project's CPU machines skip it (tests/test_against_mamba_ssm.py checks the fused path's wiring on CPU,
tests/test_ssd_triton.py runs the Triton kernels in Triton's interpreter).

TF32: Triton's fp32 `tl.dot` defaults to TF32 on a GPU (torch's allow_tf32 flags do not reach it), which moves the
Mamba-2 outputs by up to ~1e-2 at these sizes (emulated on CPU); the comparisons here are of the arithmetic, so they
run with TRITON_F32_DEFAULT=ieee, set before any kernel compiles (scripts/gpu_check.sh exports it for the process:
a kernel compiled earlier in the process under TF32 would be reused)."""

import os

import pytest
import torch

from mamba_hubert.ops.selective_scan import fused_mamba_inner, resolve_scan_impl, selective_scan_fn
from mamba_hubert.ops.ssd import ssd_scan_chunked, ssd_scan_fn
from tests.conftest import MAMBA_LAYER_TYPES, tiny_model

# The low-precision kernels may round each intermediate (a dot's operands, a chunk's state) to the dtype where the
# CPU path rounds only its inputs and output; a wrong kernel is off by the outputs' own size, ~100x more.
LOW_PRECISION_FACTOR = 3


def _cuda_scan_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return resolve_scan_impl("auto", torch.device("cuda")) == "cuda"
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not _cuda_scan_available(), reason="needs a CUDA device and mamba-ssm's kernel")


@pytest.fixture(autouse=True)
def ieee_triton_dots(monkeypatch):
    monkeypatch.setenv("TRITON_F32_DEFAULT", os.environ.get("TRITON_F32_DEFAULT", "ieee"))
    assert os.environ["TRITON_F32_DEFAULT"] == "ieee", "the float32 comparisons are of IEEE fp32 dots, not TF32"


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


def _draw(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)


def _low_precision_errors(run, inputs: dict, dtype: torch.dtype, low: tuple[str, ...]) -> tuple[float, float]:
    """(the CPU path's, the CUDA path's) largest error at `dtype` against the CPU path in float64; `low` names the
    inputs given in `dtype`, the rest (A, D, biases, as the blocks pass them) in float32."""
    exact = run(inputs, "cpu").double()

    def cast(device: str) -> dict:
        return {k: v.to(device, dtype if k in low else torch.float32) for k, v in inputs.items()}

    on_cpu = run(cast("cpu"), "cpu")
    on_cuda = run(cast("cuda"), "cuda")
    assert on_cpu.dtype == on_cuda.dtype == dtype
    return ((on_cpu.double() - exact).abs().max().item(), (on_cuda.cpu().double() - exact).abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_selective_scan_low_precision_within_the_cpu_paths_error(dtype):
    """mamba-ssm's Mamba-1 CUDA scan in fp16/bf16. The CPU path computes in float32 (its float64 run is float32
    inside: ~1e-6 of these outputs, far below fp16's ~1e-2)."""
    g = torch.Generator().manual_seed(0)
    batch, channels, length, d_state = 2, 64, 256, 16
    inputs = {"u": _draw(g, batch, channels, length), "delta": _draw(g, batch, channels, length, scale=0.5),
              "A": -torch.rand(channels, d_state, generator=g, dtype=torch.float64) - 0.5,
              "B": _draw(g, batch, d_state, length), "C": _draw(g, batch, d_state, length), "D": _draw(g, channels),
              "z": _draw(g, batch, channels, length), "delta_bias": _draw(g, channels, scale=0.3)}

    def run(tensors: dict, impl: str) -> torch.Tensor:
        impl = "cuda" if impl == "cuda" else "reference" if tensors["u"].dtype == torch.float64 else "auto"
        return selective_scan_fn(**tensors, delta_softplus=True, impl=impl)

    cpu_error, cuda_error = _low_precision_errors(run, inputs, dtype, ("u", "delta", "B", "C", "z"))
    assert 0 < cpu_error and cuda_error <= LOW_PRECISION_FACTOR * cpu_error, (cpu_error, cuda_error)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_ssd_low_precision_within_the_cpu_paths_error(dtype):
    """mamba-ssm's Mamba-2 Triton scan in fp16/bf16, two groups, a partial chunk, an initial state."""
    g = torch.Generator().manual_seed(1)
    batch, length, heads, headdim, ngroups, d_state = 2, 200, 4, 16, 2, 16
    inputs = {"x": _draw(g, batch, length, heads, headdim), "dt": _draw(g, batch, length, heads, scale=0.5),
              "A": -torch.rand(heads, generator=g, dtype=torch.float64) - 0.5,
              "B": _draw(g, batch, length, ngroups, d_state), "C": _draw(g, batch, length, ngroups, d_state),
              "D": _draw(g, heads), "z": _draw(g, batch, length, heads, headdim), "dt_bias": _draw(g, heads, scale=0.3),
              "initial_states": _draw(g, batch, heads, headdim, d_state)}

    def run(tensors: dict, impl: str) -> torch.Tensor:
        if impl == "cuda":
            return ssd_scan_fn(**tensors, chunk_size=64, dt_softplus=True, impl="cuda")
        return ssd_scan_chunked(**tensors, chunk_size=64, dt_softplus=True)

    cpu_error, cuda_error = _low_precision_errors(run, inputs, dtype, ("x", "dt", "B", "C", "z"))
    assert 0 < cpu_error and cuda_error <= LOW_PRECISION_FACTOR * cpu_error, (cpu_error, cuda_error)
