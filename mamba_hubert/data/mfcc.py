"""MFCC + delta + delta-delta features (39 dims, 100 Hz) for HuBERT's first k-means iteration.

    mamba-hubert-mfcc --data DIR --split train --out FEAT_DIR [--nshard 1 --rank 0] [--sample-rate 16000]

The features are those of fairseq's examples/hubert/simple_kmeans/dump_mfcc_feature.py (torchaudio's Kaldi
MFCC with use_energy=False and no dither, then torchaudio's compute_deltas twice, concatenated as
[mfcc, delta, delta-delta]), computed with kaldi-native-fbank and numpy so that torchaudio is not needed.
The output is fairseq's shard format, read by learn_kmeans.py and dump_km_label.py:
FEAT_DIR/{split}_{rank}_{nshard}.npy holds the frames of every utterance of the shard, one after another
(float32, (frames, 39)), and .len the number of frames of each utterance, one per line.
"""

import argparse
import logging
import os
from collections.abc import Sequence

import kaldi_native_fbank as knf
import numpy as np
import soundfile as sf
from tqdm import tqdm

from mamba_hubert.command_line import add_shard_arguments, check_shard_arguments, one_line_errors, setup_logging

logger = logging.getLogger(__name__)

FRAME_MS, SHIFT_MS = 25, 10  # Kaldi's default window and hop


def num_frames(num_samples: int, sample_rate: int = 16000) -> int:
    """Frames Kaldi's MFCC emits for num_samples (snip_edges: whole windows only)."""
    window, shift = sample_rate * FRAME_MS // 1000, sample_rate * SHIFT_MS // 1000
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def compute_deltas(feats: np.ndarray, win_length: int = 5) -> np.ndarray:
    """torchaudio.functional.compute_deltas along time (axis 0): a regression over win_length frames,
    edge frames replicated."""
    n = (win_length - 1) // 2
    if len(feats) == 0:
        return feats.copy()
    padded = np.pad(feats, ((n, n), (0, 0)), mode="edge")
    steps = len(feats)
    delta = sum(k * (padded[n + k:n + k + steps] - padded[n - k:n - k + steps]) for k in range(1, n + 1))
    return (delta / (n * (n + 1) * (2 * n + 1) / 3)).astype(feats.dtype)


def mfcc_features(wav: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """(T, 39) float32: 13 Kaldi MFCCs (no energy, no dither) with their deltas and delta-deltas, 100 Hz.

    wav is mono float audio in [-1, 1], as soundfile reads it (no int16 scaling, like fairseq's dumper).
    """
    opts = knf.MfccOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = 0.0
    opts.use_energy = False
    mfcc = knf.OnlineMfcc(opts)
    mfcc.accept_waveform(sample_rate, np.ascontiguousarray(wav, dtype=np.float32))
    mfcc.input_finished()
    frames = [mfcc.get_frame(i) for i in range(mfcc.num_frames_ready)]
    static = np.array(frames, dtype=np.float32).reshape(len(frames), opts.num_ceps)
    delta = compute_deltas(static)
    return np.concatenate([static, delta, compute_deltas(delta)], axis=1)


def shard_range(total: int, nshard: int, rank: int) -> tuple[int, int]:
    """Lines [start, end) of shard `rank`: the same split as fairseq's simple_kmeans feature_utils."""
    if not 0 <= rank < nshard:
        raise ValueError(f"invalid rank/nshard {rank}/{nshard}")
    start, end = round(total / nshard * rank), round(total / nshard * (rank + 1))
    if start >= end:
        raise ValueError(f"shard {rank}/{nshard} of {total} utterances is empty; use fewer shards")
    return start, end


def read_manifest(tsv_path: str) -> tuple[str, list[tuple[str, int]]]:
    """(root, [(relative path, num_samples)]) of a fairseq audio manifest."""
    with open(tsv_path) as f:
        root = f.readline().rstrip("\n")
        entries = []
        for line in f:
            path, num_samples = line.rstrip("\n").split("\t")
            entries.append((path, int(num_samples)))
    return root, entries


def dump_mfcc(tsv_dir: str, split: str, feat_dir: str, nshard: int, rank: int, sample_rate: int = 16000) -> str:
    """Write the features of one shard of {tsv_dir}/{split}.tsv to feat_dir; returns the .npy path."""
    root, entries = read_manifest(os.path.join(tsv_dir, f"{split}.tsv"))
    start, end = shard_range(len(entries), nshard, rank)
    entries = entries[start:end]
    os.makedirs(feat_dir, exist_ok=True)
    stem = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    lengths = [num_frames(n, sample_rate) for _, n in entries]
    # Frame counts are known from the manifest, so the .npy is written in place without holding it in memory.
    out = np.lib.format.open_memmap(f"{stem}.npy", mode="w+", dtype=np.float32, shape=(sum(lengths), 39))
    offset = 0
    for (path, num_samples), length in tqdm(zip(entries, lengths), total=len(entries), desc=f"MFCC {split}",
                                            unit="utt", disable=None):
        wav, sr = sf.read(os.path.join(root, path), dtype="float32")
        if sr != sample_rate or wav.ndim != 1 or len(wav) != num_samples:
            raise ValueError(f"{path}: expected mono {sample_rate} Hz with {num_samples} samples (manifest), "
                             f"found {wav.shape} at {sr} Hz")
        feats = mfcc_features(wav, sample_rate)
        if len(feats) != length:
            raise RuntimeError(f"{path}: {len(feats)} MFCC frames, expected {length}")
        out[offset:offset + length] = feats
        offset += length
    out.flush()
    del out
    with open(f"{stem}.len", "w") as f:
        f.writelines(f"{length}\n" for length in lengths)
    return f"{stem}.npy"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-mfcc", description=__doc__.split("\n\n")[0])
    add_shard_arguments(parser)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    setup_logging()
    check_shard_arguments(parser, args)
    with one_line_errors(parser.prog):
        path = dump_mfcc(args.data, args.split, args.out, args.nshard, args.rank, args.sample_rate)
    logger.info("%s shard %d/%d -> %s", args.split, args.rank, args.nshard, path)


if __name__ == "__main__":
    main()
