"""Random crops that a resumed run replays. fairseq's audio datasets draw crop offsets from numpy's global generator,
seeded once per process and not saved in checkpoints, so a resumed run cropped differently from the run it
continues, and their losses diverged from the first update after resuming. With `SeededCrops` before a fairseq
audio dataset in the bases, a batch's crops follow from (seed, epoch, the batch's utterance ids)."""

import numpy as np


class SeededCrops:
    """Mixin for a fairseq audio dataset: `crop_start(excess)` draws from the generator of the batch being collated."""

    def __init__(self, *args, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch = 1
        self.crop_rng = np.random.default_rng(seed)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch = epoch

    def collater(self, samples: list[dict]) -> dict:
        # fairseq crops the batch's utterances in order, so one generator per batch fixes every crop.
        self.crop_rng = np.random.default_rng([self.seed, self.epoch, *(sample["id"] for sample in samples)])
        return super().collater(samples)

    def crop_start(self, excess: int) -> int:
        """Where a crop that leaves out `excess` samples starts."""
        return int(self.crop_rng.integers(0, excess + 1))
