"""Masks and LayerDrop that a resumed run replays: drawn from (run seed, update count, the batch's utterance ids) and
(run seed, update count, forward within the update).

fairseq's HuBERT draws its span masks from OS entropy on every forward, so two runs with the same seed differ from
their first update and a resumed run cannot replay the one it continues. Models with the `SeededMasking` mixin draw
theirs from `mask_key` (set by `seeded_draws` around every train and valid step of the plugin's tasks) and their
update count. Keyed by utterance rather than by rank and batch position: ranks hold different utterances, so they
never share masks, and a batch gets the same masks on whichever rank it lands; masks still change every update.
LayerDrop, which fairseq draws from numpy's unsaved global generator, follows `MambaEncoder.layerdrop_seed`, set in
the same block (`modules.encoder`).
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mamba_hubert.modules.encoder import MambaEncoder
from mamba_hubert.modules.side_channel import attribute_during


class SeededMasking:
    """Mixin for a fairseq model: `mask_key` is (seed, utterance ids) inside `seeded_draws`, else None."""

    mask_key: tuple[int, torch.Tensor] | None = None
    num_updates: int = 0

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates  # fairseq calls this before every update's forward; it keys the masks


@contextmanager
def seeded_draws(model: torch.nn.Module, seed: int, utterance_ids: torch.Tensor) -> Iterator[None]:
    """Within this block, every SeededMasking model in `model` (bare, inside fairseq's hubert_ctc, or wrapped for
    distributed training) draws masks for the batch whose row i is utterance `utterance_ids[i]` from
    (seed, its update count, utterance_ids), and every MambaEncoder in it draws LayerDrop from (seed, its update
    count, its forwards in the update)."""
    models = [module for module in model.modules() if isinstance(module, SeededMasking)]
    encoders = [module for module in model.modules() if isinstance(module, MambaEncoder)]
    with attribute_during(models, "mask_key", (seed, utterance_ids.cpu())), \
            attribute_during(encoders, "layerdrop_seed", seed):
        yield
