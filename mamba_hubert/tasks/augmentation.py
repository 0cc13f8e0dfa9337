"""Seeded on-the-fly augmentation of training audio: speed perturbation (soxr resampling) and additive Gaussian
noise at a random SNR, both drawn per utterance from a generator keyed by (seed, epoch, utterance id), so a resumed
run, and every data-loader worker, augments an utterance exactly as the uninterrupted run did.

The noise is white Gaussian noise from that generator: the project ships no noise corpus."""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soxr
import torch
import torch.nn.functional as F

from mamba_hubert.tasks.seeded_crops import SeededCrops


@dataclass(frozen=True)
class Augmentation:
    """What to draw for each utterance: a speed factor among `speed_factors` (none: unchanged) and an SNR in dB
    uniformly in `snr_db` = (low, high) (None: no noise)."""

    speed_factors: tuple[float, ...] = ()
    snr_db: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, speed_perturb: Sequence[float] | None,
                    noise_snr_db: Sequence[float] | None) -> "Augmentation":
        """From the task fields `speed_perturb` and `noise_snr_db` (empty or None: off); ValueError names the field."""
        factors = tuple(float(f) for f in speed_perturb or ())
        if not all(math.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"task.speed_perturb={list(factors)}: every speed factor must be a positive number "
                             f"(e.g. [0.9, 1.0, 1.1]; [] turns speed perturbation off)")
        snr = tuple(float(x) for x in noise_snr_db or ())
        if snr and (len(snr) != 2 or not all(map(math.isfinite, snr)) or snr[0] > snr[1]):
            raise ValueError(f"task.noise_snr_db={list(snr)}: expected [low, high] in dB with low <= high "
                             f"(e.g. [5, 20]; null or [] turns the noise off)")
        return cls(factors, (snr[0], snr[1]) if snr else None)

    @property
    def enabled(self) -> bool:
        return bool(self.speed_factors) or self.snr_db is not None

    @property
    def slowest(self) -> float:
        """The smallest speed factor (1.0 without speed perturbation): the one that lengthens an utterance most."""
        return min(self.speed_factors, default=1.0)

    def draw(self, rng: np.random.Generator) -> tuple[float, float | None]:
        """(speed factor, SNR in dB or None): the first draws `__call__` makes from `rng`."""
        factor = float(rng.choice(self.speed_factors)) if self.speed_factors else 1.0
        snr = float(rng.uniform(*self.snr_db)) if self.snr_db is not None else None
        return factor, snr

    def __call__(self, wav: torch.Tensor, rng: np.random.Generator, sample_rate: float) -> torch.Tensor:
        """`wav` (1-D float) played `factor` times faster (round(len / factor) samples), then with noise added."""
        factor, snr = self.draw(rng)
        audio = wav.numpy().astype(np.float32)
        if factor != 1.0:
            audio = soxr.resample(audio, sample_rate, sample_rate / factor)
        if snr is not None:
            audio = add_noise(audio, snr, rng)
        return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus Gaussian noise from `rng`, scaled so that the signal-to-noise power ratio is `snr_db` exactly."""
    signal_power = float(np.mean(np.square(audio, dtype=np.float64)))
    noise = rng.standard_normal(len(audio))
    noise_power = float(np.mean(np.square(noise)))
    if signal_power == 0.0 or noise_power == 0.0:
        return audio  # a silent utterance has no SNR to hold: any noise would be infinitely louder
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (audio + scale * noise).astype(np.float32)


class SeededAugmentation(SeededCrops):
    """Mixin for fairseq's HubertDataset, in place of `SeededCrops`: each item's audio is augmented by
    `augmentation` from the generator of (seed, epoch, its id), before the collater crops it."""

    def __init__(self, *args, augmentation: Augmentation | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation if augmentation is not None and augmentation.enabled else None

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        if self.augmentation is not None:
            wav = self.augmentation(sample["source"], self.utterance_rng(index), self.sample_rate)
            if self.normalize:  # fairseq normalised the clean audio; the model is to see normalised audio
                wav = F.layer_norm(wav, wav.shape)
            sample["source"] = wav
        return sample

    def size(self, index: int) -> int:
        # Batches are formed before the speed is drawn: counting each utterance at its slowest speed keeps every
        # batch within max_tokens (at the price of batches up to 1 / slowest times smaller).
        if self.augmentation is None or self.augmentation.slowest >= 1.0:
            return super().size(index)
        longest = math.ceil(self.sizes[index] / self.augmentation.slowest)
        return longest if self.pad_audio else min(longest, self.max_sample_size)
