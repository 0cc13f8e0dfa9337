"""The chunked SSD scan against the sequential recurrence (values, final state, every input's gradient)."""

import pytest
import torch

from mamba_hubert.ops.ssd import ssd_scan_chunked, ssd_scan_fn, ssd_scan_reference
from tests.test_against_mamba_ssm import assert_close, assert_same_scan_and_gradients

SSD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make_ssd_inputs(seed: int, batch: int = 2, length: int = 23, nheads: int = 4, headdim: int = 3, ngroups: int = 2,
                    d_state: int = 5, dtype: torch.dtype = torch.float32, D_has_hdim: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return {
        "x": randn(batch, length, nheads, headdim),
        "dt": randn(batch, length, nheads) * 0.5 - 1,
        "A": -torch.rand(nheads, generator=g, dtype=torch.float64).to(dtype) * 2 - 0.2,
        "B": randn(batch, length, ngroups, d_state),
        "C": randn(batch, length, ngroups, d_state),
        "D": randn(nheads, headdim) if D_has_hdim else randn(nheads),
        "z": randn(batch, length, nheads, headdim),
        "dt_bias": randn(nheads) * 0.3,
        "initial_states": randn(batch, nheads, headdim, d_state),
    }


def leaves(inputs: dict) -> dict:
    return {k: v.clone().requires_grad_(True) for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size,length", [(1, 9), (4, 23), (8, 24), (16, 23), (64, 23)])
@pytest.mark.parametrize("initial", [False, True])
def test_chunked_equals_sequential(dtype, chunk_size, length, initial):
    """Chunk sizes that divide the length, that do not, of one step and larger than the sequence; with and without
    an initial state; values, final state and the gradient of every input, to 1e-5 relative."""
    inputs = make_ssd_inputs(0, length=length, dtype=dtype, D_has_hdim=chunk_size == 4)
    if not initial:
        del inputs["initial_states"]
    ours, theirs = leaves(inputs), leaves(inputs)
    kwargs = {"dt_softplus": True, "return_final_states": True}
    y, state = ssd_scan_chunked(**ours, chunk_size=chunk_size, **kwargs)
    y_ref, state_ref = ssd_scan_reference(**theirs, **kwargs)
    assert y.dtype == y_ref.dtype == dtype
    assert_same_scan_and_gradients((y, state), (y_ref, state_ref), ours, theirs)


def test_a_state_carried_across_calls_equals_one_call():
    """Scanning a sequence in two pieces, the second from the first's final state, gives the whole scan."""
    inputs = make_ssd_inputs(1, length=30)
    del inputs["initial_states"]
    whole = ssd_scan_chunked(**inputs, chunk_size=8, dt_softplus=True)
    first = {k: v[:, :13] if v.dim() > 2 else v for k, v in inputs.items()}
    second = {k: v[:, 13:] if v.dim() > 2 else v for k, v in inputs.items()}
    y1, state = ssd_scan_chunked(**first, chunk_size=8, dt_softplus=True, return_final_states=True)
    y2 = ssd_scan_chunked(**second, chunk_size=8, dt_softplus=True, initial_states=state)
    assert_close(torch.cat([y1, y2], dim=1), whole, "two pieces")


def test_dispatch_on_cpu():
    inputs = make_ssd_inputs(2)
    assert_close(ssd_scan_fn(**inputs, chunk_size=4, impl="auto"), ssd_scan_reference(**inputs), "auto")
    with pytest.raises(RuntimeError, match="scan_impl=cuda"):
        ssd_scan_fn(**inputs, chunk_size=4, impl="cuda")
