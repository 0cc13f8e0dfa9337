"""The Mamba2 block under right padding."""

import torch

from mamba_hubert.modules.mamba2 import Mamba2
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
