"""`mamba_hubert_asr` built in-process from real tiny pretraining checkpoints: which upstream output the head reads,
the weighted sum, freezing, and exactness under padding through every head type."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamba_hubert.models.mamba_hubert_asr import HEAD_LAYER_TYPES
from tests.conftest import SMALL_HEAD
from tests.conftest import build_asr_model as build_asr


def padded(lengths, seed=0):
    torch.manual_seed(seed)
    wav = torch.randn(len(lengths), max(lengths)) * 0.1
    mask = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    return wav.masked_fill(mask, 0.7), mask  # garbage in the padding must not matter


def log_probs(model, wav, mask):
    out = model.w2v_encoder(wav, mask, tbc=False)
    return F.log_softmax(out["encoder_out"].float(), -1), out["padding_mask"]


@pytest.mark.parametrize("head", HEAD_LAYER_TYPES)
def test_ctc_log_probs_alone_equal_padded_batch(mamba_hubert_checkpoint, tone_corpus, head):
    model = build_asr(mamba_hubert_checkpoint, tone_corpus, head_layer_type=head, **SMALL_HEAD).eval()
    lengths = [16000, 9000, 12345]  # 9000 of 16000: fairseq's grouped frame mask marks one frame too many
    wav, mask = padded(lengths)
    with torch.no_grad():
        batched, frame_mask = log_probs(model, wav, mask)
        for i, n in enumerate(lengths):
            alone, _ = log_probs(model, wav[i : i + 1, :n], torch.zeros(1, n, dtype=torch.bool))
            valid = int((~frame_mask[i]).sum())
            assert alone.shape[1] == valid
            torch.testing.assert_close(batched[i, :valid], alone[0], atol=1e-5, rtol=0, msg=f"utterance {i}")


def test_weighted_sum_alone_equals_padded_batch(mamba_hubert_checkpoint, tone_corpus):
    model = build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_weighted_sum=True, head_layer_type="conformer",
                      **SMALL_HEAD).eval()
    with torch.no_grad():
        model.w2v_encoder.layer_weights.copy_(torch.tensor([0.3, -0.2, 0.5]))
        wav, mask = padded([16000, 9000])
        batched, _ = log_probs(model, wav, mask)
        alone, _ = log_probs(model, wav[1:, :9000], torch.zeros(1, 9000, dtype=torch.bool))
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], atol=1e-5, rtol=0)


def test_upstream_layer_k_is_extract_features_output_layer_k(mamba_hubert_checkpoint, tone_corpus):
    wav, mask = padded([16000, 11000])
    last = build_asr(mamba_hubert_checkpoint, tone_corpus).eval()
    first = build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_layer=1).eval()
    with torch.no_grad():
        expected, expected_mask = first.w2v_encoder.w2v_model.extract_features(wav, padding_mask=mask, output_layer=1)
        got, got_mask = first.w2v_encoder.upstream_features(wav, mask)
        assert torch.equal(got, expected) and torch.equal(got_mask, expected_mask)
        final, _ = last.w2v_encoder.upstream_features(wav, mask)
        assert torch.equal(final, last.w2v_encoder.w2v_model.extract_features(wav, padding_mask=mask)[0])
        assert not torch.allclose(final, got)  # layer 1 is not the last layer
    with pytest.raises(ValueError, match="has 2 layers"):
        build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_layer=3)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_weighted_sum_is_a_softmax_over_the_hidden_states(mamba_hubert_checkpoint, tone_corpus, index):
    """Weights peaked on one state give that state: 0 is the encoder input, 1 layer 1's output, 2 the last."""
    model = build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_weighted_sum=True).eval()
    upstream = model.w2v_encoder.w2v_model
    wav, mask = padded([16000, 11000])
    inputs = {}
    hook = upstream.encoder.layers[0].register_forward_pre_hook(lambda m, args: inputs.setdefault("x", args[0]))
    with torch.no_grad():
        expected = [None, upstream.extract_features(wav, padding_mask=mask, output_layer=1)[0],
                    upstream.extract_features(wav, padding_mask=mask)[0]]
        hook.remove()
        expected[0] = inputs["x"].transpose(0, 1)[:, : expected[2].shape[1]]
        model.w2v_encoder.layer_weights.copy_(torch.full((3,), -1e4))
        model.w2v_encoder.layer_weights[index] = 0.0
        got, _ = model.w2v_encoder.upstream_features(wav, mask)
    torch.testing.assert_close(got, expected[index], atol=1e-6, rtol=0)


def test_frozen_upstream_gets_no_gradient_and_the_layer_weights_do(mamba_hubert_checkpoint, tone_corpus):
    model = build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_weighted_sum=True, freeze_upstream=True,
                      head_layer_type="ext_bimamba", **SMALL_HEAD).train()
    upstream = model.w2v_encoder.w2v_model
    assert not upstream.training and model.w2v_encoder.head.training  # eval mode kept through .train()
    wav, mask = padded([16000, 11000])
    lprobs, _ = log_probs(model, wav, mask)
    lprobs.logsumexp(-1).sum().neg().backward()
    assert all(p.grad is None and not p.requires_grad for p in upstream.parameters())
    weights = model.w2v_encoder.layer_weights
    assert weights.grad is not None and weights.grad.abs().min() > 0
    assert all(p.grad is not None for p in model.w2v_encoder.head.parameters())


def test_fairseq_hubert_upstream_with_a_conformer_head(fairseq_hubert_checkpoint, tone_corpus):
    model = build_asr(fairseq_hubert_checkpoint, tone_corpus, head_layer_type="conformer", **SMALL_HEAD).eval()
    assert type(model.w2v_encoder.w2v_model).__name__ == "HubertModel"
    wav, mask = padded([16000, 11000])
    with torch.no_grad():
        lprobs, frame_mask = log_probs(model, wav, mask)
    assert lprobs.shape[:2] == frame_mask.shape and torch.isfinite(lprobs).all()
    assert lprobs.shape[-1] == len(model.w2v_encoder.proj.weight)


def test_weighted_sum_reads_through_layerdrop_of_an_upstream_in_training(mamba_hubert_checkpoint, tone_corpus):
    """With LayerDrop in a trained (not frozen) upstream, a skipped layer's hidden state is its input, also when the
    first layer is skipped; with every layer skipped, every state is the encoder's output."""
    model = build_asr(mamba_hubert_checkpoint, tone_corpus, upstream_weighted_sum=True).train()
    encoder = model.w2v_encoder
    layers = encoder.w2v_model.encoder.layers
    wav, mask = padded([16000, 11000])
    encoder.w2v_model.encoder.layerdrop = 0.5
    ran: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: ran.__setitem__(i, args[0].transpose(0, 1)))
             for i, layer in enumerate(layers)]
    first_skipped = 0
    for seed in range(12):
        ran.clear()
        np.random.seed(seed)
        with torch.no_grad():
            states, _ = encoder.upstream_hidden_states(wav, mask, mask=False)
        assert len(states) == len(layers) + 1
        if 0 not in ran and 1 in ran:
            first_skipped += 1
            assert torch.equal(states[0], ran[1][:, : states[0].shape[1]])  # layer 1 saw the encoder input
            assert torch.equal(states[1], states[0])
    assert first_skipped > 0
    for hook in hooks:
        hook.remove()
    encoder.w2v_model.encoder.layerdrop = 1.0
    with torch.no_grad():
        states, _ = encoder.upstream_hidden_states(wav, mask, mask=False)
    assert all(torch.equal(state, states[-1]) for state in states)
