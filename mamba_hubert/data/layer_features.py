"""Iteration-2 features: one encoder layer's output of a trained checkpoint, in the shard format of
fairseq's simple_kmeans (`{split}_{rank}_{nshard}.npy` + `.len`), ready for mamba_hubert.data.kmeans.

    python -m mamba_hubert.data.layer_features CKPT TSV_DIR SPLIT LAYER FEAT_DIR NSHARD RANK
"""

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from fairseq import checkpoint_utils

import mamba_hubert  # noqa: F401  (registers the model and the checkpoint allow-list)
from mamba_hubert.data.mfcc import read_manifest, shard_range


def load_encoder_model(checkpoint: str) -> torch.nn.Module:
    """A pretraining checkpoint's model (mamba_hubert or fairseq's hubert), in eval mode on CPU."""
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    return models[0].eval()


@torch.no_grad()
def layer_features(model: torch.nn.Module, wav: np.ndarray, layer: int) -> np.ndarray:
    """(frames, dim) output of encoder layer `layer` (1-based), as fairseq's dump_hubert_feature.py takes it."""
    source = torch.from_numpy(wav).float().unsqueeze(0)
    features, _ = model.extract_features(source, padding_mask=None, mask=False, output_layer=layer)
    return features.squeeze(0).numpy()


def dump_layer_features(checkpoint: str, tsv_dir: str, split: str, layer: int, feat_dir: str, nshard: int,
                        rank: int) -> str:
    """Writes one shard of {tsv_dir}/{split}.tsv; returns the .npy path."""
    root, entries = read_manifest(os.path.join(tsv_dir, f"{split}.tsv"))
    start, end = shard_range(len(entries), nshard, rank)
    model = load_encoder_model(checkpoint)
    feats = []
    for path, _ in entries[start:end]:
        wav, _ = sf.read(os.path.join(root, path), dtype="float32")
        feats.append(layer_features(model, wav, layer))
    os.makedirs(feat_dir, exist_ok=True)
    stem = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    np.save(f"{stem}.npy", np.concatenate(feats).astype(np.float32))
    with open(f"{stem}.len", "w") as f:
        f.writelines(f"{len(x)}\n" for x in feats)
    return f"{stem}.npy"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("tsv_dir")
    parser.add_argument("split")
    parser.add_argument("layer", type=int, help="1-based encoder layer")
    parser.add_argument("feat_dir")
    parser.add_argument("nshard", type=int)
    parser.add_argument("rank", type=int)
    args = parser.parse_args(argv)
    path = dump_layer_features(args.checkpoint, args.tsv_dir, args.split, args.layer, args.feat_dir, args.nshard,
                               args.rank)
    print(f"[layer_features] {args.split} shard {args.rank}/{args.nshard} layer {args.layer} -> {path}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
