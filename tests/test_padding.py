"""A padded frame never changes a valid frame's output, for every layer type."""

import copy

import pytest
import torch
from fairseq.modules import Fp32GroupNorm

from mamba_hubert.frames import conv_output_length
from mamba_hubert.modules import reverse_padded
from tests.conftest import tiny_model
from tests.fairseq_runs import make_tone_corpus


def right_padding(lengths, total):
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


def test_reverse_padded_reverses_within_each_length():
    x = torch.arange(10.0).view(2, 5, 1)
    mask = right_padding([5, 3], 5)
    out = reverse_padded(x, mask)
    assert out[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]
    assert torch.equal(reverse_padded(out, mask), x)


def test_encoder_refuses_left_padding(layer_type):
    """Checked once per forward by the encoder (the mixers trust it, so as not to sync the host on every layer)."""
    model = tiny_model(layer_type).eval()
    mask = right_padding([40, 23], 40)
    with pytest.raises(ValueError, match="right-padded"):
        model.encoder(torch.randn(2, 40, 32), padding_mask=mask.flip(1))


def test_encoder_alone_equals_padded_batch(layer_type):
    model = tiny_model(layer_type).eval()
    torch.manual_seed(1)
    lengths = [40, 23, 31]
    x = torch.randn(3, 40, 32)
    mask = right_padding(lengths, 40)
    x = x.masked_fill(mask[..., None], 123.0)  # garbage in the padding must not matter
    batched, _ = model.encoder(x, padding_mask=mask)
    for i, n in enumerate(lengths):
        alone, _ = model.encoder(x[i : i + 1, :n], padding_mask=torch.zeros(1, n, dtype=torch.bool))
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-5), f"utterance {i}"


def test_encoder_valid_outputs_have_no_gradient_from_padding(layer_type):
    model = tiny_model(layer_type).train()  # batch norm in training mode must also ignore padding
    x = torch.randn(2, 30, 32, requires_grad=True)
    mask = right_padding([30, 17], 30)
    out, _ = model.encoder(x.clone(), padding_mask=mask)  # fairseq zeroes padding in place
    out[~mask].sum().backward()
    assert x.grad[mask].abs().max() == 0
    assert x.grad[~mask].abs().max() > 0


@pytest.mark.parametrize("extractor_mode", ["layer_norm", "default", "fbank"])
def test_model_extract_features_alone_equals_padded_batch(layer_type, extractor_mode):
    # default: the first conv block's GroupNorm over time takes its statistics over each row's valid frames;
    # fbank at label_rate 50: log-mel and causal convs give HuBERT's frame count
    model = tiny_model(layer_type, extractor_mode=extractor_mode).eval()
    torch.manual_seed(2)
    lengths = [16000, 9000, 12345]  # 9000 of 16000: fairseq's grouped mask marks one frame too many
    wav = torch.randn(3, 16000)
    mask = right_padding(lengths, 16000)
    wav = wav.masked_fill(mask, 0.5)
    batched, frame_mask = model.extract_features(wav, padding_mask=mask)
    for i, n in enumerate(lengths):
        frames = conv_output_length(n)
        assert int((~frame_mask[i]).sum()) == frames
        alone, _ = model.extract_features(wav[i : i + 1, :n], padding_mask=torch.zeros(1, n, dtype=torch.bool))
        assert alone.shape[1] == frames
        assert torch.allclose(batched[i, :frames], alone[0], atol=1e-5), f"utterance {i}"


@pytest.mark.parametrize("extractor_mode", ["layer_norm", "default", "fbank"])
def test_model_valid_frames_have_no_gradient_from_padded_samples(extractor_mode):
    model = tiny_model("conbimamba", extractor_mode=extractor_mode).eval()
    wav = torch.randn(2, 16000, requires_grad=True)
    mask = right_padding([16000, 9000], 16000)
    features, frame_mask = model.extract_features(wav, padding_mask=mask)
    features[~frame_mask].sum().backward()
    assert wav.grad[mask].abs().max() == 0
    assert wav.grad[~mask].abs().max() > 0  # the gradient reaches the valid samples


def test_default_extractor_keeps_fairseqs_parameters_and_unpadded_output():
    """The swapped GroupNorm changes nothing but the padding: same state-dict keys as fairseq's HubertModel (its
    checkpoints load), and without padding the same features as fairseq's Fp32GroupNorm."""
    model = tiny_model("transformer", extractor_mode="default").eval()
    extractor = copy.deepcopy(model.feature_extractor)
    block = extractor.conv_layers[0]
    norm = next(m for m in block if isinstance(m, torch.nn.GroupNorm))
    fairseq_norm = Fp32GroupNorm(norm.num_groups, norm.num_channels, affine=True)
    fairseq_norm.load_state_dict(norm.state_dict())
    block[list(block).index(norm)] = fairseq_norm
    wav = torch.randn(2, 8000)
    assert torch.equal(model.feature_extractor(wav), extractor(wav))
    assert [k for k in model.state_dict() if k.startswith("feature_extractor")] == [
        f"feature_extractor.{k}" for k in extractor.state_dict()]


@pytest.mark.parametrize("label_rate", [100, 50, 25])
def test_fbank_frames_match_the_labels(tmp_path, label_rate):
    """One frame per label, so fairseq's HuBERT trims neither (feat2tar_ratio 1): at 100 Hz the tone corpus's
    k-means labels (MFCC frames, 25 ms / 10 ms), at 50 Hz the demo corpus's phone labels and iteration-2 labels
    (HuBERT's CNN arithmetic), at 25 Hz every fourth 10 ms frame."""
    corpus = make_tone_corpus(tmp_path, splits=(("train", 4),))
    lengths = [int(row.split("\t")[1]) for row in (corpus / "train.tsv").read_text().splitlines()[1:]]
    km = [len(row.split()) for row in (corpus / "train.km").read_text().splitlines()]
    lengths, km = lengths + [400, 719, 720, 9000], km + [(n - 400) // 160 + 1 for n in (400, 719, 720, 9000)]
    expected = {100: km, 50: [conv_output_length(n) for n in lengths], 25: [(k - 1) // 4 + 1 for k in km]}
    model = tiny_model("mamba", extractor_mode="fbank", label_rate=label_rate).eval()
    assert model.feat2tar_ratio == 1.0
    assert model.frame_lengths(torch.tensor(lengths)).tolist() == expected[label_rate]
    for n, frames in zip(lengths, expected[label_rate]):
        assert model.extract_features(torch.randn(1, n))[0].shape[1] == frames


def test_fbank_refuses_a_label_rate_that_does_not_divide_100():
    with pytest.raises(ValueError, match="100 / label_rate must be a whole number; got label_rate=30"):
        tiny_model("mamba", extractor_mode="fbank", label_rate=30)


def test_the_conformer_conv_padding_mask_is_cleared_even_when_its_forward_fails():
    """The mask reaches fairseq's convolution module as a side channel: it must not outlive the call."""
    layer = tiny_model("conformer").encoder.layers[0]
    with pytest.raises(RuntimeError):
        layer(torch.randn(5, 1, 7), self_attn_padding_mask=torch.zeros(1, 5, dtype=torch.bool))  # 7 channels, not 32
    assert layer.conv_module.padding_mask is None
