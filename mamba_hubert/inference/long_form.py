"""Offline feature extraction for recordings too long for `extract_features` to hold in memory.

Where plain `model.extract_features` spends memory on a 10-minute recording (9.6 M samples, T = 30 k frames):
the CNN's first layer alone outputs 1.92 M positions x 512 channels = 3.9 GB in float32, and its norm and GELU
copy that; the encoder's activations are O(T x d) per tensor (92 MB at d = 768), Mamba's inner ones
O(T x d_inner) a few times over, and attention O(T^2). `extract_features_long` gives the same output (float
rounding aside) with peak memory O(T x d_model) plus one chunk's working set:

- CNN: frame k reads samples [hop k, hop k + window) (400 and 320 for HuBERT), so chunks of frames are computed
  from overlapping chunks of samples, exactly. fairseq's default extractor normalises its first layer over the
  whole utterance (a GroupNorm over time); each channel's mean and variance over the whole recording follow from
  the audio windows' first and second moments (the conv is linear), and every chunk is normalised with them.
- Encoder: layer by layer over the whole sequence. Per-frame parts (layer norms, projections, FFNs) run in chunks
  of frames. Every Mamba scan direction runs over the chunks with its conv tail and SSM state carried
  (the block's `MambaState`), which is exact for causal layers; a bidirectional mixer (ext/inn bimamba,
  conbimamba, transbimamba) takes a second pass, back to front over time-reversed chunks, for its backward
  direction - also exact, since that direction is a causal scan of the reversed sequence. A causal layer
  (`layer_type=mamba` or `mamba2`) runs whole chunk by chunk, written back over its input: no whole-sequence temporaries.
- Non-causal convolutions (the positional conv, the conformer module's depthwise conv) run over the whole
  sequence at once: O(T x d). Attention layers (`layer_type=transformer`) also run whole: exact, but O(T^2).
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mamba_hubert.inference.streaming import (
    after_mixer,
    causal_layer_chunk,
    has_group_norm,
    is_causal_layer,
    mixer_input,
)
from mamba_hubert.models.frames import conv_output_length, receptive_field
from mamba_hubert.modules.bimamba import ExtBiMamba, InnBiMamba
from mamba_hubert.modules.layers import ConBiMambaEncoderLayer, ConvolutionModule, MambaEncoderLayer
from mamba_hubert.modules.mamba import Mamba
from mamba_hubert.modules.mamba2 import Mamba2

GroupStats = tuple[torch.Tensor, torch.Tensor]  # per-group mean and variance, float64


def per_frames(fn: Callable[..., torch.Tensor], chunk: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn applied to `chunk`-frame slices of (batch, T, ...) tensors, written into one output over time: for
    per-frame fn, fn(*tensors) with a working set of one chunk."""
    length = tensors[0].shape[1]
    out = None
    for start in range(0, length, chunk):
        piece = fn(*(t[:, start : start + chunk] for t in tensors))
        if out is None:
            out = piece.new_empty(piece.shape[0], length, *piece.shape[2:])
        out[:, start : start + chunk] = piece
    return out


def _group_norm(norm: nn.GroupNorm, x: torch.Tensor, stats: GroupStats) -> torch.Tensor:
    """`norm` (fairseq's Fp32GroupNorm: float32, biased variance) with statistics of the whole recording, folded
    into one per-channel scale and shift so that the chunk is read and written once."""
    mean, var = stats
    channels = x.shape[1]
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(channels // norm.num_groups)  # per channel
    shift = -mean.repeat_interleave(channels // norm.num_groups) * scale
    if norm.weight is not None:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    return torch.addcmul(shift.float()[:, None], x.float(), scale.float()[:, None]).type_as(x)


def _run_extractor(extractor: nn.Module, samples: torch.Tensor, stats: GroupStats | None) -> torch.Tensor:
    """The feature extractor on samples (1, n), the group norm of fairseq's ConvFeatureExtractionModel (if any)
    using `stats`. -> (1, channels, positions)."""
    if stats is None:
        return extractor(samples)
    x = samples.unsqueeze(1)
    for block in extractor.conv_layers:
        for module in block:
            x = _group_norm(module, x, stats) if isinstance(module, nn.GroupNorm) else module(x)
    return x


def _first_conv_stats(conv: nn.Conv1d, norm: nn.GroupNorm, audio: torch.Tensor, chunk_samples: int) -> GroupStats:
    """Mean and variance per group of `conv(audio)` over the whole recording, without computing the conv.

    Output c at position p is w_c . x_p + b_c, x_p the p-th window of the audio, so its mean over p is
    w_c . m + b_c and its variance w_c^T S w_c - (w_c . m)^2, with m and S the windows' mean and second moment
    (kernel and kernel x kernel, gathered in float64 chunk by chunk): O(samples x kernel) work instead of a pass of
    O(samples x channels x kernel) over the largest activation of the model."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    windows = audio.unfold(0, kernel, stride)  # (positions, kernel), a view
    first = windows.new_zeros(kernel, dtype=torch.float64)
    second = windows.new_zeros(kernel, kernel, dtype=torch.float64)
    for start in range(0, len(windows), max(1, chunk_samples // stride)):
        piece = windows[start : start + max(1, chunk_samples // stride)].double()
        first += piece.sum(0)
        second += piece.T @ piece
    first, second = first / len(windows), second / len(windows)
    weight = conv.weight.double().view(conv.out_channels, kernel)
    centred = weight @ first  # channel means without the bias
    channel_var = torch.einsum("ck,kl,cl->c", weight, second, weight) - centred.square()
    channel_mean = centred if conv.bias is None else centred + conv.bias.double()
    # a group's variance: the mean over its channels of (variance + squared mean), less the squared group mean
    group_mean = channel_mean.view(norm.num_groups, -1).mean(1)
    group_var = (channel_var + channel_mean.square()).view(norm.num_groups, -1).mean(1) - group_mean.square()
    return group_mean, group_var


def conv_features_long(model: nn.Module, audio: torch.Tensor, chunk_samples: int) -> torch.Tensor:
    """`model.feature_extractor(audio[None])` transposed to (1, T, channels), computed chunk by chunk (`audio`
    already left-padded where the model pads it)."""
    extractor, conv_layers = model.feature_extractor, model.conv_layers
    stats = None
    for index, block in enumerate(extractor.conv_layers if has_group_norm(extractor) else []):
        norms = [m for m in block if isinstance(m, nn.GroupNorm)]
        if norms and index > 0:  # fairseq's extractor only ever puts it right after the first conv
            raise ValueError("a group norm over time is supported only in the feature extractor's first block")
        if norms:
            conv = next(m for m in block if isinstance(m, nn.Conv1d))
            stats = _first_conv_stats(conv, norms[0], audio, chunk_samples)
    window, hop = receptive_field(conv_layers)
    num_frames = conv_output_length(len(audio), conv_layers)
    per_chunk = max(1, chunk_samples // hop)
    features = audio.new_empty(1, num_frames, conv_layers[-1][0])
    for start in range(0, num_frames, per_chunk):
        stop = min(num_frames, start + per_chunk)
        segment = audio[hop * start : hop * (stop - 1) + window]
        features[:, start:stop] = _run_extractor(extractor, segment[None], stats).transpose(1, 2)
    return features


def mamba_over_chunks(block: Mamba | Mamba2, x: torch.Tensor, chunk: int, reverse: bool = False) -> torch.Tensor:
    """`block(x)` for x (b, T, d), or with `reverse` R(block(R(x))) (R = time reversal), chunk by chunk with
    the state carried."""
    out = torch.empty_like(x)
    state = block.allocate_state(x.shape[0])
    starts = range(0, x.shape[1], chunk)
    for start in reversed(starts) if reverse else starts:
        piece = x[:, start : start + chunk]
        y = block(piece.flip(1) if reverse else piece, state=state)
        out[:, start : start + chunk] = y.flip(1) if reverse else y
    return out


def _inn_bimamba_long(block: InnBiMamba, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """InnBiMamba.forward: the forward branch front to back, then the backward branch back to front, fused and
    projected per chunk."""
    batch, length, _ = x.shape
    starts = range(0, length, chunk)
    forward_y = x.new_empty(batch, block.d_inner, length)
    state = block.allocate_state(batch)
    for start in starts:
        hidden, gate = block.in_proj(x[:, start : start + chunk]).transpose(1, 2).chunk(2, dim=1)
        forward_y[..., start : start + chunk] = block.scan_branch(hidden, gate, *block.direction_parameters(False),
                                                                  state)
    out = torch.empty_like(x)
    state = block.allocate_state(batch)
    for start in reversed(starts):
        hidden, gate = block.in_proj(x[:, start : start + chunk].flip(1)).transpose(1, 2).chunk(2, dim=1)
        backward_y = block.scan_branch(hidden, gate, *block.direction_parameters(True), state)
        y = (forward_y[..., start : start + chunk] + backward_y.flip(-1)) / 2
        out[:, start : start + chunk] = block.out_proj(y.transpose(1, 2))
    return out


def mixer_long(mixer: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """A bidirectional Mamba mixer of this package on a whole sequence (b, T, d), with one chunk's working set
    (causal layers run whole in `_causal_layer_in_place`)."""
    if isinstance(mixer, InnBiMamba):  # before Mamba: it subclasses it
        return _inn_bimamba_long(mixer, x, chunk)
    if isinstance(mixer, ExtBiMamba):
        forward = mamba_over_chunks(mixer.forward_mamba, x, chunk)
        backward = mamba_over_chunks(mixer.backward_mamba, x, chunk, reverse=True)
        if mixer.fuse is None:
            return forward + backward
        return per_frames(lambda f, b: mixer.fuse(torch.cat([f, b], dim=-1)), chunk, forward, backward)
    raise TypeError(f"not a bidirectional Mamba mixer: {type(mixer).__name__}")


def _conv_module_long(module: ConvolutionModule, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """ConvolutionModule.forward in eval mode (batch norm with running statistics is per frame)."""
    glu = per_frames(lambda c: F.glu(module.pointwise_in(module.layer_norm(c)), dim=-1), chunk, x)
    mixed = module.depthwise(glu.transpose(1, 2)).transpose(1, 2)
    del glu
    return per_frames(lambda c: module.pointwise_out(F.silu(module.batch_norm(c.transpose(1, 2)).transpose(1, 2))),
                      chunk, mixed)


def _conbimamba_long(layer: ConBiMambaEncoderLayer, x: torch.Tensor, chunk: int) -> torch.Tensor:
    x = x + 0.5 * per_frames(lambda c: layer.ffn1(layer.ffn1_layer_norm(c)), chunk, x)
    x = x + mixer_long(layer.mixer, layer.mixer_layer_norm(x), chunk)
    x = x + _conv_module_long(layer.conv, x, chunk)
    return per_frames(lambda c: layer.final_layer_norm(c + 0.5 * layer.ffn2(layer.ffn2_layer_norm(c))), chunk, x)


def _causal_layer_in_place(layer: MambaEncoderLayer, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """A causal Mamba layer in one pass over the chunks, each overwritten with its output: the layer allocates
    one chunk's working set and no whole-sequence tensors."""
    state = layer.mixer.allocate_state(x.shape[0])
    for start in range(0, x.shape[1], chunk):
        piece = x[:, start : start + chunk]
        piece.copy_(causal_layer_chunk(layer, piece, state))
    return x


def layer_long(layer: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """One encoder layer (eval mode) on a whole unpadded sequence (b, T, d) -> (b, T, d); may overwrite x."""
    if is_causal_layer(layer):
        return _causal_layer_in_place(layer, x, chunk)
    if isinstance(layer, MambaEncoderLayer):
        mixed = mixer_long(layer.mixer, mixer_input(layer, x), chunk)
        return per_frames(partial(after_mixer, layer), chunk, x, mixed)
    if isinstance(layer, ConBiMambaEncoderLayer):
        return _conbimamba_long(layer, x, chunk)
    # fairseq's attention layer: (T, b, d) in and out; the whole sequence at once.
    return layer(x.transpose(0, 1), self_attn_padding_mask=None)[0].transpose(0, 1)


def encoder_long(encoder: nn.Module, x: torch.Tensor, chunk: int, output_layer: int | None = None,
                 hidden_states: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """A MambaEncoder's `forward(x, layer=output_layer)` output on a whole sequence (1, T, d) in eval mode, layer by
    layer with one chunk's working set; with `hidden_states`, the list [layer 1's input, each layer's output]
    instead (the states `MambaHubertAsr`'s weighted sum reads; they cost a (T, d) tensor each). May overwrite x."""
    layers = list(encoder.layers)
    if output_layer is not None and not 1 <= output_layer <= len(layers):
        raise ValueError(f"output_layer must be in 1..{len(layers)}, got {output_layer}")
    x = x + encoder.pos_conv(x.transpose(1, 2)).transpose(1, 2)
    if not encoder.layer_norm_first:
        x = encoder.layer_norm(x)
    states = [x]
    for layer in layers if output_layer is None else layers[:output_layer]:
        # a causal layer writes its output over its input, which a kept state must not see
        x = layer_long(layer, x.clone() if hidden_states else x, chunk)
        states.append(x)
    if encoder.layer_norm_first and output_layer is None:
        states[-1] = encoder.layer_norm(states[-1])
    return states if hidden_states else states[-1]


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
    list of every hidden state (`encoder_long`), each (frames, encoder_embed_dim)."""
    if model.training:
        raise ValueError("call model.eval() first: dropout and batch statistics make chunked and offline outputs differ")
    if audio.dim() != 1:
        raise ValueError(f"audio must be one channel (num_samples,), got shape {tuple(audio.shape)}")
    window, hop = receptive_field(model.conv_layers)
    if len(audio) + model.left_padding < window:
        raise ValueError(f"audio of {len(audio)} samples is shorter than one frame's window "
                         f"({window - model.left_padding})")
    audio = F.pad(audio, (model.left_padding, 0))  # the fbank front end's causal padding, as forward_features
    chunk_samples = max(window, round(chunk_seconds * sample_rate))
    chunk = max(1, chunk_samples // hop)

    def project(features: torch.Tensor) -> torch.Tensor:
        x = model.layer_norm(features)
        return x if model.post_extract_proj is None else model.post_extract_proj(x)

    x = per_frames(project, chunk, conv_features_long(model, audio, chunk_samples))
    out = encoder_long(model.encoder, x, chunk, output_layer, hidden_states)
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
    head = getattr(encoder, "head", None)
    if head is None:
        return encoder.proj(upstream)
    chunk = max(1, len(upstream) * round(chunk_seconds * sample_rate) // max(1, len(audio)))
    x = per_frames(encoder.head_proj, chunk, upstream[None])
    return per_frames(encoder.proj, chunk, encoder_long(head, x, chunk))[0]
