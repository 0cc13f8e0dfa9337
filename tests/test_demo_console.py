"""The jobs' console (`mamba_hubert.demo.common.job_console`): a real fairseq training's log stays in its folder and
off the console unless `--verbose`; the console gets one line per finished stage, and the training's progress bar
follows the updates fairseq logs."""

import io
import logging
import re

import pytest
from tqdm import tqdm

from mamba_hubert.demo.common import job_console, logger, timed, tool_output
from mamba_hubert.demo.fairseq_tools import hydra_train
from tests.fairseq_runs import SMALL_MODEL, pretrain_overrides

UPDATES = 3


@pytest.fixture
def restored_logging():
    """job_console replaces the root logger's handlers and may lower the demo logger's level: undone afterwards."""
    root = logging.getLogger()
    handlers, root_level, demo_level = root.handlers[:], root.level, logger.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    logger.setLevel(demo_level)


def test_fairseq_log_reaches_the_console_only_when_verbose(tone_corpus, tmp_path, capfd, restored_logging):
    overrides = pretrain_overrides(tone_corpus, tmp_path / "ckpt", f"optimization.max_update={UPDATES}",
                                   "common.log_format=json", "common.log_interval=1", *SMALL_MODEL)
    progress = tqdm(total=UPDATES, file=io.StringIO(), disable=False)
    with job_console(verbose=False):
        text = timed({}, "pretrain tiny", hydra_train, "pretrain/tiny_conbimamba", overrides, tmp_path / "train.log",
                     tool_output("tiny", progress))
    console = capfd.readouterr().err
    train_inner = [line for line in text.splitlines() if "[train_inner]" in line]
    assert len(train_inner) == UPDATES and (tmp_path / "train.log").read_text() == text
    assert progress.n == UPDATES
    assert len(console.splitlines()) == 1 and re.search(r"\| == pretrain tiny: \d+ s$", console.strip()), console

    with job_console(verbose=True):
        take = tool_output("tiny")
        for line in text.splitlines():
            take(line)
    console = capfd.readouterr().err
    assert all(f"[tiny] {line}" in console for line in train_inner)


def test_lines_without_an_update_count_leave_the_bar_where_it_is():
    progress = tqdm(total=100, file=io.StringIO(), disable=False)
    take = tool_output("run", progress)
    take('[2026-12-07 16:50:02,787][train_inner][INFO] - {"epoch": 1, "loss": "515.529", "num_updates": "10"}')
    take("[2026-12-07 16:50:03,001][fairseq.trainer][INFO] - begin validation on valid subset")
    take('[2026-12-07 16:50:04,346][valid][INFO] - {"epoch": 1, "valid_loss": "494.441", "valid_num_updates": "20"}')
    assert progress.n == 10
