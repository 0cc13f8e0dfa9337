"""The Mamba2 block under right padding, and continuing a sequence from a carried state."""

import pytest
import torch

from mamba_hubert.modules.mamba import MambaState
from mamba_hubert.modules.mamba2 import Mamba2
from mamba_hubert.ops.ssd import ssd_scan_fn, ssd_scan_reference
from tests.test_against_mamba_ssm import assert_close


def test_padded_batch_equals_each_sequence_alone():
    """Biased projections, so a padded frame's in_proj output is not zero: it must still never reach a valid frame,
    and padded outputs are zero; lengths across chunk boundaries (chunks of 4)."""
    torch.manual_seed(0)
    block = Mamba2(16, d_state=8, headdim=8, ngroups=2, bias=True, chunk_size=4)
    lengths = [13, 8, 2]
    x = torch.randn(len(lengths), max(lengths), 16)
    padding_mask = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        out = block(x, padding_mask)
        for i, length in enumerate(lengths):
            assert_close(out[i, :length], block(x[i : i + 1, :length])[0], f"sequence {i}")
    assert not out[padding_mask].any()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_forward_with_state_continues_the_sequence(dtype, tol, monkeypatch):
    """[0, 2), [2, 81), [81, 100) through one state (a piece shorter than the conv tail, pieces across SSD chunks of
    8) equal one forward over [0, 100), and the state ends as the sequential reference's final state. Slow decay
    (A in [-1, -0.05]) makes a state lost at a boundary change outputs by ~0.1."""
    torch.manual_seed(0)
    block = Mamba2(32, d_state=8, headdim=8, ngroups=2, chunk_size=8)
    with torch.no_grad():
        block.A_log.uniform_(-3, 0)
    block = block.to(dtype).eval()
    x = torch.randn(2, 100, 32, dtype=dtype)
    scans = []

    def recording_scan(*args, **kwargs):
        scans.append((args, kwargs))
        return ssd_scan_fn(*args, **kwargs)

    monkeypatch.setattr("mamba_hubert.modules.mamba2.ssd_scan_fn", recording_scan)
    with torch.no_grad():
        whole = block(x)
        (args, kwargs), = scans
        reference_kwargs = {k: v for k, v in kwargs.items() if k not in ("impl", "return_final_states")}
        _, whole_state = ssd_scan_reference(*args[:5], **reference_kwargs, return_final_states=True)
        state = block.allocate_state(2)
        pieces = [block(x[:, start:stop], state=state) for start, stop in ((0, 2), (2, 81), (81, 100))]
    assert isinstance(state, MambaState) and state.conv.dtype == dtype and state.ssm.dtype == torch.float32
    assert state.conv.shape == (2, 64 + 2 * 2 * 8, 3) and state.ssm.shape == (2, 8, 8, 8)
    scale = whole.abs().max().item()
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(state.ssm, whole_state, rtol=1e-5, atol=1e-5 * whole_state.abs().max().item())
    dropped = block.allocate_state(2)
    with torch.no_grad():
        block(x[:, :81], state=dropped)
        dropped.ssm.zero_()
        assert (block(x[:, 81:], state=dropped) - whole[:, 81:]).abs().max() > 10 * tol * scale


def test_a_state_takes_no_padding():
    block = Mamba2(16, d_state=4, headdim=8)
    with pytest.raises(ValueError, match="no padding_mask"):
        block(torch.randn(1, 5, 16), torch.zeros(1, 5, dtype=torch.bool), state=block.allocate_state(1))
