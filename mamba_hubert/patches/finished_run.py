"""Rerunning a finished run trains nothing (fairseq-fixed 0.12.3.1).

Rerunning the same command is how a fairseq run resumes, and so also what happens to a run that already reached
`optimization.max_update` (it ended, or was killed after its last save). fairseq's training loop checks the limit
only after an update: such a rerun loaded `checkpoint_last.pt`, took one update past the limit, validated and wrote
`checkpoint_last.pt` and `checkpoint_best.pt` again. `install()` wraps the loop's per-epoch `train` in
`fairseq_cli.train`: when the loaded update count is already at the limit it logs that the run is finished and
returns as fairseq's own stop does, before any update, validation or save. Runs below the limit, and runs without
one (`max_update` 0), go through fairseq's `train` unchanged. Tested in tests/test_resume.py.
"""

import functools
import logging

import fairseq_cli.train

logger = logging.getLogger(__name__)


def install() -> None:
    """Wraps fairseq_cli.train.train to return before training when max_update is reached; idempotent."""
    train = fairseq_cli.train.train
    if getattr(train, "stops_when_finished", False):
        return

    @functools.wraps(train)
    def train_unless_finished(cfg, trainer, task, epoch_itr):
        max_update, num_updates = cfg.optimization.max_update, trainer.get_num_updates()
        if 0 < max_update <= num_updates:
            logger.info(f"the run is already finished: the checkpoint it resumes from is at update {num_updates} and "
                        f"optimization.max_update={max_update}; nothing to train, no checkpoint written (raise "
                        "optimization.max_update to train on)")
            return [None], True  # (validation losses, stop), what fairseq's train returns when it stops
        return train(cfg, trainer, task, epoch_itr)

    train_unless_finished.stops_when_finished = True
    fairseq_cli.train.train = train_unless_finished
