"""Seeded on-the-fly augmentation of the training split (mamba_hubert.tasks.augmentation): speed perturbation and
additive noise drawn per utterance from (seed, epoch, utterance id), lengths and SNRs as drawn, frame-level labels
refused with speed perturbation, other splits untouched, batches within max_tokens. Resuming a run with noise
exactly: tests/test_resume.py."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_hubert.tasks.augmentation import Augmentation
from mamba_hubert.tasks.mamba_hubert_pretraining import MambaHubertPretrainingConfig, MambaHubertPretrainingTask
from tests.fairseq_runs import make_tone_corpus

SPEEDS = [0.9, 1.0, 1.1]
SNR = [5.0, 20.0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


def letters_task(corpus: Path, seed: int = 1, **fields) -> MambaHubertPretrainingTask:
    """A hubert_ctc fine-tuning task (letter targets: sequence labels, so speed perturbation is allowed)."""
    return MambaHubertPretrainingTask(MambaHubertPretrainingConfig(
        data=str(corpus), label_dir=str(corpus), labels=["ltr"], fine_tuning=True, single_target=True,
        pad_audio=True, seed=seed, **{"normalize": False, **fields}))


def training_split(task: MambaHubertPretrainingTask, split: str = "train"):
    task.load_dataset(split, data_selector=None)  # as fairseq's trainer loads its training split
    return task.dataset(split)


def test_same_seed_epoch_and_utterance_give_the_same_audio(corpus):
    dataset = training_split(letters_task(corpus, speed_perturb=SPEEDS, noise_snr_db=SNR))
    first = [dataset[i]["source"] for i in range(6)]
    assert any(not torch.equal(wav, dataset.get_audio(i)) for i, wav in enumerate(first))
    np.random.seed(123)  # numpy's global generator plays no part
    torch.manual_seed(123)
    for i in reversed(range(6)):  # nor does the order in which the items are fetched
        assert torch.equal(dataset[i]["source"], first[i])
    restarted = training_split(letters_task(corpus, speed_perturb=SPEEDS, noise_snr_db=SNR))
    assert all(torch.equal(restarted[i]["source"], first[i]) for i in range(6))
    other_seed = training_split(letters_task(corpus, seed=2, speed_perturb=SPEEDS, noise_snr_db=SNR))
    assert all(not torch.equal(other_seed[i]["source"], first[i]) for i in range(6))
    dataset.set_epoch(2)
    assert all(not torch.equal(dataset[i]["source"], first[i]) for i in range(6))
    dataset.set_epoch(1)
    assert all(torch.equal(dataset[i]["source"], first[i]) for i in range(6))


def test_speed_perturbation_resamples_to_the_drawn_length(corpus):
    dataset = training_split(letters_task(corpus, speed_perturb=SPEEDS))
    drawn = set()
    for i in range(len(dataset)):
        factor, snr = dataset.augmentation.draw(dataset.utterance_rng(i))
        drawn.add(factor)
        n = len(dataset.get_audio(i))
        assert snr is None and abs(len(dataset[i]["source"]) - round(n / factor)) <= 1, (i, factor)
    assert drawn == set(SPEEDS)
    wav = torch.from_numpy(np.sin(np.arange(16000) * 0.05).astype(np.float32))
    for factor in (0.8, 0.9, 1.1, 1.25):
        faster = Augmentation((factor,))(wav, np.random.default_rng(0), 16000)
        assert abs(len(faster) - round(16000 / factor)) <= 1
        # the tone's period scales by 1 / factor: count zero crossings
        crossings = int((np.diff(np.sign(faster.numpy())) != 0).sum())
        assert crossings == pytest.approx((np.diff(np.sign(wav.numpy())) != 0).sum(), rel=0.02)
        assert faster[200:-200].abs().max() == pytest.approx(1.0, abs=0.02)  # the edges ring: the tone starts abruptly


def test_noise_has_the_drawn_snr(corpus):
    dataset = training_split(letters_task(corpus, noise_snr_db=SNR))
    snrs = []
    for i in range(len(dataset)):
        factor, snr = dataset.augmentation.draw(dataset.utterance_rng(i))
        clean = dataset.get_audio(i).double()
        noise = dataset[i]["source"].double() - clean
        measured = 10 * math.log10(clean.square().mean() / noise.square().mean())
        assert factor == 1.0 and SNR[0] <= snr <= SNR[1]
        assert measured == pytest.approx(snr, abs=0.1), i
        snrs.append(snr)
    assert max(snrs) - min(snrs) > 3  # drawn per utterance


def test_normalized_audio_is_normalized_after_the_noise(corpus):
    dataset = training_split(letters_task(corpus, noise_snr_db=[0.0, 0.0], normalize=True))
    wav = dataset[0]["source"]
    assert float(wav.mean()) == pytest.approx(0.0, abs=1e-4) and float(wav.std()) == pytest.approx(1.0, abs=1e-3)


def test_frame_level_labels_refuse_speed_perturbation(corpus):
    with pytest.raises(ValueError, match=r"task.speed_perturb=\[0.9, 1.1\] changes the utterances' lengths, so the "
                                         r"frame-level labels \(task.label_rate=100.0\)"):
        MambaHubertPretrainingTask(MambaHubertPretrainingConfig(
            data=str(corpus), label_dir=str(corpus), labels=["km"], label_rate=100.0, seed=1,
            speed_perturb=[0.9, 1.1]))
    # noise keeps every length: allowed with frame-level labels
    task = MambaHubertPretrainingTask(MambaHubertPretrainingConfig(
        data=str(corpus), label_dir=str(corpus), labels=["km"], label_rate=100.0, seed=1, noise_snr_db=SNR))
    dataset = training_split(task)
    assert not torch.equal(dataset[0]["source"], dataset.get_audio(0))
    assert len(dataset[0]["source"]) == len(dataset.get_audio(0))


@pytest.mark.parametrize("fields, message", [
    ({"speed_perturb": [0.9, 0.0]}, r"task.speed_perturb=\[0.9, 0.0\]: every speed factor must be a positive"),
    ({"noise_snr_db": [20.0, 5.0]}, r"task.noise_snr_db=\[20.0, 5.0\]: expected \[low, high\] in dB with low <= high"),
    ({"noise_snr_db": [10.0]}, r"task.noise_snr_db=\[10.0\]: expected \[low, high\]"),
])
def test_bad_settings_name_the_field(corpus, fields, message):
    with pytest.raises(ValueError, match=message):
        letters_task(corpus, **fields)


def test_only_the_training_split_is_augmented(corpus):
    task = letters_task(corpus, speed_perturb=SPEEDS, noise_snr_db=SNR)
    for split in ("valid", "train"):  # as fairseq-train loads validation, and fairseq-generate any split
        task.load_dataset(split)
        dataset = task.dataset(split)
        assert dataset.augmentation is None
        assert all(torch.equal(dataset[i]["source"], dataset.get_audio(i)) for i in range(len(dataset)))
    assert training_split(task).augmentation is not None


def test_batches_by_size_stay_within_max_tokens_after_speed_perturbation(corpus):
    dataset = training_split(letters_task(corpus, speed_perturb=[0.9]))
    assert all(dataset.size(i) == math.ceil(dataset.sizes[i] / 0.9) for i in range(len(dataset)))
    max_tokens = 50000
    batches = dataset.batch_by_size(dataset.ordered_indices(), max_tokens=max_tokens)
    assert any(len(batch) > 1 for batch in batches)
    for batch in batches:
        source = dataset.collater([dataset[i] for i in batch])["net_input"]["source"]
        assert source.numel() <= max_tokens, batch.tolist()
    # without the allowance fairseq fills a batch by the manifest sizes, which the slowed audio passes
    plain = training_split(letters_task(corpus))
    over = [batch for batch in plain.batch_by_size(plain.ordered_indices(), max_tokens=max_tokens)
            if dataset.collater([dataset[i] for i in batch])["net_input"]["source"].numel() > max_tokens]
    assert over
