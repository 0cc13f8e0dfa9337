"""Exact frame arithmetic of a wav2vec2/HuBERT convolutional feature extractor, and of the log-mel front end
(`extractor_mode=fbank`: a log-mel frame is a conv of kernel 400, stride 160 for this arithmetic).

fairseq derives the frame padding mask by splitting the sample mask into equal groups, which at some
lengths marks one frame too many; these helpers follow the conv kernel/stride arithmetic instead.
"""

from collections.abc import Sequence

import torch

# fairseq's default `conv_feature_layers`: "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
HUBERT_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


def conv_output_length(num_samples: int, conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS,
                       left_padding: int = 0) -> int:
    """Number of frames the extractor emits for `num_samples` input samples (0 if too short), with `left_padding`
    zeros put in front of them (`causal_left_padding`)."""
    length = num_samples + left_padding
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        if length <= 0:
            return 0
    return length


def conv_output_lengths(
    num_samples: torch.Tensor, conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS,
    left_padding: int = 0,
) -> torch.Tensor:
    """Tensor version of `conv_output_length` (integer tensor in, integer tensor out)."""
    length = num_samples.long() + left_padding
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


def causal_left_padding(conv_layers: Sequence[tuple[int, int, int]]) -> int:
    """Zero samples a causal front end puts before the audio: its frame k then ends where the first layer's frame
    (hop / first stride) x k ends, so it reads nothing later and gives as many frames as that stride would alone."""
    return receptive_field(conv_layers)[0] - conv_layers[0][1]


def fbank_layers(
    n_mels: int, width: int, sample_rate: int, label_rate: float
) -> tuple[tuple[int, int, int], ...]:
    """`extractor_mode=fbank` as (channels, kernel, stride) layers: log-mel frames (25 ms every 10 ms), then two
    convs over time of `width` channels whose strides take the 100 Hz log-mel frames down to `label_rate`."""
    window, hop = sample_rate * 25 // 1000, sample_rate // 100
    factor = 100 / label_rate if label_rate > 0 else 0.0
    if factor < 1 or factor != int(factor):
        raise ValueError(f"extractor_mode=fbank subsamples 100 Hz log-mel frames to the label rate, so 100 / "
                         f"label_rate must be a whole number; got label_rate={label_rate:g}")
    factor = int(factor)
    strides = (2, factor // 2) if factor % 2 == 0 else (factor, 1)
    return ((n_mels, window, hop),) + tuple((width, max(3, stride), stride) for stride in strides)
