"""Exact frame arithmetic of a wav2vec2/HuBERT convolutional feature extractor.

fairseq derives the frame padding mask by splitting the sample mask into equal groups, which at some
lengths marks one frame too many; these helpers follow the conv kernel/stride arithmetic instead.
"""

from collections.abc import Sequence

import torch

# fairseq's default `conv_feature_layers`: "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
HUBERT_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def conv_output_length(num_samples: int, conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS) -> int:
    """Number of frames the extractor emits for `num_samples` input samples (0 if too short)."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        if length <= 0:
            return 0
    return length


def conv_output_lengths(
    num_samples: torch.Tensor, conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS
) -> torch.Tensor:
    """Tensor version of `conv_output_length` (integer tensor in, integer tensor out)."""
    length = num_samples.long()
    for _, kernel, stride in conv_layers:
        length = torch.div(length - kernel, stride, rounding_mode="floor") + 1
    return length.clamp(min=0)


def receptive_field(conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS) -> tuple[int, int]:
    """(window, hop) in samples of one output frame: 400 and 320 for HuBERT's extractor."""
    window, hop = 1, 1
    for _, kernel, stride in conv_layers:
        window += (kernel - 1) * hop
        hop *= stride
    return window, hop
