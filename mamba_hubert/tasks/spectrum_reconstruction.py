"""`spectrum_reconstruction`: masked log-mel reconstruction on audio manifests (`{data}/{split}.tsv`, the same
manifests as the HuBERT task, no labels), for `mamba_spectrum_reconstruction` and the `spectrum_reconstruction`
criterion. The data are checked before training; crops and masks follow from (seed, epoch or update, utterance ids),
so a resumed run replays the one it continues."""

import sys
from dataclasses import dataclass, field

import torch
from fairseq.data import FileAudioDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from mamba_hubert.data.check import validate_or_raise
from mamba_hubert.models.seeded_masks import seeded_draws
from mamba_hubert.tasks.seeded_crops import SeededCrops


@dataclass
class SpectrumReconstructionTaskConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv manifests"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate"})
    max_sample_size: int = field(default=250000, metadata={"help": "crop longer utterances to this many samples"})
    min_sample_size: int = field(default=8000, metadata={"help": "skip utterances shorter than this"})
    check_data: bool = field(default=True, metadata={"help": "check manifests and audio headers on load"})
    seed: int = field(default=II("common.seed"), metadata={"help": "seeds random crops and masks"})


class SeededCropAudioDataset(SeededCrops, FileAudioDataset):
    """FileAudioDataset (each batch cropped to its shortest utterance) whose crops follow from (seed, epoch, the
    batch's utterance ids)."""

    def crop_to_max_size(self, t: torch.Tensor, target_size: int, dim: int = 0) -> torch.Tensor:
        excess = t.size(dim) - target_size
        return t if excess <= 0 else t.narrow(dim, self.crop_start(excess), target_size)


@register_task("spectrum_reconstruction", dataclass=SpectrumReconstructionTaskConfig)
class SpectrumReconstructionTask(FairseqTask):
    cfg: SpectrumReconstructionTaskConfig

    def load_dataset(self, split: str, **kwargs) -> None:
        if self.cfg.check_data:
            validate_or_raise(self.cfg.data, split, sample_rate=self.cfg.sample_rate,
                              min_samples=self.cfg.min_sample_size)
        self.datasets[split] = SeededCropAudioDataset(
            f"{self.cfg.data}/{split}.tsv", sample_rate=self.cfg.sample_rate,
            max_sample_size=self.cfg.max_sample_size, min_sample_size=self.cfg.min_sample_size, pad=False,
            seed=self.cfg.seed)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        with seeded_draws(model, self.cfg.seed, sample["id"]):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad)

    def valid_step(self, sample, model, criterion):
        with seeded_draws(model, self.cfg.seed, sample["id"]):
            return super().valid_step(sample, model, criterion)

    @property
    def source_dictionary(self) -> None:
        return None

    @property
    def target_dictionary(self) -> None:
        return None

    def max_positions(self) -> tuple[int, int]:
        return sys.maxsize, sys.maxsize
