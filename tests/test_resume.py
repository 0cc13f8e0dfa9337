"""Interrupted training: a real fairseq-hydra-train run killed with SIGKILL mid-epoch resumes from
`checkpoint_last.pt` and then trains exactly as an uninterrupted run with the same seed; a kill during a
checkpoint save never leaves `checkpoint_last.pt` unreadable (mamba_hubert.patches.atomic_checkpoint_copies); a
finished run, rerun, trains nothing and leaves its checkpoints alone (mamba_hubert.patches.finished_run).

What fairseq restores on resume: model, optimizer and lr-scheduler state, the epoch and the position in it
(`iterations_in_epoch`), and torch's RNG, which it re-seeds to `seed + num_updates` before every update. What
fairseq's HuBERT draws from unsaved generators, the plugin keys on saved state instead:
- span masks (fairseq: `np.random.default_rng(None)`, so not even two fresh runs with the same seed agreed) are
  drawn from (seed, update, utterance id) (mamba_hubert.models.seeded_masks.seeded_draws);
- random crops (fairseq: numpy's global generator, seeded once per process, so a resumed run cropped differently)
  are drawn from (seed, epoch, the batch's utterance ids) (SeededCropHubertDataset), the epoch shared with the
  data loader's persistent workers, which fairseq keeps from epoch to epoch (mamba_hubert.tasks.seeded_crops);
- LayerDrop (fairseq: numpy's global generator) is drawn from (seed, update, forward within the update)
  (mamba_hubert.modules.encoder).
Augmentation (speed perturbation, noise) is drawn from (seed, epoch, utterance id), the epoch shared as the crops'
(mamba_hubert.tasks.augmentation).
The runs below are the unpatched console script with the tiny config's defaults, random crops included, killed in
a later epoch than the first, once with a data-loader worker that also adds noise and once with LayerDrop, and a
hubert_ctc fine-tune with speed perturbation and noise; each ends with the uninterrupted run's parameters, bit for bit.
"""

import hashlib
import itertools
import multiprocessing
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq.file_io import PathManager
from fairseq.tasks import FairseqTask
from fairseq.tasks.hubert_pretraining import LabelEncoder

from mamba_hubert.models.mamba_hubert import MambaHubertModel
from mamba_hubert.models.param_count import kmeans_dictionary
from mamba_hubert.models.seeded_masks import seeded_draws
from mamba_hubert.patches.atomic_checkpoint_copies import AtomicCopyPathManager
from mamba_hubert.tasks.mamba_hubert_pretraining import (
    MambaHubertPretrainingConfig,
    MambaHubertPretrainingTask,
    SeededCropHubertDataset,
)
from mamba_hubert.tasks.spectrum_reconstruction import SpectrumReconstructionTask, SpectrumReconstructionTaskConfig
from tests.conftest import tiny_model
from tests.fairseq_runs import (
    SMALL_MODEL,
    finetune_overrides,
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
        with seeded_draws(wrapped, seed, torch.tensor(ids)):
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
    with seeded_draws(model, 1, torch.tensor([9])):
        alone, _ = spans(model, [9], frames=35)
        padded, _ = spans(model, [9], torch.arange(60)[None, :] >= 35)
    assert alone.sum() >= 5 and torch.equal(padded[:, :35], alone) and not padded[:, 35:].any()
    padding = torch.arange(60)[None, :] >= torch.tensor([60, 35])[:, None]
    with seeded_draws(model, 1, torch.tensor([4, 9])):
        batch, _ = spans(model, [4, 9], padding)
    assert not batch[padding].any() and batch[0].sum() == batch[1].sum()  # fairseq's equal mask counts per row


def test_layerdrop_follows_seed_update_and_forward(layer_type, one_thread):
    """fairseq's encoder drops each layer in training with probability `encoder_layerdrop`, drawn from numpy's
    global generator, which no checkpoint holds. Inside the tasks' block the draws follow (seed, update, forward
    within the update), so a restart replays them and every rank drops the same layers, as fairseq's
    identically seeded generators made them (a sharded layer needs every rank)."""

    def dropped(seed: int, updates: range, forwards: int = 2, ids: tuple = (3, 8),
                training: bool = True) -> list[list[int]]:
        model = tiny_model(layer_type, encoder_layers=4, encoder_layerdrop=0.5).train(training)  # as after a restart
        ran = []
        for i, layer in enumerate(model.encoder.layers):
            layer.register_forward_pre_hook(lambda module, args, i=i: ran.append(i))
        x = torch.randn(len(ids), 20, model.encoder.embedding_dim)
        layers_dropped = []
        with seeded_draws(model, seed, torch.tensor(ids)):
            for update in updates:
                for _ in range(forwards):  # micro-batches of one update (optimization.update_freq)
                    model.set_num_updates(update)  # as fairseq's train_step, before each
                    ran.clear()
                    model.encoder(x)
                    layers_dropped.append(sorted(set(range(4)) - set(ran)))
        return layers_dropped

    first = dropped(1, range(7, 9))
    np.random.seed(123)  # numpy's global generator plays no part
    assert dropped(1, range(7, 9)) == first
    assert dropped(1, range(8, 9)) == first[2:]  # a run resumed at update 8
    assert dropped(1, range(7, 9), ids=(5, 6)) == first  # another rank's batch
    many = dropped(1, range(50))
    assert 0.4 < sum(map(len, many)) / (4 * len(many)) < 0.6  # p = 0.5, 400 draws
    assert any(many[i] != many[i + 1] for i in range(0, len(many), 2))  # fresh draws for each micro-batch
    assert len({tuple(layers) for layers in many}) > 5 and dropped(2, range(50)) != many
    assert not any(dropped(1, range(10), training=False))  # never in evaluation


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


def pretraining_task(corpus: Path) -> FairseqTask:
    return MambaHubertPretrainingTask(MambaHubertPretrainingConfig(
        data=str(corpus), label_dir=str(corpus), labels=["km"], label_rate=100.0, random_crop=True, seed=1))


def reconstruction_task(corpus: Path) -> FairseqTask:
    return SpectrumReconstructionTask(SpectrumReconstructionTaskConfig(data=str(corpus), seed=1))


def training_batches(task: FairseqTask, epochs: int, num_workers: int) -> dict[tuple, torch.Tensor]:
    """{(epoch, utterance ids): audio} of every training batch of epochs 1..`epochs`, fetched as fairseq's train
    loop fetches them: the task's batch iterator for each next epoch (one reused, with its data loader's persistent
    workers, where the dataset allows)."""
    task.load_dataset("train")
    batches = {}
    for epoch in range(1, epochs + 1):
        epoch_itr = task.get_batch_iterator(task.dataset("train"), max_sentences=2, seed=1, num_workers=num_workers,
                                            epoch=epoch)
        for batch in epoch_itr.next_epoch_itr(shuffle=True):
            batches[epoch, tuple(batch["id"].tolist())] = batch["net_input"]["source"]
        assert epoch_itr.epoch == epoch
    return batches


@pytest.mark.parametrize("make_task", [pretraining_task, reconstruction_task], ids=["pretraining", "reconstruction"])
def test_crops_in_data_loader_workers_follow_the_epoch(corpus, make_task):
    in_process = training_batches(make_task(corpus), epochs=2, num_workers=0)
    in_workers = training_batches(make_task(corpus), epochs=2, num_workers=2)
    assert in_workers.keys() == in_process.keys()
    for key, audio in in_process.items():
        assert torch.equal(in_workers[key], audio), key
    first_epoch = {ids: audio for (epoch, ids), audio in in_process.items() if epoch == 1}
    assert any(not torch.equal(audio, first_epoch[ids])  # the epoch does change the crops
               for (epoch, ids), audio in in_process.items() if epoch == 2 and ids in first_epoch)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


# 16 updates (epochs 1-3), saved every 4. The killed runs resume from the save at update 8, inside epoch 2: a resume
# inside epoch 1 hid the data-loader workers' stale epoch.
LONG_RUN = ["optimization.max_update=16", "checkpoint.save_interval_updates=4"]
# Two data-loader workers, which also add noise (lengths kept, so the frame-level labels allow
# it), drawn from (seed, epoch, utterance).
SETTINGS = {"workers": ["dataset.num_workers=2", "++task.noise_snr_db=[5,20]"],
            "layerdrop": ["model.encoder_layerdrop=0.3"]}
# Letter targets allow speed perturbation too.
AUGMENTED_CTC = ["common.log_format=json", "common.log_interval=1", "dataset.batch_size=2", *LONG_RUN,
                 "dataset.num_workers=1", "++task.speed_perturb=[0.9,1.0,1.1]", "++task.noise_snr_db=[5,20]"]
COMPARED_CTC = ("loss", "gnorm", "lr", "wpb", "bsz")


def run_command(corpus: Path, save_dir: Path, setting: str) -> list[str]:
    return train_command("pretrain/tiny_mamba", pretrain_overrides(
        corpus, save_dir, *REPRODUCIBLE, *LONG_RUN, *SETTINGS[setting]))


def finetune_command(corpus: Path, save_dir: Path, pretrained: Path) -> list[str]:
    return train_command("finetune/tiny_ctc", finetune_overrides(corpus, save_dir, pretrained, *AUGMENTED_CTC))


def run_whole(command: list[str], root: Path) -> tuple[Path, dict[int, dict]]:
    """(save dir, train_inner records) of an uninterrupted run of `command` (whose save dir is root/checkpoints)."""
    output = follow(start(command, root), root / "train.log")
    return root / "checkpoints", logged_records(output, "train_inner")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Callable[[str], tuple[Path, dict[int, dict]]]:
    """(save dir, train_inner records) of an uninterrupted run of a setting; each run once, shared by the tests."""
    runs = {}

    def run(setting: str) -> tuple[Path, dict[int, dict]]:
        if setting not in runs:
            root = tmp_path_factory.mktemp(f"uninterrupted_{setting}")
            runs[setting] = run_whole(run_command(corpus, root / "checkpoints", setting), root)
        return runs[setting]

    return run


def assert_killed_in_epoch_2_resumes_as(command: list[str], cwd: Path, save_dir: Path, whole_dir: Path,
                                        whole: dict[int, dict], compared: tuple[str, ...]) -> None:
    """Runs `command`, SIGKILLs it after update 9 (epoch 2), reruns it: every update logged and the final
    parameters, bit for bit, must be the uninterrupted run's (`whole_dir`, `whole`)."""
    assert sorted(whole) == list(range(1, 17))
    # Update 9 is logged after the save at update 8 and before the next save: the resumed run must redo it.
    first = follow(start(command, cwd), cwd / "first.log",
                   kill_when=lambda line: "[train_inner]" in line and '"num_updates": "9"' in line)
    before_kill = logged_records(first, "train_inner")
    assert max(before_kill) == 9 and "done training" not in first
    last = load_state(save_dir / "checkpoint_last.pt")
    assert last["extra_state"]["train_iterator"]["epoch"] == 2
    assert last["extra_state"]["train_iterator"]["iterations_in_epoch"] == 2  # mid-epoch

    second = follow(start(command, cwd), cwd / "second.log")
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 2 @ 8 updates)" in second
    resumed = logged_records(second, "train_inner")
    assert sorted(resumed) == list(range(9, 17))  # crosses into epoch 3 after resuming
    # Two fresh runs with one seed agree (updates 1-9), and the resumed run continues the uninterrupted one.
    for step, record in [*before_kill.items(), *resumed.items()]:
        for key in compared:
            assert float(record[key]) == pytest.approx(float(whole[step][key]), abs=1e-3), (step, key)

    final, expected = load_state(save_dir / "checkpoint_last.pt"), load_state(whole_dir / "checkpoint_last.pt")
    assert final["extra_state"]["train_iterator"] == expected["extra_state"]["train_iterator"]
    assert final["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        assert torch.equal(final["model"][name], value), name


@pytest.mark.parametrize("setting", SETTINGS)
def test_sigkill_in_a_later_epoch_then_resume_matches_uninterrupted_run(corpus, uninterrupted, tmp_path, setting):
    whole_dir, whole = uninterrupted(setting)
    save_dir = tmp_path / "checkpoints"
    assert_killed_in_epoch_2_resumes_as(run_command(corpus, save_dir, setting), tmp_path, save_dir, whole_dir, whole,
                                        COMPARED)


def test_sigkill_then_resume_of_a_speed_perturbed_noisy_ctc_finetune(corpus, uninterrupted, tmp_path):
    """hubert_ctc on letters with speed perturbation and noise, from the workers setting's pretrained model."""
    pretrained = uninterrupted("workers")[0] / "checkpoint_last.pt"
    whole_dir, whole = run_whole(finetune_command(corpus, tmp_path / "whole" / "checkpoints", pretrained),
                                 tmp_path / "whole")
    save_dir = tmp_path / "killed" / "checkpoints"
    assert_killed_in_epoch_2_resumes_as(finetune_command(corpus, save_dir, pretrained), tmp_path / "killed", save_dir,
                                        whole_dir, whole, COMPARED_CTC)


def test_rerunning_a_finished_run_trains_nothing_and_keeps_its_checkpoints(corpus, uninterrupted, tmp_path):
    """Rerunning the command is how a run resumes, so it is also what a user does to a run that ended (or was
    killed) after its last save: that must not take an update past optimization.max_update nor rewrite a file."""
    finished, _ = uninterrupted("layerdrop")
    save_dir = tmp_path / "checkpoints"
    shutil.copytree(finished, save_dir)

    def files() -> dict[str, tuple[int, str]]:
        return {path.name: (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
                for path in sorted(save_dir.iterdir())}

    before = files()
    assert {"checkpoint_last.pt", "checkpoint_best.pt"} <= before.keys()
    output = follow(start(run_command(corpus, save_dir, "layerdrop"), tmp_path), tmp_path / "rerun.log")
    assert f"Loaded checkpoint {save_dir / 'checkpoint_last.pt'} (epoch 3 @ 16 updates)" in output
    assert logged_records(output, "train_inner") == {}
    assert files() == before
    assert ("the run is already finished: the checkpoint it resumes from is at update 16 and "
            "optimization.max_update=16; nothing to train, no checkpoint written") in output


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
