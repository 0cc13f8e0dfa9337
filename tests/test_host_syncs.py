"""A GPU forward waits for the host wherever an op needs a tensor's values there (`torch.equal`, `.item()`, boolean
indexing). The encoder may do so a fixed number of times per forward, never once per layer. Counted here on CPU by
recording the ops that need values on the host, for a padded batch in training mode."""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mamba_hubert.modules.valid_group_norm import ValidFramesGroupNorm
from tests.conftest import MAMBA_LAYER_TYPES, tiny_model

# Ops whose result (or output shape) depends on tensor values, so a CUDA stream must finish before the host goes on.
HOST_READS = {"aten.equal.default", "aten._local_scalar_dense.default", "aten.nonzero.default",
              "aten.masked_select.default", "aten.is_nonzero.default", "aten.index.Tensor", "aten.index_put_.default"}


class HostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in HOST_READS and (name != "aten.index.Tensor" or _has_bool_index(args)):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _has_bool_index(args) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])


def host_reads_per_forward(layer_type: str, layers: int) -> collections.Counter:
    model = tiny_model(layer_type, encoder_layers=layers, extractor_mode="default").train()
    audio = torch.randn(3, 8000, generator=torch.Generator().manual_seed(0))
    padding = torch.arange(8000)[None, :] >= torch.tensor([8000, 6100, 4000])[:, None]
    with HostReads() as reads:
        model.extract_features(audio, padding_mask=padding)
    return reads.counts


@pytest.mark.parametrize("layer_type", [*MAMBA_LAYER_TYPES, "conformer"])
def test_host_reads_do_not_grow_with_depth(layer_type):
    two, four = host_reads_per_forward(layer_type, 2), host_reads_per_forward(layer_type, 4)
    assert four == two, f"per forward: {dict(two)} with 2 layers, {dict(four)} with 4"
    # the encoder's check that the padding is right-padding, fairseq's zeroing of padded frames (index_put_)
    assert two == {"aten.equal.default": 1, "aten.index_put_.default": 1}


def test_group_norm_off_cpu_reads_nothing_on_the_host_and_equals_the_per_row_norm():
    """The masked statistics (used off CPU) against the per-row norm (used on CPU), on CPU tensors."""
    norm = ValidFramesGroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 8, 50, generator=torch.Generator().manual_seed(0))
    norm.valid_frames = torch.tensor([50, 31, 0])
    with HostReads() as reads:
        masked = norm._masked(x)
    assert not reads.counts, dict(reads.counts)
    torch.testing.assert_close(masked, norm._per_row(x), rtol=1e-5, atol=1e-5)
    assert masked[1, :, 31:].abs().max() == 0 and masked[2].abs().max() == 0
