"""Interrupted training: a real fairseq-hydra-train run killed with SIGKILL mid-epoch resumes from
`checkpoint_last.pt` and then trains exactly as an uninterrupted run with the same seed; a kill during a
checkpoint save never leaves `checkpoint_last.pt` unreadable (mamba_hubert.patches.atomic_checkpoint_copies).

What fairseq restores on resume: model, optimizer and lr-scheduler state, the epoch and the position in it
(`iterations_in_epoch`), and torch's RNG, which it re-seeds to `seed + num_updates` before every update. What
fairseq's HuBERT draws from unsaved generators, the plugin keys on saved state instead:
- span masks (fairseq: `np.random.default_rng(None)`, so not even two fresh runs with the same seed agreed) are
  drawn from (seed, update, utterance id) (mamba_hubert.models.seeded_masks.seeded_span_masks);
- random crops (fairseq: numpy's global generator, seeded once per process, so a resumed run cropped differently)
  are drawn from (seed, epoch, the batch's utterance ids) (SeededCropHubertDataset).
The runs below are the unpatched console script with the tiny config's defaults, random crops included.
"""

import hashlib
import itertools
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq.file_io import PathManager
from fairseq.tasks.hubert_pretraining import LabelEncoder

from mamba_hubert.models.mamba_hubert import MambaHubertModel
from mamba_hubert.models.param_count import kmeans_dictionary
from mamba_hubert.models.seeded_masks import seeded_span_masks
from mamba_hubert.patches.atomic_checkpoint_copies import AtomicCopyPathManager
from mamba_hubert.tasks.mamba_hubert_pretraining import SeededCropHubertDataset
from tests.conftest import tiny_model
from tests.fairseq_runs import (
    SMALL_MODEL,
    assert_same_parameters,
    follow,
    load_state,
    logged_records,
    make_tone_corpus,
    nth_line_with,
    pretrain_overrides,
    start,
    train_command,
)

# 12 training utterances, 2 per batch: 6 updates an epoch; each batch is cropped (at random) to its shortest.
REPRODUCIBLE = [*SMALL_MODEL, "common.log_format=json", "common.log_interval=1", "dataset.batch_size=2"]
COMPARED = ("loss", "loss_m_0", "loss_u_0", "gnorm", "lr", "wpb", "bsz")  # per-update values of train_inner


def spans(model: MambaHubertModel, ids: list[int], padding_mask: torch.Tensor | None = None,
          frames: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """(time mask (B, T), channel mask (B, C)) that `model.apply_mask` draws for a batch of utterance ids."""
    x = torch.ones(len(ids), frames, model.mask_emb.numel())
    x, time_mask = model.apply_mask(x, padding_mask, None)
    return time_mask, (x == 0).all(1)


def test_span_masks_follow_seed_update_and_utterances():
    model = tiny_model("mamba", mask_prob=0.5, mask_length=5, mask_channel_prob=0.25, mask_channel_length=4)
    wrapped = torch.nn.ModuleDict({"w2v_model": model})  # as inside hubert_ctc or a distributed wrapper

    def masks(seed: int, update: int, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        model.set_num_updates(update)
        with seeded_span_masks(wrapped, seed, torch.tensor(ids)):
            return spans(model, ids)

    time, channel = masks(1, 7, [3, 8])
    assert model.mask_key is None  # only inside the block
    assert time.any(1).all() and channel.any(1).all()
    assert not torch.equal(time[0], time[1]) and not torch.equal(channel[0], channel[1])
    np.random.seed(123)  # numpy's global generator plays no part
    again_time, again_channel = masks(1, 7, [3, 8])
    assert torch.equal(again_time, time) and torch.equal(again_channel, channel)  # e.g. in a resumed run
    assert not torch.equal(masks(1, 8, [3, 8])[0], time)  # fresh masks every update
    assert not torch.equal(masks(2, 7, [3, 8])[0], time)  # and for every run seed
    assert not torch.equal(masks(1, 7, [5, 6])[0], time)  # another rank's batch (other utterances)
    unseeded = [spans(model, [3, 8], frames=400)[0] for _ in range(2)]
    assert not torch.equal(*unseeded)  # outside the block: fairseq's fresh draws


def test_span_masks_never_cover_padding_nor_depend_on_it():
    model = tiny_model("mamba", mask_prob=0.5, mask_length=5)
    with seeded_span_masks(model, 1, torch.tensor([9])):
        alone, _ = spans(model, [9], frames=35)
        padded, _ = spans(model, [9], torch.arange(60)[None, :] >= 35)
    assert alone.sum() >= 5 and torch.equal(padded[:, :35], alone) and not padded[:, 35:].any()
    padding = torch.arange(60)[None, :] >= torch.tensor([60, 35])[:, None]
    with seeded_span_masks(model, 1, torch.tensor([4, 9])):
        batch, _ = spans(model, [4, 9], padding)
    assert not batch[padding].any() and batch[0].sum() == batch[1].sum()  # fairseq's equal mask counts per row


def crop_dataset(corpus: Path, seed: int) -> SeededCropHubertDataset:
    dictionary = kmeans_dictionary(5)
    return SeededCropHubertDataset(
        str(corpus / "train.tsv"), sample_rate=16000, label_paths=[str(corpus / "train.km")], label_rates=100.0,
        pad_list=[dictionary.pad()], eos_list=[dictionary.eos()], label_processors=[LabelEncoder(dictionary)],
        max_sample_size=8000, pad_audio=False, random_crop=True, seed=seed)


def test_random_crops_follow_seed_epoch_and_batch(corpus):
    def crops(dataset: SeededCropHubertDataset, ids: list[int]) -> torch.Tensor:
        return dataset.collater([dataset[i] for i in ids])["net_input"]["source"]

    dataset = crop_dataset(corpus, seed=1)
    first = crops(dataset, [0, 1, 2])
    assert first.shape == (3, 8000)
    for row, i in zip(first, (0, 1, 2)):  # each row is a contiguous stretch of its utterance
        wav = dataset.get_audio(i)
        start = int(torch.nonzero(wav == row[0])[0])
        assert torch.equal(wav[start : start + 8000], row)
    np.random.seed(123)  # fairseq's global generator no longer decides
    assert torch.equal(crops(dataset, [0, 1, 2]), first)
    assert torch.equal(crops(crop_dataset(corpus, seed=1), [0, 1, 2]), first)  # e.g. after a restart
    assert not torch.equal(crops(crop_dataset(corpus, seed=2), [0, 1, 2]), first)
    dataset.set_epoch(2)
    assert not torch.equal(crops(dataset, [0, 1, 2]), first)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(corpus, tmp_path):
    def overrides(save_dir: Path) -> list[str]:
        return pretrain_overrides(corpus, save_dir, *REPRODUCIBLE, "optimization.max_update=8",
                                  "checkpoint.save_interval_updates=2")

    command = train_command("pretrain/tiny_mamba", overrides(tmp_path / "whole"))
    whole = logged_records(follow(start(command, tmp_path / "whole"), tmp_path / "whole.log"), "train_inner")
    assert sorted(whole) == list(range(1, 9))

    save_dir = tmp_path / "killed"
    command = train_command("pretrain/tiny_mamba", overrides(save_dir))
    # Update 5 is logged after the save at update 4 and before the epoch's last update (6): mid-epoch, and ahead
    # of the last checkpoint, so the resumed run must redo update 5.
    first = follow(start(command, save_dir), tmp_path / "first.log",
                   kill_when=lambda line: "[train_inner]" in line and '"num_updates": "5"' in line)
    before_kill = logged_records(first, "train_inner")
    assert max(before_kill) == 5 and "done training" not in first
    last = load_state(save_dir / "checkpoint_last.pt")
    assert last["extra_state"]["train_iterator"]["iterations_in_epoch"] == 4  # a mid-epoch checkpoint

    second = follow(start(command, save_dir), tmp_path / "second.log")
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 1 @ 4 updates)" in second
    resumed = logged_records(second, "train_inner")
    assert sorted(resumed) == [5, 6, 7, 8]  # crosses into epoch 2 after resuming
    # Two fresh runs with one seed agree (updates 1-5), and the resumed run continues the uninterrupted one.
    for step, record in [*before_kill.items(), *resumed.items()]:
        for key in COMPARED:
            assert float(record[key]) == pytest.approx(float(whole[step][key]), abs=1e-3), (step, key)

    final, expected = load_state(save_dir / "checkpoint_last.pt"), load_state(tmp_path / "whole" / "checkpoint_last.pt")
    assert final["extra_state"]["train_iterator"] == expected["extra_state"]["train_iterator"]
    assert_same_parameters(final["model"], expected["model"])


def test_kills_during_saves_leave_a_loadable_checkpoint_last(corpus, tmp_path):
    """fairseq logs "Finished saving checkpoint" when the first file of a save is written and before it copies
    that file onto checkpoint_last.pt: a SIGKILL on that line lands in or next to the copy."""
    save_dir = tmp_path / "run"
    command = train_command("pretrain/tiny_mamba", pretrain_overrides(
        corpus, save_dir, *REPRODUCIBLE, "optimization.max_update=6", "checkpoint.save_interval_updates=1",
        "checkpoint.keep_interval_updates=1", "dataset.disable_validation=true"))
    last = save_dir / "checkpoint_last.pt"

    def killed_during_a_save(log_name: str) -> str:
        output = follow(start(command, tmp_path / "cwd"), tmp_path / log_name,
                        kill_when=nth_line_with("Finished saving checkpoint", 2))
        assert load_state(last)["optimizer_history"][-1]["num_updates"] >= 1
        return output

    killed_during_a_save("killed0.log")
    with open(last, "rb") as held:  # the surviving checkpoint_last, held open: it must never be rewritten in place
        held_digest = hashlib.sha256(held.read()).hexdigest()
        assert f"Loaded checkpoint {last}" in killed_during_a_save("killed1.log")  # resumed from what the kill left
        output = follow(start(command, tmp_path / "cwd"), tmp_path / "finish.log")
        assert f"Loaded checkpoint {last}" in output and "done training" in output
        assert load_state(last)["optimizer_history"][-1]["num_updates"] == 6
        held.seek(0)
        assert hashlib.sha256(held.read()).hexdigest() == held_digest  # replaced by a rename, never truncated
        assert os.fstat(held.fileno()).st_ino != os.stat(last).st_ino


def _copy_forever(copy: Callable[..., bool], sources: list[str], destination: str) -> None:
    for step in itertools.count():
        copy(sources[step % 2], destination, overwrite=True)


@pytest.mark.parametrize("path_manager, atomic", [(PathManager, False), (AtomicCopyPathManager, True)],
                         ids=["fairseq_copy", "atomic_copy"])
def test_sigkill_during_checkpoint_copies(tmp_path, path_manager, atomic):
    """A process copying checkpoints onto one file in a loop (what save_checkpoint does to checkpoint_last.pt)
    is SIGKILLed at random times: with fairseq's PathManager the destination is left torn (the control: these
    kills do land mid-copy); with AtomicCopyPathManager it always holds one complete source."""
    sources = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for size_mb, source in zip((16, 24), sources):
        source.write_bytes(os.urandom(size_mb << 20))
    complete = {hashlib.sha256(source.read_bytes()).hexdigest() for source in sources}
    destination = tmp_path / "checkpoint_last.pt"
    destination.write_bytes(sources[0].read_bytes())
    rng = random.Random(0)
    torn, interrupted = 0, 0
    for _ in range(10):
        process = multiprocessing.get_context("fork").Process(
            target=_copy_forever, args=(path_manager.copy, [str(s) for s in sources], str(destination)))
        process.start()
        time.sleep(rng.uniform(0.05, 0.25))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        torn += hashlib.sha256(destination.read_bytes()).hexdigest() not in complete
        tmp = Path(str(destination) + ".tmp")
        interrupted += tmp.exists()
        tmp.unlink(missing_ok=True)
    if atomic:
        assert torn == 0 and interrupted > 0  # kills hit the copy, yet the destination stayed whole
    else:
        assert torn > 0
