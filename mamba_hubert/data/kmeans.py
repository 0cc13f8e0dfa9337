"""HuBERT pseudo-labels with fairseq's own k-means scripts (examples/hubert/simple_kmeans in fairseq).

    mamba-hubert-kmeans --feat-dir F --label-dir OUT --splits train valid test --n-clusters K \
        [--nshard 1] [--percent 1.0] [--fit-split train] [--seed 0] [--n-init 20] [--max-iter 100]

Fits k-means with learn_kmeans.py on the fit split's feature shards ({split}_{rank}_{nshard}.npy/.len, as
written by mamba_hubert.data.mfcc or fairseq's dump_*_feature.py), labels every split's shards with
dump_km_label.py, merges the shards into OUT/{split}.km and writes OUT/dict.km.txt: the files fairseq's
hubert_pretraining task reads (task.label_dir, task.labels=["km"]).
"""

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mamba_hubert.command_line import one_line_errors, setup_logging

logger = logging.getLogger(__name__)
SIMPLE_KMEANS = "hubert/simple_kmeans"  # in the installed fairseq's examples/


def run_fairseq_example(script: str, *args: object) -> str:
    """Run one of the installed fairseq's example scripts (`script` relative to its examples/ folder, e.g.
    "hubert/simple_kmeans/learn_kmeans.py") with this interpreter; its (verbose) log is shown only on failure."""
    spec = importlib.util.find_spec("fairseq")  # located, not imported: the scripts run in their own process
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("fairseq is not installed")
    path = Path(spec.origin).resolve().parent / "examples" / script
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: this fairseq does not ship its examples")
    cmd = [sys.executable, str(path), *map(str, args)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout


def _shard_lengths(feat_dir: str, split: str, nshard: int) -> list[int]:
    lengths = []
    for rank in range(nshard):
        with open(os.path.join(feat_dir, f"{split}_{rank}_{nshard}.len")) as f:
            lengths += [int(line) for line in f]
    return lengths


def run_kmeans(feat_dir: str, label_dir: str, splits: Sequence[str], n_clusters: int, nshard: int = 1,
               percent: float = 1.0, fit_split: str = "train", seed: int = 0, n_init: int = 20,
               max_iter: int = 100) -> None:
    """Fit k-means on fit_split, label every split, write label_dir/{split}.km and label_dir/dict.km.txt.

    percent: fraction of the fit split's utterances the k-means sees (-1: all, read from a memory map).
    """
    os.makedirs(label_dir, exist_ok=True)
    km_path = os.path.join(label_dir, f"kmeans_{n_clusters}.joblib")
    logger.info("fitting %d clusters on %s (%s)", n_clusters, fit_split, feat_dir)
    log = run_fairseq_example(f"{SIMPLE_KMEANS}/learn_kmeans.py", feat_dir, fit_split, nshard, km_path, n_clusters,
                              "--seed", seed, "--percent", percent, "--n_init", n_init, "--max_iter", max_iter)
    inertia = [line for line in log.splitlines() if "total intertia" in line]  # fairseq's spelling
    if inertia:
        logger.info("%s", inertia[-1].split("|")[-1].strip())
    for split in splits:
        shards = []
        for rank in range(nshard):
            run_fairseq_example(f"{SIMPLE_KMEANS}/dump_km_label.py", feat_dir, split, km_path, nshard, rank, label_dir)
            shards.append(os.path.join(label_dir, f"{split}_{rank}_{nshard}.km"))
        lines = []
        for shard in shards:
            lines += Path(shard).read_text().splitlines()
            os.remove(shard)
        expected = _shard_lengths(feat_dir, split, nshard)
        if [len(line.split()) for line in lines] != expected:
            raise RuntimeError(f"{split}: k-means labels do not match the feature frame counts in {feat_dir}")
        Path(label_dir, f"{split}.km").write_text("".join(line + "\n" for line in lines))
        logger.info("%s: %d utterances -> %s/%s.km", split, len(lines), label_dir, split)
    Path(label_dir, "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(n_clusters)))


def subsample_labels(label_dir: str, out_dir: str, splits: Sequence[str], factor: int) -> None:
    """Every `factor`-th label of each utterance (frames 0, factor, 2 factor, ...), with the dictionary, into out_dir:
    100 Hz labels for a 50 Hz model (the log-mel front end at label_rate 50), the targets HuBERT itself picks when a
    50 Hz CNN trains on 100 Hz labels."""
    os.makedirs(out_dir, exist_ok=True)
    for split in splits:
        lines = Path(label_dir, f"{split}.km").read_text().splitlines()
        Path(out_dir, f"{split}.km").write_text("".join(" ".join(line.split()[::factor]) + "\n" for line in lines))
    Path(out_dir, "dict.km.txt").write_text(Path(label_dir, "dict.km.txt").read_text())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-kmeans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--feat-dir", required=True, help="feature shards {split}_{rank}_{nshard}.npy/.len")
    parser.add_argument("--label-dir", required=True, help="output: {split}.km, dict.km.txt, the k-means model")
    parser.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    parser.add_argument("--n-clusters", type=int, required=True)
    parser.add_argument("--nshard", type=int, default=1)
    parser.add_argument("--percent", type=float, default=1.0, help="fraction of fit-split utterances; -1: all")
    parser.add_argument("--fit-split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-init", type=int, default=20, help="k-means++ initialisations (fairseq's default)")
    parser.add_argument("--max-iter", type=int, default=100)
    args = parser.parse_args(argv)
    setup_logging()
    if args.n_clusters < 2:
        parser.error(f"--n-clusters must be at least 2, got {args.n_clusters}")
    if not os.path.isdir(args.feat_dir):
        parser.error(f"no feature directory {args.feat_dir}")
    with one_line_errors(parser.prog):
        run_kmeans(args.feat_dir, args.label_dir, args.splits, args.n_clusters, args.nshard, args.percent,
                   args.fit_split, args.seed, args.n_init, args.max_iter)


if __name__ == "__main__":
    main()
