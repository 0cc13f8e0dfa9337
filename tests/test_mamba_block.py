"""The Mamba block's parameters mirror mamba-ssm's, an encoder initialises them as mamba-ssm does (or as fairseq's
BERT init with `mamba_init=bert`), and a forward continuing from a state reproduces one forward over the whole."""

import math

import pytest
import torch

from mamba_hubert.models.encoder_config import EncoderConfig
from mamba_hubert.models.mamba_hubert_asr import MambaHubertAsrConfig, head_encoder_config
from mamba_hubert.modules import Mamba, Mamba2
from mamba_hubert.modules.bimamba import ExtBiMamba, InnBiMamba
from mamba_hubert.modules.encoder import MambaEncoder
from mamba_hubert.modules.mamba import MambaState
from mamba_hubert.ops import cpu_kernel, selective_scan_fn, selective_scan_reference
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


def linear_default_std(weight: torch.Tensor) -> float:
    """PyTorch's nn.Linear init draws U(-b, b) with b = 1/sqrt(fan_in) (kaiming-uniform, a=sqrt(5)): std b/sqrt(3)."""
    return 1 / math.sqrt(3 * weight.shape[1])


def projections(encoder: torch.nn.Module, name: str) -> list[torch.Tensor]:
    return [p.detach() for n, p in encoder.named_parameters() if n.endswith(f".{name}.weight") and "mixer" in n]


# (layer type, FFN width, residual branches per layer: the mixer, and each FFN / conv module beside it)
RESIDUAL_BRANCHES = [("mamba", 0, 1), ("mamba", 64, 2), ("ext_bimamba", 0, 1), ("inn_bimamba", 64, 2),
                     ("transbimamba", 64, 2), ("conbimamba", 64, 4), ("mamba2", 64, 2), ("ext_bimamba2", 0, 1)]


@pytest.mark.parametrize("layer_type,ffn,branches", RESIDUAL_BRANCHES)
def test_encoder_initialises_projections_as_mamba_ssm(layer_type, ffn, branches):
    """mamba-ssm's Mamba keeps nn.Linear's default for in_proj and x_proj; its MixerModel redraws out_proj the same
    way and divides it by sqrt(residual branches per layer x layers)."""
    layers = 3
    encoder = tiny_model(layer_type, encoder_layers=layers, encoder_ffn_embed_dim=ffn).encoder
    absent = {"x_proj", "x_proj_b"} if "mamba2" in layer_type else set() if layer_type == "inn_bimamba" else {"x_proj_b"}
    for name in ("in_proj", "x_proj", "x_proj_b", "out_proj"):
        weights = projections(encoder, name)
        if name in absent:  # Mamba2 has no x_proj; only InnBiMamba a backward one
            assert not weights
            continue
        bound = math.sqrt(3) * linear_default_std(weights[0])  # the same fan-in in every block
        if name == "out_proj":
            bound /= math.sqrt(branches * layers)
        values = torch.cat([w.flatten() for w in weights])
        assert values.abs().max() <= bound  # uniform, not normal
        assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
    for block in encoder.modules():
        if isinstance(block, Mamba):
            assert block.dt_proj.bias.abs().min() > 0 and torch.equal(block.D, torch.ones_like(block.D))
        if isinstance(block, Mamba2):  # mamba-ssm's: softplus(dt_bias) in [dt_min, dt_max], A in [1, 16], D ones
            dt = torch.nn.functional.softplus(block.dt_bias)
            assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
            assert (-block.A_log.exp()).max() <= -1 and torch.equal(block.D, torch.ones_like(block.D))


def test_bert_init_keeps_fairseqs_normal_projections_and_mamba_ssm_dt():
    encoder = tiny_model("ext_bimamba", encoder_layers=3, mamba_init="bert").encoder
    for name in ("in_proj", "x_proj", "out_proj"):
        values = torch.cat([w.flatten() for w in projections(encoder, name)])
        assert values.std().item() == pytest.approx(0.02, rel=0.05), name  # fairseq's init_bert_params
        assert values.abs().max() > 3 * 0.02  # normal tails, which a uniform draw of that std never reaches
    block = encoder.layers[0].mixer.forward_mamba
    dt = torch.nn.functional.softplus(block.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize("mamba_init,std", [("mamba_ssm", 1 / math.sqrt(3 * 256)), ("bert", 0.02)])
def test_every_encoder_config_passes_the_init_choice(mamba_init, std):
    """The reconstruction model's encoder (EncoderConfig) and mamba_hubert_asr's head (head_mamba_init)."""
    configs = [EncoderConfig(layer_type="mamba", encoder_layers=2, encoder_embed_dim=128, encoder_ffn_embed_dim=0,
                             conv_pos=0, mamba_init=mamba_init),
               head_encoder_config(MambaHubertAsrConfig(head_layer_type="mamba", head_embed_dim=128,
                                                        head_ffn_embed_dim=0, head_mamba_init=mamba_init))]
    for cfg in configs:
        torch.manual_seed(0)
        x_proj = projections(MambaEncoder(cfg), "x_proj")  # fan-in d_inner = 256
        assert torch.cat([w.flatten() for w in x_proj]).std().item() == pytest.approx(std, rel=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_step_equals_forward(seed):
    torch.manual_seed(seed)
    block = Mamba(48, d_state=8, d_conv=4, expand=2).eval()
    x = torch.randn(3, 25, 48)
    full = block(x)
    state = block.allocate_state(3)
    steps = [block(x[:, t : t + 1], state=state) for t in range(x.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference"] + (["cpu"] if cpu_kernel.is_available() else []))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_forward_with_state_continues_the_sequence(impl, dtype, tol, monkeypatch):
    """[0, 2), [2, 81), [81, 100) through one state (a piece shorter than the conv tail, one longer than the CPU
    kernel's checkpoint interval) equal one forward over [0, 100), and the state ends as the reference scan of the
    whole sequence does. Slow decay (A in [-1, -0.05]) makes a state lost at a boundary change outputs by ~0.1."""
    torch.manual_seed(0)
    block = Mamba(32, d_state=8, d_conv=4, expand=2, scan_impl=impl)
    with torch.no_grad():
        block.A_log.uniform_(-3, 0)
    block = block.to(dtype).eval()
    x = torch.randn(2, 100, 32, dtype=dtype)
    scans = []

    def recording_scan(*args, **kwargs):
        scans.append((args, kwargs))
        return selective_scan_fn(*args, **kwargs)

    monkeypatch.setattr("mamba_hubert.modules.mamba.selective_scan_fn", recording_scan)
    with torch.no_grad():
        whole = block(x)
        (args, kwargs), = scans
        reference_kwargs = {**kwargs, "return_last_state": True, "initial_state": None}
        del reference_kwargs["impl"]
        _, whole_state = selective_scan_reference(*args, **reference_kwargs)
        state = block.allocate_state(2)
        pieces = [block(x[:, start:stop], state=state) for start, stop in ((0, 2), (2, 81), (81, 100))]
    assert isinstance(state, MambaState) and state.conv.dtype == dtype and state.ssm.dtype == torch.float32
    assert state.conv.shape == (2, 64, 3) and state.ssm.shape == (2, 64, 8)
    scale = whole.abs().max().item()
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(state.ssm, whole_state, rtol=1e-5, atol=1e-5 * whole_state.abs().max().item())


def test_a_state_takes_no_padding_and_bidirectional_mixers_take_none():
    block = Mamba(16, d_state=4)
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="no padding_mask"):
        block(x, torch.zeros(1, 5, dtype=torch.bool), state=block.allocate_state(1))
    for mixer in (InnBiMamba(16, d_state=4), ExtBiMamba(16, d_state=4)):
        with pytest.raises(ValueError, match="bidirectional"):
            mixer(x, state=block.allocate_state(1))
