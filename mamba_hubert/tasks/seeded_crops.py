"""Random crops that a resumed run replays. fairseq's audio datasets draw crop offsets from numpy's global generator,
seeded once per process and not saved in checkpoints, so a resumed run cropped differently from the run it
continues, and their losses diverged from the first update after resuming. With `SeededCrops` before a fairseq
audio dataset in the bases, a batch's crops follow from (seed, epoch, the batch's utterance ids).

The epoch is kept in shared memory: fairseq reuses one data loader, and its persistent workers, across epochs, and
those workers collate (so crop) with their own copies of the dataset, which `set_epoch` in the training process
never reached; a run resumed in a later epoch, whose workers started in that epoch, then cropped differently from
the run it continued."""

import numpy as np
import torch


class SeededCrops:
    """Mixin for a fairseq audio dataset: `crop_start(excess)` draws from the generator of the batch being collated."""

    def __init__(self, *args, seed: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self._epoch = torch.ones((), dtype=torch.long).share_memory_()  # one value for this process and its workers
        self.crop_rng = np.random.default_rng(seed)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        # before fairseq hands the workers the epoch's first batch (next_epoch_itr calls this first)
        self._epoch.fill_(epoch)

    def collater(self, samples: list[dict]) -> dict:
        # fairseq crops the batch's utterances in order, so one generator per batch fixes every crop.
        self.crop_rng = np.random.default_rng([self.seed, self.epoch, *(sample["id"] for sample in samples)])
        return super().collater(samples)

    def utterance_rng(self, index: int) -> np.random.Generator:
        """The generator of one utterance in this epoch (e.g. for its augmentation), whatever batch it is in."""
        # Its own spawn key: a one-utterance batch's crop generator has the same entropy (seed, epoch, id).
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index], spawn_key=(1,)))

    def crop_start(self, excess: int) -> int:
        """Where a crop that leaves out `excess` samples starts."""
        return int(self.crop_rng.integers(0, excess + 1))
