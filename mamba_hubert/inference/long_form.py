"""Offline features and CTC logits of recordings too long for `extract_features` to hold in memory.

Where plain `model.extract_features` spends memory on a 10-minute recording (9.6 M samples, T = 30 k frames):
the CNN's first layer alone outputs 1.92 M positions x 512 channels = 3.9 GB in float32, and its norm and GELU
copy that; the encoder's activations are O(T x d) per tensor (92 MB at d = 768), Mamba's inner ones
O(T x d_inner) a few times over, and attention O(T^2). `extract_features_long` gives the same output (float
rounding aside) with peak memory O(T x d_model) plus one chunk's working set. It is a driver over the model's
`forward_long` (front end included), which runs the front end in chunks of samples (`models.front_end`) and each
layer as the layer declares (`forward_long` of the layer-type registry's classes):

- a causal layer (`layer_type=mamba`, `mamba2`) runs chunk by chunk with its state carried, written back over its
  input: no whole-sequence temporaries;
- a bidirectional one (ext/inn bimamba, conbimamba, transbimamba) runs its per-frame parts in chunks, its forward
  scan over the chunks with the state carried and its backward scan as a second pass, back to front over
  time-reversed chunks - exact, since that direction is a causal scan of the reversed sequence;
- non-causal convolutions (the positional conv, the conv module's depthwise conv) run over the whole sequence at once:
  O(T x d); attention layers (`transformer`, `conformer`) run whole: exact, but O(T^2).
"""

import torch
from torch import nn

from mamba_hubert.frames import receptive_field


@torch.no_grad()
def extract_features_long(
    model: nn.Module,
    audio: torch.Tensor,
    chunk_seconds: float = 10.0,
    output_layer: int | None = None,
    sample_rate: int = 16000,
    hidden_states: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """`model.extract_features(audio[None], output_layer=output_layer)[0][0]` for a MambaHubertModel in eval mode,
    in bounded memory: audio (num_samples,) -> features (frames, encoder_embed_dim); with `hidden_states`, the
    list of every hidden state ([encoder input, each layer's output]), each (frames, encoder_embed_dim)."""
    if model.training:
        raise ValueError("call model.eval() first: dropout and batch statistics make chunked and offline outputs differ")
    if audio.dim() != 1:
        raise ValueError(f"audio must be one channel (num_samples,), got shape {tuple(audio.shape)}")
    window = receptive_field(model.conv_layers)[0]
    if len(audio) + model.left_padding < window:
        raise ValueError(f"audio of {len(audio)} samples is shorter than one frame's window "
                         f"({window - model.left_padding})")
    chunk_samples = max(window, round(chunk_seconds * sample_rate))
    out = model.forward_long(audio, chunk_samples, output_layer, hidden_states)
    return [state[0] for state in out] if hidden_states else out[0]


@torch.no_grad()
def ctc_logits_long(model: nn.Module, audio: torch.Tensor, chunk_seconds: float = 10.0,
                    sample_rate: int = 16000) -> torch.Tensor:
    """The CTC logits (frames, vocabulary) of a fine-tuned model on a mamba_hubert upstream (`hubert_ctc`, or
    `mamba_hubert_asr` with its upstream layer or weighted sum and head), in eval mode, in bounded memory."""
    encoder = model.w2v_encoder
    weighted = getattr(encoder, "layer_weights", None) is not None
    upstream = extract_features_long(encoder.w2v_model, audio, chunk_seconds, getattr(encoder, "upstream_layer", None),
                                     sample_rate, hidden_states=weighted)
    if weighted:
        upstream = encoder.weighted_sum(upstream)
    if getattr(encoder, "head", None) is None:
        return encoder.proj(upstream)
    chunk = max(1, len(upstream) * round(chunk_seconds * sample_rate) // max(1, len(audio)))
    return encoder.head_logits_long(upstream[None], chunk)[0]
