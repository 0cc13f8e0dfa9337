"""`mamba-hubert-params`: parameter counts of pretraining configs, built exactly as fairseq would build them."""

import argparse
import logging
import os
from collections.abc import Sequence

from fairseq.data import Dictionary
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mamba_hubert.models.mamba_hubert import MambaHubertConfig, MambaHubertModel

DEFAULT_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "config", "pretrain")


def build_from_config(config_dir: str, config_name: str, num_classes: int,
                      overrides: Sequence[str] = ()) -> MambaHubertModel:
    """The pretraining model a `fairseq-hydra-train --config-name config_name [overrides]` run starts from."""
    with initialize_config_dir(config_dir=os.path.abspath(config_dir), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    model_cfg = OmegaConf.merge(OmegaConf.structured(MambaHubertConfig), cfg.model)
    model_cfg.label_rate = cfg.task.label_rate
    task_cfg = HubertPretrainingConfig(data="unused", label_rate=cfg.task.label_rate)
    return MambaHubertModel(model_cfg, task_cfg, [kmeans_dictionary(num_classes)])


def kmeans_dictionary(num_classes: int) -> Dictionary:
    """A label set's dictionary as fairseq builds it from dict.km.txt: the symbols 0 .. num_classes - 1."""
    dictionary = Dictionary()
    for i in range(num_classes):
        dictionary.add_symbol(str(i))
    return dictionary


def count_parameters(model: MambaHubertModel) -> dict:
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.layers.parameters())
    front_end = sum(p.numel() for p in model.feature_extractor.parameters())
    return {"total": total, "encoder_layers": encoder, "front_end": front_end}


def main(argv: list[str] | None = None) -> None:
    for noisy in ("hydra", "fairseq", "mamba_hubert"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="*", help="config names (default: every *_iter2 config, *_iter1 where no "
                                                   "_iter2 exists, and every tiny_* config)")
    parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--num-classes", type=int, default=500, help="k-means clusters (label embeddings)")
    args = parser.parse_args(argv)
    files = set(os.listdir(args.config_dir))
    names = args.configs or sorted(
        f[:-5] for f in files if f.endswith("_iter2.yaml") or (f.startswith("tiny_") and f != "tiny_base.yaml")
        or (f.endswith("_iter1.yaml") and f.replace("_iter1", "_iter2") not in files)
    )
    print(f"{'config':32s} {'params (M)':>11s} {'encoder layers (M)':>19s} {'front end (M)':>14s}")
    for name in names:
        counts = count_parameters(build_from_config(args.config_dir, name, args.num_classes))
        print(f"{name:32s} {counts['total'] / 1e6:11.2f} {counts['encoder_layers'] / 1e6:19.2f} "
              f"{counts['front_end'] / 1e6:14.3f}")


if __name__ == "__main__":
    main()
