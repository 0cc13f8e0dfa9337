"""The Mamba block's parameters mirror mamba-ssm's, and step() reproduces forward()."""

import pytest
import torch

from mamba_hubert.modules import Mamba
from tests.conftest import tiny_model


def documented_mamba_ssm_shapes(d_model, d_state, d_conv, expand):
    """mamba_ssm.modules.mamba_simple.Mamba's state_dict for these arguments (bias=False, conv_bias=True)."""
    d_inner = int(expand * d_model)
    dt_rank = -(-d_model // 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model,d_state,d_conv,expand", [(64, 16, 4, 2), (768, 24, 4, 3), (40, 8, 3, 1.5)])
def test_state_dict_matches_mamba_ssm(d_model, d_state, d_conv, expand):
    ours = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand).state_dict()
    expected = documented_mamba_ssm_shapes(d_model, d_state, d_conv, expand)
    assert list(ours) == list(expected)
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected


def test_state_dict_loads_into_mamba_ssm_when_importable():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple", reason="mamba-ssm not installed")
    ours = Mamba(64, d_state=16)
    theirs = mamba_simple.Mamba(64, d_state=16)
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_initialisation_follows_mamba():
    block = Mamba(64, d_state=16, dt_min=0.001, dt_max=0.1)
    dt = torch.nn.functional.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.allclose(torch.exp(block.A_log[0]), torch.arange(1, 17, dtype=torch.float32))
    assert torch.equal(block.D, torch.ones(128))


def test_encoder_keeps_mamba_init_after_fairseq_bert_init():
    model = tiny_model("mamba")
    block = model.encoder.layers[0].mixer
    assert block.dt_proj.bias.abs().min() > 0  # init_bert_params would have zeroed it


@pytest.mark.parametrize("seed", [0, 1])
def test_step_equals_forward(seed):
    torch.manual_seed(seed)
    block = Mamba(48, d_state=8, d_conv=4, expand=2).eval()
    x = torch.randn(3, 25, 48)
    full = block(x)
    conv_state, ssm_state = block.allocate_state(3)
    steps = []
    for t in range(x.shape[1]):
        out, conv_state, ssm_state = block.step(x[:, t], conv_state, ssm_state)
        steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
