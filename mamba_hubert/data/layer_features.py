"""Iteration-2 features: one encoder layer's output of a trained checkpoint, in the shard format of
fairseq's simple_kmeans (`{split}_{rank}_{nshard}.npy` + `.len`), ready for mamba_hubert.data.kmeans.

    mamba-hubert-layer-features --checkpoint CKPT --data DIR --split train --layer 6 --out FEAT_DIR [--nshard --rank]
"""

import argparse
import logging
import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from fairseq import checkpoint_utils
from tqdm import tqdm

import mamba_hubert  # noqa: F401  (registers the model and the checkpoint allow-list)
from mamba_hubert.command_line import (
    UsageError,
    add_shard_arguments,
    check_shard_arguments,
    one_line_errors,
    setup_logging,
)
from mamba_hubert.data.mfcc import read_manifest, shard_range

logger = logging.getLogger(__name__)


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
    layers = len(model.encoder.layers)
    if not 1 <= layer <= layers:
        raise UsageError(f"layer {layer}: {checkpoint} has encoder layers 1 .. {layers}")
    feats = []
    for path, _ in tqdm(entries[start:end], desc=f"layer {layer} features, {split}", unit="utt", disable=None):
        wav, _ = sf.read(os.path.join(root, path), dtype="float32")
        feats.append(layer_features(model, wav, layer))
    os.makedirs(feat_dir, exist_ok=True)
    stem = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    np.save(f"{stem}.npy", np.concatenate(feats).astype(np.float32))
    with open(f"{stem}.len", "w") as f:
        f.writelines(f"{len(x)}\n" for x in feats)
    return f"{stem}.npy"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-layer-features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a pretraining checkpoint (mamba_hubert or hubert)")
    parser.add_argument("--layer", type=int, required=True, help="1-based encoder layer")
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if not os.path.isfile(args.checkpoint):
        parser.error(f"checkpoint not found: {args.checkpoint}")
    check_shard_arguments(parser, args)
    with one_line_errors(parser.prog):
        path = dump_layer_features(args.checkpoint, args.data, args.split, args.layer, args.out, args.nshard,
                                   args.rank)
    logger.info("%s shard %d/%d, layer %d -> %s", args.split, args.rank, args.nshard, args.layer, path)


if __name__ == "__main__":
    main()
