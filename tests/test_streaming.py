"""Streaming a causal Mamba-HuBERT chunk by chunk gives its offline features, with constant carried memory."""

import math

import pytest
import torch

from mamba_hubert.frames import conv_output_length
from mamba_hubert.inference.streaming import NotStreamableError, StreamingEncoder, stream
from mamba_hubert.modules import Mamba, Mamba2
from tests.conftest import tiny_model

SAMPLE_RATE = 16000
CAUSAL = {"conv_pos": 0, "extractor_mode": "layer_norm"}

pytestmark = pytest.mark.usefixtures("one_thread")


def state_sensitive(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Make carried Mamba state matter: fairseq's init (std 0.02 projections, `mamba_init=bert`) and fast-decaying A
    leave outputs almost independent of it, so a lost state would pass a 1e-4 check. Unit-variance projections and
    slow decay (A in [-1, -0.05]) make losing the state at a chunk boundary change outputs by ~1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.modules():
            if not isinstance(block, (Mamba, Mamba2)):
                continue
            dt_projs = {id(m) for m in (getattr(block, "dt_proj", None), getattr(block, "dt_proj_b", None)) if m}
            for linear in block.modules():
                if isinstance(linear, torch.nn.Linear) and id(linear) not in dt_projs:
                    linear.weight.normal_(0, 1 / math.sqrt(linear.weight.shape[1]), generator=generator)
            for name in ("A_log", "A_b_log"):
                if hasattr(block, name):
                    getattr(block, name).uniform_(-3, 0, generator=generator)
    return model.eval()


def causal_model(layer_type: str = "mamba", **overrides) -> torch.nn.Module:
    return state_sensitive(tiny_model(layer_type, **{**CAUSAL, **overrides}))


def offline(model: torch.nn.Module, audio: torch.Tensor, output_layer: int | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model.extract_features(audio[None], output_layer=output_layer)[0][0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # post-LN with FFN (HuBERT Base layout)
        {"layer_norm_first": True, "encoder_ffn_embed_dim": 0},  # pre-LN, no FFN
        {"layer_norm_first": True, "encoder_layers": 3},  # pre-LN with FFN, final layer norm
        {"encoder_ffn_embed_dim": 0, "mamba_d_conv": 2},  # Lin et al.'s mambaformer (no FFN)
        {"extractor_mode": "fbank"},  # log-mel and causal convs: the carried window starts with their left padding
        # Lin et al.'s mamba2former: Mamba-2 blocks, 4 heads of 16 in 2 groups, SSD chunks of 16 frames
        {"layer_type": "mamba2", "mamba_headdim": 16, "mamba_ngroups": 2, "mamba_chunk_size": 16},
    ],
    ids=["post_ln_ffn", "pre_ln", "pre_ln_ffn_3layers", "post_ln_no_ffn_dconv2", "fbank", "mamba2"],
)
@pytest.mark.parametrize("chunk_seconds", [0.1, 0.37, 1.0, 2.0])
def test_streaming_equals_offline(overrides, chunk_seconds):
    model = causal_model(**overrides)
    audio = torch.randn(6 * SAMPLE_RATE + 123, generator=torch.Generator().manual_seed(2))
    expected = offline(model, audio)
    streamed = stream(model, audio, round(chunk_seconds * SAMPLE_RATE))
    assert streamed.shape == expected.shape
    torch.testing.assert_close(streamed, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_streaming_equals_offline_in_half_precision(dtype):
    """The carried SSM state is float32 (the scan's own precision), so a half-precision model streams what it
    computes offline to 1e-2 at outputs of magnitude ~5. Carrying it in the model's dtype gave nan in float16 and
    3e-2 in bfloat16."""
    model = causal_model().to(dtype)
    audio = torch.randn(3 * SAMPLE_RATE + 123, generator=torch.Generator().manual_seed(2)).to(dtype)
    expected = offline(model, audio)
    streamed = stream(model, audio, round(0.1 * SAMPLE_RATE))
    assert streamed.dtype == dtype
    torch.testing.assert_close(streamed.float(), expected.float(), rtol=0, atol=1e-2)


def test_carried_state_matters():
    """Control for the equality tests: with the scan state dropped at chunk boundaries they would fail."""
    model = causal_model()
    audio = torch.randn(3 * SAMPLE_RATE, generator=torch.Generator().manual_seed(3))
    encoder = StreamingEncoder(model)
    pieces = []
    for start in range(0, len(audio), 8000):
        pieces.append(encoder.push(audio[start : start + 8000]))
        for name, tensor in encoder.carried_tensors().items():
            if name.endswith(".ssm"):
                tensor.zero_()
    assert (torch.cat(pieces) - offline(model, audio)).abs().max() > 1e-2


@pytest.mark.parametrize("extractor_mode", ["layer_norm", "fbank"])
def test_irregular_chunks_and_output_layer(extractor_mode):
    """Chunks shorter than a hop (no new frame), of odd sizes, and an early exit at layer 1 of 2; fbank at label rate
    50 emits frames when HuBERT's CNN does."""
    model = causal_model(layer_norm_first=True, extractor_mode=extractor_mode)
    g = torch.Generator().manual_seed(4)
    audio = torch.randn(4 * SAMPLE_RATE, generator=g)
    sizes = torch.randint(1, 9000, (200,), generator=g).tolist()
    sizes[:6] = [1, 50, 399, 1, 320, 7]
    encoder = StreamingEncoder(model, output_layer=1)
    pieces, start = [], 0
    for size in sizes:
        if start >= len(audio):
            break
        piece = encoder.push(audio[start : start + size])
        start += size
        assert len(piece) == conv_output_length(min(start, len(audio))) - sum(len(p) for p in pieces)
        pieces.append(piece)
    torch.testing.assert_close(torch.cat(pieces), offline(model, audio, output_layer=1), rtol=1e-4, atol=1e-4)


def test_sixty_seconds_in_constant_memory():
    """A minute in 0.25 s chunks: every carried tensor keeps its size (the sample buffer stays below one window),
    and the last frames still equal offline ones."""
    model = causal_model()
    audio = torch.randn(60 * SAMPLE_RATE, generator=torch.Generator().manual_seed(5))
    encoder = StreamingEncoder(model)
    chunk = SAMPLE_RATE // 4
    first_sizes = None
    pieces = []
    for start in range(0, len(audio), chunk):
        pieces.append(encoder.push(audio[start : start + chunk]))
        carried = encoder.carried_tensors()
        assert carried["samples"].untyped_storage().nbytes() < encoder.window * 4
        sizes = {name: t.untyped_storage().nbytes() for name, t in carried.items() if name != "samples"}
        first_sizes = first_sizes or sizes
        assert sizes == first_sizes
    assert first_sizes == {  # conv tail (b, d_inner, d_conv - 1) and SSM state (b, d_inner, d_state), float32
        f"layer{i}.{part}": 4 * 64 * size for i in range(2) for part, size in (("conv", 3), ("ssm", 8))
    }
    streamed = torch.cat(pieces)
    assert encoder.frames_emitted == len(streamed) == conv_output_length(len(audio))
    torch.testing.assert_close(streamed[-500:], offline(model, audio)[-500:], rtol=1e-4, atol=1e-4)


def test_flush_starts_a_new_stream():
    model = causal_model()
    audio = torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(6))
    encoder = StreamingEncoder(model)
    first = torch.cat([encoder.push(audio[:7000]), encoder.push(audio[7000:])])
    assert encoder.flush().shape == (0, 32)
    second = torch.cat([encoder.push(audio[:3000]), encoder.push(audio[3000:])])
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer_type, overrides, reason",
    [
        ("mamba", {"conv_pos": 16, "extractor_mode": "layer_norm"}, "conv_pos=0"),
        ("mamba", {"conv_pos": 0, "extractor_mode": "default"}, "extractor_mode=layer_norm"),
        ("ext_bimamba", CAUSAL, "not causal"),
        ("ext_bimamba2", CAUSAL, "not causal"),
        ("inn_bimamba", CAUSAL, "not causal"),
        ("conbimamba", CAUSAL, "not causal"),
        ("transformer", CAUSAL, "not causal"),
    ],
)
def test_refuses_models_that_look_ahead(layer_type, overrides, reason):
    with pytest.raises(NotStreamableError, match=reason):
        StreamingEncoder(tiny_model(layer_type, **overrides).eval())


def test_refuses_training_mode():
    with pytest.raises(NotStreamableError, match="eval"):
        StreamingEncoder(tiny_model("mamba", **CAUSAL).train())
