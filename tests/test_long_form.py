"""Long-form extraction equals `extract_features` for every layer type, and a 10-minute input fits in little memory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mamba_hubert.inference.long_form import extract_features_long
from tests.conftest import tiny_model
from tests.test_streaming import state_sensitive

SAMPLE_RATE = 16000
ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "mamba": ("mamba", {}),
    "mamba_streaming_config": ("mamba", {"conv_pos": 0, "layer_norm_first": True}),
    "ext_bimamba_concat": ("ext_bimamba", {}),
    "ext_bimamba_sum_no_ffn": ("ext_bimamba", {"bimamba_fusion": "sum", "encoder_ffn_embed_dim": 0}),
    "inn_bimamba": ("inn_bimamba", {}),
    "mamba2": ("mamba2", {"mamba_headdim": 16, "mamba_chunk_size": 16}),
    "ext_bimamba2_sum_no_ffn": ("ext_bimamba2", {"bimamba_fusion": "sum", "encoder_ffn_embed_dim": 0,
                                                 "mamba_headdim": 16, "mamba_ngroups": 2, "mamba_chunk_size": 16}),
    "conbimamba": ("conbimamba", {}),
    "conbimamba_group_norm_extractor": ("conbimamba", {"extractor_mode": "default"}),
    "conbimamba_fbank": ("conbimamba", {"extractor_mode": "fbank"}),
    "mamba_fbank_100hz": ("mamba", {"extractor_mode": "fbank", "label_rate": 100}),
    "transbimamba_pre_ln": ("transbimamba", {"layer_norm_first": True}),
    "transformer": ("transformer", {}),
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def audio() -> torch.Tensor:
    return torch.randn(20 * SAMPLE_RATE + 77, generator=torch.Generator().manual_seed(0))  # odd frame count


@pytest.mark.parametrize("case", CASES)
def test_equals_extract_features(case, audio):
    """20 s in 1.3 s chunks (65 frames): CNN chunk overlap, both scan directions carried across chunks."""
    layer_type, overrides = CASES[case]
    model = state_sensitive(tiny_model(layer_type, **overrides))
    with torch.no_grad():
        expected = model.extract_features(audio[None])[0][0]
        expected_layer1 = model.extract_features(audio[None], output_layer=1)[0][0]
    torch.testing.assert_close(extract_features_long(model, audio, chunk_seconds=1.3), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        extract_features_long(model, audio, chunk_seconds=2.0, output_layer=1), expected_layer1, rtol=1e-4, atol=1e-4
    )


def test_rejects_training_mode_and_short_audio(audio):
    model = tiny_model("mamba")
    with pytest.raises(ValueError, match="eval"):
        extract_features_long(model.train(), audio)
    with pytest.raises(ValueError, match="shorter than one frame"):
        extract_features_long(model.eval(), audio[:399])
    with pytest.raises(ValueError, match=r"shorter than one frame's window \(400\)"):  # fbank: 25 ms too
        extract_features_long(tiny_model("mamba", extractor_mode="fbank").eval(), audio[:399])


# Runs in a fresh process so that its peak resident set (VmHWM, reset through /proc/self/clear_refs) is its own.
_MEMORY_PROBE = textwrap.dedent("""
    import json, sys, torch
    from mamba_hubert.inference.long_form import extract_features_long
    from tests.conftest import tiny_model

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    torch.set_num_threads(1)
    conv = "[(128,10,5)] + [(128,3,2)] * 4 + [(128,2,2)] * 2"  # HuBERT's CNN geometry at 1/4 width
    model = tiny_model("conbimamba", conv_feature_layers=conv, extractor_mode="default").eval()
    extract_features_long(model, torch.randn(16000))  # warm-up: libraries, kernel, allocator
    growth = {}
    for minutes in (1, 10):
        audio = torch.randn(minutes * 60 * 16000)
        before = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        frames = len(extract_features_long(model, audio))
        growth[minutes] = status("VmHWM") - before
        del audio
    print(json.dumps({"growth": growth, "frames": frames}))
""")


def test_ten_minutes_in_bounded_memory():
    """10 min of audio through a model with HuBERT's CNN geometry (128 channels) and the two-pass group norm:
    plain extract_features would hold the first conv layer's output alone, 1.92 M x 128 float32 = 983 MB."""
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, check=True)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    growth_1, growth_10 = probe["growth"]["1"], probe["growth"]["10"]
    assert probe["frames"] == 29999
    assert growth_10 < 400e6, probe
    assert growth_10 < 2 * growth_1 + 50e6, probe  # 10x the audio, not 10x the memory
