"""`mamba-hubert-mi`: layer-wise mutual information of one or more checkpoints, as JSON and PNG plots.

    mamba-hubert-mi --checkpoint a.pt --checkpoint b.pt --data DIR --subset valid --out mi/

Works for `mamba_hubert`, fairseq `hubert`, fine-tuned `hubert_ctc` and `mamba_hubert_asr` (upstream then head layers
on one depth axis) and `mamba_spectrum_reconstruction` checkpoints, on CPU. I(X;T_i) by MINE and by SMILE, each with
a verdict on the curve's shape (`mamba_hubert.analysis.verdict`).
"""

import argparse
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

import mamba_hubert  # noqa: F401  (registers the model/task and the checkpoint allow-list)
from mamba_hubert.analysis.layerwise import XT_KEYS, XT_QUANTITIES, layerwise_mi, xt_verdicts
from mamba_hubert.analysis.plots import plot_information_plane, plot_mi_curves
from mamba_hubert.command_line import one_line_errors, setup_logging
from mamba_hubert.data.mfcc import read_manifest


def load_probe_set(data_dir: str, subset: str, max_utterances: int, label: str | None
                   ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The first `max_utterances` waves of {subset}.tsv and, if `label` is given, their frame labels as ids."""
    root, entries = read_manifest(os.path.join(data_dir, f"{subset}.tsv"))
    entries = entries[:max_utterances]
    waves = [sf.read(os.path.join(root, path), dtype="float32")[0] for path, _ in entries]
    if label is None:
        return waves, None
    dictionary = Dictionary.load(os.path.join(data_dir, f"dict.{label}.txt"))
    label_path = os.path.join(data_dir, f"{subset}.{label}")
    with open(label_path) as f:
        lines = [next(f) for _ in entries]
    labels = [np.array([dictionary.index(s) for s in line.split()]) for line in lines]
    return waves, labels


def analyse_checkpoint(checkpoint: str, waves, labels, data_dir: str, args) -> list[dict]:
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides={"data": data_dir})
    return layerwise_mi(models[0], waves, labels, seeds=args.seeds, mine_iterations=args.mine_iterations,
                        max_frames=args.max_frames, marginals=MARGINALS[args.marginals],
                        progress=lambda message: logger.info("%s: %s", Path(checkpoint).name, message))


logger = logging.getLogger(__name__)
MARGINALS = {"within_utterance": "within_group", "pooled": "pooled"}


def _analyse_on_one_thread(job: tuple) -> list[dict]:
    """One checkpoint in a worker process: MINE's small networks run faster as one process per core than as one
    process on several threads."""
    torch.set_num_threads(1)
    return analyse_checkpoint(*job)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-mi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="repeat for several models")
    parser.add_argument("--name", action="append", help="legend name per checkpoint (default: file path)")
    parser.add_argument("--data", required=True, help="directory with {subset}.tsv (and {subset}.phn)")
    parser.add_argument("--subset", default="valid")
    parser.add_argument("--labels", default="phn", help="frame-label suffix for I(T;Y); 'none' to skip")
    parser.add_argument("--max-utterances", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=8000, help="frames pooled per estimate (subsampled)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mine-iterations", type=int, default=None,
                        help="training steps of each statistics network (default: the estimators')")
    parser.add_argument("--marginals", choices=tuple(MARGINALS), default="within_utterance",
                        help="where I(X;T)'s marginal pairs come from: within an utterance (the paper's choice; "
                             "estimates a within-utterance dependence) or across the pooled frames (I(X;T))")
    parser.add_argument("--jobs", type=int, default=1, help="checkpoints analysed at once, one thread each")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    setup_logging()
    names = args.name or args.checkpoint
    if len(names) != len(args.checkpoint):
        parser.error("give one --name per --checkpoint")
    missing = [path for path in args.checkpoint if not os.path.isfile(path)]
    if missing:
        parser.error(f"checkpoint not found: {missing[0]}")
    if not os.path.isfile(os.path.join(args.data, f"{args.subset}.tsv")):
        parser.error(f"{args.data}/{args.subset}.tsv not found (--data DIR --subset NAME name a manifest)")
    label = None if args.labels == "none" else args.labels
    if label is not None and not os.path.exists(os.path.join(args.data, f"{args.subset}.{label}")):
        parser.error(f"{args.data}/{args.subset}.{label} not found (use --labels none to skip I(T;Y))")
    with one_line_errors(parser.prog):
        waves, labels = load_probe_set(args.data, args.subset, args.max_utterances, label)
        jobs = [(checkpoint, waves, labels, args.data, args) for checkpoint in args.checkpoint]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                analysed = list(pool.map(_analyse_on_one_thread, jobs))
        else:
            analysed = [analyse_checkpoint(*job) for job in jobs]
    results = dict(zip(names, analysed))
    marginals = MARGINALS[args.marginals]
    write_outputs(args.out, {"subset": args.subset, "utterances": len(waves), "seeds": args.seeds,
                             "marginals": marginals, "xt_quantity": XT_QUANTITIES[marginals],
                             "checkpoints": dict(zip(names, args.checkpoint)), "layers": results,
                             "verdicts": {name: xt_verdicts(rows) for name, rows in results.items()}})
    logger.info("wrote %s/mi.json and plots", args.out)


def write_outputs(out: Path, record: dict) -> None:
    """`mi.json` (subset, utterances, seeds, marginals, checkpoints and, per name, its layers' rows and verdicts) and
    the plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "mi.json").write_text(json.dumps(record, indent=2) + "\n")
    results = record["layers"]
    for name, key in XT_KEYS.items():
        plot_mi_curves(results, out / f"{key}.png", key=key, ylabel=f"I(X; T_i) [nats], {name.upper()}")
    if any("mi_ty" in row for rows in results.values() for row in rows):
        plot_mi_curves(results, out / "mi_ty.png", key="mi_ty", ylabel="I(T_i; Y) [nats], phone probe bound")
        plot_information_plane(results, out / "information_plane.png")


if __name__ == "__main__":
    main()
