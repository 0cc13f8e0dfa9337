"""MFCC features in fairseq's shard format, and fairseq's own k-means scripts turning them into labels that
fairseq's HubertDataset accepts. The corpus-based tests need the Debian TTS packages (skipped without them)."""

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_hubert.data import corpus, kmeans, mfcc

SPLITS = ("train", "valid", "test")
N_CLUSTERS = 8
MISSING = corpus.missing_packages()


def kaldi_mfcc_reference(wav: np.ndarray) -> np.ndarray:
    """Kaldi's MFCC at 16 kHz written out from its definition (povey window, 23 mel bins, DCT, lifter 22)."""
    n_frames = 1 + (len(wav) - 400) // 160
    frames = np.stack([wav[160 * i:160 * i + 400] for i in range(n_frames)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    emphasised = frames.copy()
    emphasised[:, 1:] -= 0.97 * frames[:, :-1]
    emphasised[:, 0] -= 0.97 * frames[:, 0]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(emphasised * window, 512)) ** 2

    def mel(f):
        return 1127 * np.log(1 + f / 700)

    low, step = mel(20), (mel(8000) - mel(20)) / 24
    bins = mel(np.arange(256) * 16000 / 512)
    banks = np.zeros((23, 257))
    for b in range(23):
        left, centre, right = low + b * step, low + (b + 1) * step, low + (b + 2) * step
        banks[b, :256] = np.maximum(0, np.minimum((bins - left) / (centre - left), (right - bins) / (right - centre)))
    log_mel = np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))
    k = np.arange(23)
    dct = np.sqrt(2 / 23) * np.cos(np.pi / 23 * (k[None, :] + 0.5) * k[:, None])
    dct[0] = np.sqrt(1 / 23)
    return (log_mel @ dct.T)[:, :13] * (1 + 11 * np.sin(np.pi * np.arange(13) / 22))


def deltas_reference(x: np.ndarray) -> np.ndarray:
    """torchaudio's compute_deltas (window 5) from its definition: edges replicated, sum_n n (x[t+n] - x[t-n]) / 10."""
    padded = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])
    return sum(n * (padded[2 + n : len(x) + 2 + n] - padded[2 - n : len(x) + 2 - n]) for n in (1, 2)) / 10


def test_mfcc_is_kaldi_mfcc_at_100hz_with_deltas():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(16000)).astype(np.float32)
    wav[4000:6000] = 0.0  # digital silence: the log floor, and no dither noise
    feats = mfcc.mfcc_features(wav)
    assert feats.shape == (98, 39) == (mfcc.num_frames(16000), 39) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:, :13], kaldi_mfcc_reference(wav), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(feats[:, 13:26], deltas_reference(feats[:, :13]), atol=1e-5)
    np.testing.assert_allclose(feats[:, 26:], deltas_reference(feats[:, 13:26]), atol=1e-5)
    np.testing.assert_array_equal(feats, mfcc.mfcc_features(wav))  # no dither


def test_deltas_follow_torchaudio_compute_deltas():
    ramp = np.arange(8, dtype=np.float32)[:, None] * np.array([[1.0, -2.0]], dtype=np.float32)
    delta = mfcc.compute_deltas(ramp)
    np.testing.assert_allclose(delta[2:-2], np.tile([[1.0, -2.0]], (4, 1)), atol=1e-6)  # the slope inside
    # Edges replicate the end frame: d0 = (1 * (x1 - x0) + 2 * (x2 - x0)) / 10 = 0.5 (first column).
    assert delta[0, 0] == pytest.approx(0.5) and delta[-1, 0] == pytest.approx(0.5)
    assert mfcc.compute_deltas(np.zeros((0, 13), np.float32)).shape == (0, 13)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> dict:
    """A ~1 minute corpus, its MFCC shards (CLI for train, one and two shards) and k-means labels."""
    if MISSING:
        pytest.skip(f"TTS packages not installed: {' '.join(MISSING)}")
    root = tmp_path_factory.mktemp("features")
    corpus_dir, feat_dir, label_dir = root / "corpus", root / "feat", root / "labels"
    corpus.build_corpus(str(corpus_dir), minutes=1.0, jobs=2, seed=3, log=lambda _: None)
    cli = [sys.executable, "-m", "mamba_hubert.data.mfcc", "--data", str(corpus_dir), "--split", "train", "--out",
           str(feat_dir)]
    subprocess.run(cli, check=True, cwd=Path(__file__).resolve().parents[1])
    for split in ("valid", "test"):
        mfcc.dump_mfcc(str(corpus_dir), split, str(feat_dir), 1, 0)
    for rank in range(2):
        mfcc.dump_mfcc(str(corpus_dir), "train", str(root / "feat2"), 2, rank)
    kmeans.run_kmeans(str(feat_dir), str(label_dir), SPLITS, N_CLUSTERS, n_init=1, max_iter=5)
    return {"corpus": corpus_dir, "feat": feat_dir, "feat2": root / "feat2", "labels": label_dir}


def _load_shard(feat_dir: Path, split: str, rank: int, nshard: int) -> list:
    """Per-utterance features, read the way fairseq's simple_kmeans scripts read a shard."""
    lengths = [int(line) for line in (feat_dir / f"{split}_{rank}_{nshard}.len").read_text().split()]
    feats = np.load(feat_dir / f"{split}_{rank}_{nshard}.npy", mmap_mode="r")
    assert feats.dtype == np.float32 and feats.shape == (sum(lengths), 39)
    offsets = np.cumsum([0] + lengths)
    return [np.asarray(feats[a:b]) for a, b in itertools.pairwise(offsets)]


def test_shards_hold_each_utterances_features(data):
    root, entries = mfcc.read_manifest(str(data["corpus"] / "train.tsv"))
    utterances = _load_shard(data["feat"], "train", 0, 1)
    assert len(utterances) == len(entries)
    for (path, num_samples), feats in zip(entries, utterances):
        assert len(feats) == mfcc.num_frames(num_samples) == 1 + (num_samples - 400) // 160  # 100 Hz
        np.testing.assert_array_equal(feats, mfcc.mfcc_features(sf.read(Path(root) / path, dtype="float32")[0]))
    two_shards = _load_shard(data["feat2"], "train", 0, 2) + _load_shard(data["feat2"], "train", 1, 2)
    assert len(two_shards) == len(utterances)
    assert all(np.array_equal(a, b) for a, b in zip(two_shards, utterances))


def test_kmeans_labels_match_feature_frames(data):
    assert (data["labels"] / "dict.km.txt").read_text() == "".join(f"{i} 1\n" for i in range(N_CLUSTERS))
    used = set()
    for split in SPLITS:
        lines = (data["labels"] / f"{split}.km").read_text().splitlines()
        frames = [len(f) for f in _load_shard(data["feat"], split, 0, 1)]
        assert [len(line.split()) for line in lines] == frames
        used |= {int(x) for line in lines for x in line.split()}
    assert used <= set(range(N_CLUSTERS)) and len(used) > 1
    assert not list(data["labels"].glob("*_0_1.km"))  # shards merged away


def test_hubert_dataset_accepts_the_labels(data, caplog):
    from fairseq.data import Dictionary
    from fairseq.data.audio.hubert_dataset import HubertDataset
    from fairseq.tasks.hubert_pretraining import LabelEncoder

    dictionary = Dictionary.load(str(data["labels"] / "dict.km.txt"))
    for split in SPLITS:
        with caplog.at_level(logging.WARNING):
            dataset = HubertDataset(
                manifest_path=str(data["corpus"] / f"{split}.tsv"), sample_rate=16000,
                label_paths=[str(data["labels"] / f"{split}.km")], label_rates=[100], pad_list=[dictionary.pad()],
                eos_list=[dictionary.eos()], label_processors=[LabelEncoder(dictionary)], shuffle=False,
            )
        assert "differ too much" not in caplog.text
        item = dataset[0]
        assert len(item["label_list"][0]) == mfcc.num_frames(len(item["source"]))
        assert (item["label_list"][0] != dictionary.unk()).all()
        batch = dataset.collater([dataset[i] for i in range(min(2, len(dataset)))])
        assert batch["target_list"][0].shape[1] == batch["target_lengths_list"][0].max()


def test_labels_subsampled_to_50hz_fit_a_50hz_fbank_model(data, tmp_path, caplog):
    """The demo's --front-end fbank labels: every other 100 Hz label, one per frame of the log-mel front end at
    label_rate 50, accepted by fairseq's dataset at that rate."""
    import torch
    from fairseq.data import Dictionary
    from fairseq.data.audio.hubert_dataset import HubertDataset
    from fairseq.tasks.hubert_pretraining import LabelEncoder

    from tests.conftest import tiny_model

    kmeans.subsample_labels(str(data["labels"]), str(tmp_path), SPLITS, 2)
    assert (tmp_path / "dict.km.txt").read_text() == (data["labels"] / "dict.km.txt").read_text()
    model = tiny_model("mamba", extractor_mode="fbank").eval()  # label_rate 50
    dictionary = Dictionary.load(str(tmp_path / "dict.km.txt"))
    for split in SPLITS:
        full = (data["labels"] / f"{split}.km").read_text().splitlines()
        half = (tmp_path / f"{split}.km").read_text().splitlines()
        assert [line.split() for line in half] == [line.split()[::2] for line in full]
        with caplog.at_level(logging.WARNING):
            dataset = HubertDataset(
                manifest_path=str(data["corpus"] / f"{split}.tsv"), sample_rate=16000,
                label_paths=[str(tmp_path / f"{split}.km")], label_rates=[50], pad_list=[dictionary.pad()],
                eos_list=[dictionary.eos()], label_processors=[LabelEncoder(dictionary)], shuffle=False,
            )
        assert "differ too much" not in caplog.text
        item = dataset[0]
        with torch.no_grad():
            frames = model.extract_features(item["source"][None].float())[0].shape[1]
        assert abs(len(item["label_list"][0]) - frames) <= 1
