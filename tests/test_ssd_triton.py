"""mamba-ssm's Mamba-2 Triton kernels (`mamba_chunk_scan_combined`, forward and backward) run on CPU tensors under
Triton's interpreter (tests/triton_interpreter.py), reached through `ops/ssd.py`'s CUDA dispatch, and give what the
CPU path (`ssd_scan_chunked`) gives: `Mamba2.forward` offline and with carried state, outputs, final states and every
gradient, with partial chunks and one or two B/C groups. The interpreter computes fp32 dots in full fp32 and fp16
as numpy does; the GPU's TF32 dots and bf16 are left to tests/test_cuda_path.py (its bf16 `dot` multiplies bit
patterns: an interpreter bug, so no bf16 case here)."""

import pytest
import torch

from mamba_hubert.modules.mamba2 import Mamba2
from mamba_hubert.ops.ssd import ssd_scan_chunked, ssd_scan_fn
from tests.triton_interpreter import TritonInterpreter, triton_interpreter

FORWARD_KERNELS = {"_chunk_cumsum_fwd_kernel", "_bmm_chunk_fwd_kernel", "_chunk_state_fwd_kernel",
                   "_state_passing_fwd_kernel", "_chunk_scan_fwd_kernel"}
BACKWARD_KERNELS = {"_chunk_cumsum_bwd_kernel", "_bmm_chunk_bwd_kernel", "_chunk_state_bwd_db_kernel",
                    "_state_passing_bwd_kernel", "_chunk_scan_bwd_dstates_kernel", "_chunk_scan_bwd_dc_kernel",
                    "_chunk_scan_bwd_dcb_kernel", "_chunk_scan_bwd_ddAcs_stable_kernel",
                    "_chunk_scan_chunk_state_bwd_dx_kernel"}
# 4 heads of 16 channels, chunks of 64: 100 frames end in a partial chunk. Two groups: heads 0-1 read group 0, heads
# 2-3 group 1 (mamba-ssm's layout); that case also passes z into the kernel (no RMSNorm) and a per-channel D.
CASES = {"ngroups1": {"ngroups": 1}, "ngroups2_z_in_kernel": {"ngroups": 2, "rmsnorm": False, "D_has_hdim": True}}
LENGTH = 100


@pytest.fixture(scope="module")
def interpreter() -> TritonInterpreter:
    with pytest.MonkeyPatch.context() as monkeypatch, triton_interpreter(monkeypatch) as running:
        yield running


def make_block(case: str) -> Mamba2:
    torch.manual_seed(0)
    block = Mamba2(32, d_state=16, headdim=16, expand=2, chunk_size=64, **CASES[case])
    with torch.no_grad():  # away from the initial values, so that each parameter's role shows in the outputs
        for param in (block.dt_bias, block.A_log, block.D, block.conv1d.bias):
            param.add_(0.3 * torch.randn_like(param))
    return block


def loss_and_grads(block: Mamba2, out: torch.Tensor, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of `out`, for every parameter and the input."""
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * weights).sum(), [inputs, *block.parameters()])
    return dict(zip(["input", *(name for name, _ in block.named_parameters())], grads, strict=True))


def assert_grads_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for name, grad in expected.items():  # scaled by each gradient's size: they span orders of magnitude
        scale = grad.abs().max().item()
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_offline_forward_backward_equal_cpu_path(interpreter, case):
    block = make_block(case)
    x = torch.randn(2, LENGTH, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    padding = torch.zeros(2, LENGTH, dtype=torch.bool)
    padding[1, 80:] = True
    interpreter.launches.clear()
    on_triton = block(x, padding_mask=padding)
    triton_grads = loss_and_grads(block, on_triton, x)
    assert FORWARD_KERNELS | BACKWARD_KERNELS <= set(interpreter.launches), interpreter.launches
    block.scan_impl = "cpu"
    interpreter.launches.clear()
    on_cpu = block(x, padding_mask=padding)
    cpu_grads = loss_and_grads(block, on_cpu, x)
    assert interpreter.launches == []
    torch.testing.assert_close(on_triton, on_cpu, rtol=1e-4, atol=1e-5)
    assert_grads_close(triton_grads, cpu_grads)


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()  # the block advances its state in place, for inference; the state's gradient is tested below
def test_carried_state_equals_offline_cpu_path(interpreter, case):
    """Frames fed in three pieces, the scan's final state carried into the next piece as its initial state, give
    the offline CPU outputs and final state."""
    block = make_block(case)
    x = torch.randn(2, LENGTH, 32, generator=torch.Generator().manual_seed(2))
    block.scan_impl = "cpu"
    offline_state = block.allocate_state(2)
    offline = block(x, state=offline_state)
    block.scan_impl = "auto"
    state = block.allocate_state(2)
    interpreter.launches.clear()
    streamed = torch.cat([block(piece, state=state) for piece in x.split([30, 45, 25], dim=1)], dim=1)
    assert interpreter.launches.count("_chunk_scan_fwd_kernel") == 3
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.ssm, offline_state.ssm, rtol=1e-4, atol=1e-5)


def scan_inputs(dtype: torch.dtype, ngroups: int) -> dict:
    generator = torch.Generator().manual_seed(4)

    def draw(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=generator)).to(dtype)

    batch, heads, headdim, d_state = 2, 4, 16, 16
    return {"x": draw(batch, LENGTH, heads, headdim), "dt": draw(batch, LENGTH, heads, scale=0.5),
            "A": -torch.rand(heads, generator=generator) - 0.5, "B": draw(batch, LENGTH, ngroups, d_state),
            "C": draw(batch, LENGTH, ngroups, d_state), "D": torch.randn(heads, generator=generator),
            "z": draw(batch, LENGTH, heads, headdim), "dt_bias": 0.3 * torch.randn(heads, generator=generator),
            "initial_states": torch.randn(batch, heads, headdim, d_state, generator=generator)}


@pytest.mark.parametrize("ngroups", [1, 2])
def test_scan_initial_state_and_its_gradient(interpreter, ngroups):
    """The scan alone from a random initial state: outputs, final state and the initial state's gradient."""
    inputs = scan_inputs(torch.float32, ngroups)
    initial = inputs.pop("initial_states").requires_grad_()
    kwargs = {**inputs, "chunk_size": 64, "dt_softplus": True, "return_final_states": True}
    interpreter.launches.clear()
    y, final = ssd_scan_fn(**kwargs, initial_states=initial, impl="cuda")
    assert "_chunk_scan_fwd_kernel" in interpreter.launches
    expected_y, expected_final = ssd_scan_chunked(**kwargs, initial_states=initial)
    torch.testing.assert_close(y, expected_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, expected_final, rtol=1e-4, atol=1e-4)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    (got,) = torch.autograd.grad((y * weights).sum() + final.sum(), initial)
    (expected,) = torch.autograd.grad((expected_y * weights).sum() + expected_final.sum(), initial)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fp16_within_the_cpu_paths_own_fp16_error(interpreter):
    """fp16 inputs: the kernels' error against float64 is at most twice the CPU path's at fp16 (both round to fp16
    at the output; the kernels also take fp16 products into their dots)."""
    inputs = scan_inputs(torch.float16, 2)
    kwargs = {"chunk_size": 64, "dt_softplus": True}
    exact = ssd_scan_chunked(**{k: v.double() for k, v in inputs.items()}, **kwargs)
    cpu_error = (ssd_scan_chunked(**inputs, **kwargs).double() - exact).abs().max().item()
    interpreter.launches.clear()
    on_triton = ssd_scan_fn(**inputs, **kwargs, impl="cuda")
    assert "_chunk_scan_fwd_kernel" in interpreter.launches and on_triton.dtype == torch.float16
    assert 0 < cpu_error < 0.1
    assert (on_triton.double() - exact).abs().max().item() <= 2 * cpu_error
