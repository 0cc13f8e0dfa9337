"""The convolutional front end of a mamba_hubert model (fairseq's ConvFeatureExtractionModel, or the fbank front
end) on a recording of any length, in chunks of samples, exactly (`conv_features_long`).

Frame k reads samples [hop k, hop k + window) (400 and 320 for HuBERT), so chunks of frames are computed from
overlapping chunks of samples. fairseq's default extractor normalises its first layer over the whole utterance (a
GroupNorm over time): each channel's mean and variance over the whole recording follow from the audio windows' first
and second moments (the conv is linear), and every chunk is normalised with them. Plain `extract_features` on
10 minutes (9.6 M samples) would hold the CNN's first layer output alone: 1.92 M positions x 512 channels = 3.9 GB
in float32.
"""

import torch
from torch import nn

from mamba_hubert.frames import conv_output_length, receptive_field


def has_group_norm(module: nn.Module) -> bool:
    """Whether a feature extractor normalises over time (fairseq's `extractor_mode=default`)."""
    return any(isinstance(m, nn.GroupNorm) for m in module.modules())


GroupStats = tuple[torch.Tensor, torch.Tensor]  # per-group mean and variance, float64


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
