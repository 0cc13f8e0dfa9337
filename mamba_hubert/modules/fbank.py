"""Log-mel filterbank features computed from the waveform inside the model, with torch (differentiable, on any
device, no torchaudio).

The arithmetic is Kaldi's fbank (what kaldi-native-fbank computes) with a Hann window and without dither,
pre-emphasis or DC removal: frames of `win_length` samples every `hop_length` (no centring, so a frame exists only
where its whole window does, and a frame's value depends on its window alone: exact under right padding), a
zero-padded FFT of the next power of two, the power spectrum, triangular filters equally spaced on the mel scale
1127 ln(1 + f / 700) between `low_freq` and the Nyquist frequency, and the log with a floor.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filter weights over the FFT bins (the Nyquist bin has weight 0)."""

    def mel(freq: torch.Tensor | float) -> torch.Tensor:
        return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)

    bins = torch.arange(n_fft // 2, dtype=torch.float64) * sample_rate / n_fft
    low, high = mel(low_freq), mel(high_freq)
    step = (high - low) / (n_mels + 1)
    left = low + step * torch.arange(n_mels, dtype=torch.float64)
    center, right = left + step, left + 2 * step
    bin_mel = mel(bins)[:, None]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    weights = torch.where(bin_mel <= center, rising, falling)
    weights = torch.where((bin_mel > left) & (bin_mel < right), weights, torch.zeros(()))
    return torch.cat([weights, torch.zeros(1, n_mels, dtype=torch.float64)]).float()


class LogMelFilterbank(nn.Module):
    """(batch, samples) waveform -> (batch, frames, n_mels) log-mel energies."""

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, win_length: int = 400, hop_length: int = 160,
                 low_freq: float = 20.0) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_fft = 1 << math.ceil(math.log2(win_length))
        self.floor = torch.finfo(torch.float32).eps
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(win_length, dtype=torch.float64) / (win_length - 1))
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(n_mels, self.n_fft, sample_rate, low_freq, sample_rate / 2),
                             persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.shape[-1] < self.win_length:
            return wave.new_zeros(wave.shape[0], 0, self.n_mels)
        frames = wave.float().unfold(-1, self.win_length, self.hop_length) * self.window
        power = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)
        return torch.log((power @ self.mel_banks).clamp_min(self.floor))

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames of `num_samples` samples (0 when shorter than one window)."""
        return (torch.div(num_samples - self.win_length, self.hop_length, rounding_mode="floor") + 1).clamp(min=0)


class FbankFeatureExtractor(nn.Module):
    """`extractor_mode=fbank`: (batch, samples) waveform -> (batch, channels, frames), as fairseq's
    ConvFeatureExtractionModel. Log-mel frames, then per conv layer Conv1d over time -> LayerNorm over channels ->
    GELU. `layers` (`frames.fbank_layers`): (n_mels, window, hop) of the log-mel, then (channels, kernel,
    stride) per conv. The convs are unpadded, so a frame reads its window of samples only; the model puts the
    causal left padding (`frames.causal_left_padding`) in front of the audio."""

    def __init__(self, layers: Sequence[tuple[int, int, int]], sample_rate: int = 16000, conv_bias: bool = False
                 ) -> None:
        super().__init__()
        (n_mels, window, hop), *convs = layers
        self.fbank = LogMelFilterbank(n_mels, sample_rate, window, hop)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels_in = n_mels
        for channels, kernel, stride in convs:
            conv = nn.Conv1d(channels_in, channels, kernel, stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)  # as fairseq's conv extractor
            self.convs.append(conv)
            self.norms.append(nn.LayerNorm(channels))
            channels_in = channels

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.fbank(wave).transpose(1, 2)
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x).transpose(1, 2)).transpose(1, 2))
        return x
