"""The main job: corpus -> MFCC k-means labels -> pretrain a tiny Mamba-HuBERT and a tiny Transformer HuBERT
(fairseq-hydra-train) -> fine-tune each with fairseq's hubert_ctc -> decode the held-out test split with
fairseq-generate -> runs/demo/report.md with WER, parameter counts, training curves and wall times.

    python -m mamba_hubert.demo --out runs/demo
"""

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mamba_hubert.data.corpus import build_corpus  # noqa: E402
from mamba_hubert.data.kmeans import run_kmeans  # noqa: E402
from mamba_hubert.data.mfcc import dump_mfcc  # noqa: E402
from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config, count_parameters  # noqa: E402
from mamba_hubert.pipeline import generate_wer, hydra_train  # noqa: E402

SPLITS = ("train", "valid", "test")
MODELS = {"Mamba-HuBERT (ConBiMamba)": "tiny_conbimamba", "Transformer HuBERT": "tiny_transformer"}
_JSON_LOG = re.compile(r"\[(train_inner|train|valid)\]\[INFO\] - (\{.*\})")


def log(message: str) -> None:
    print(message, flush=True)


def read_metrics(log_text: str) -> dict[str, list[dict]]:
    """fairseq's json log lines, by kind (train_inner, train, valid)."""
    metrics: dict[str, list[dict]] = {"train_inner": [], "train": [], "valid": []}
    for kind, payload in _JSON_LOG.findall(log_text):
        metrics[kind].append(json.loads(payload))
    return metrics


def plot_curves(curves: dict[str, dict[str, list[dict]]], key: str, kind: str, ylabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, metrics in curves.items():
        rows = [r for r in metrics[kind] if key in r]
        x_key = "num_updates" if kind == "valid" else "update"
        ax.plot([float(r.get(x_key, i)) for i, r in enumerate(rows)], [float(r[key]) for r in rows], label=name)
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Stage:
    """Times a stage and remembers its wall time for the report."""

    times: dict[str, float] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> "Stage":
        log(f"== {self.name}")
        self.start = time.time()
        return self

    def __exit__(self, *exc) -> None:
        Stage.times[self.name] = time.time() - self.start
        log(f"== {self.name}: {Stage.times[self.name]:.0f} s")


def run_demo(out: Path, minutes: float, pretrain_updates: int, finetune_updates: int, clusters: int,
             jobs: int, seed: int) -> Path:
    out = out.resolve()
    corpus, mfcc_dir, labels = out / "corpus", out / "features" / "mfcc", out / "labels" / "iter1"
    with Stage("corpus"):
        if (corpus / "corpus.json").exists():
            log(f"reusing {corpus}")
        else:
            build_corpus(str(corpus), minutes, jobs=jobs, seed=seed, log=log)
    with Stage("MFCC + k-means labels"):
        for split in SPLITS:
            dump_mfcc(str(corpus), split, str(mfcc_dir), 1, 0)
        run_kmeans(str(mfcc_dir), str(labels), SPLITS, clusters, seed=seed, n_init=5)

    results = {}
    pretrain_curves, finetune_curves = {}, {}
    for title, config in MODELS.items():
        model_dir = out / "models" / config
        with Stage(f"pretrain {config}"):
            text = hydra_train(f"pretrain/{config}", [
                f"task.data={corpus}", f"task.label_dir={labels}", f"checkpoint.save_dir={model_dir / 'pretrain'}",
                f"optimization.max_update={pretrain_updates}", "common.log_format=json", f"common.seed={seed}",
            ], model_dir / "pretrain.log", echo=log)
            pretrain_curves[title] = read_metrics(text)
        with Stage(f"fine-tune {config}"):
            text = hydra_train("finetune/tiny_ctc", [
                f"task.data={corpus}", f"task.label_dir={corpus}", f"checkpoint.save_dir={model_dir / 'finetune'}",
                f"model.w2v_path={model_dir / 'pretrain' / 'checkpoint_best.pt'}",
                f"optimization.max_update={finetune_updates}", "common.log_format=json", f"common.seed={seed}",
            ], model_dir / "finetune.log", echo=log)
            finetune_curves[title] = read_metrics(text)
        with Stage(f"decode {config}"):
            checkpoint = model_dir / "finetune" / "checkpoint_best.pt"
            wer = generate_wer(corpus, corpus, checkpoint, "test", model_dir / "generate_test.log")
            log(f"{title}: test WER {wer:.2f}%")
        params = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, config, clusters))["total"]
        results[title] = {"config": config, "test_wer": wer, "params": params, "checkpoint": str(checkpoint)}

    plot_curves(pretrain_curves, "loss", "train_inner", "pretraining loss (train)", out / "pretrain_loss.png")
    plot_curves(finetune_curves, "loss", "train_inner", "CTC loss (train)", out / "finetune_loss.png")
    plot_curves(finetune_curves, "wer", "valid", "valid WER (%)", out / "finetune_valid_wer.png")
    (out / "results.json").write_text(json.dumps({"models": results, "wall_seconds": Stage.times}, indent=2) + "\n")
    report = write_report(out, results, json.loads((corpus / "corpus.json").read_text()),
                          pretrain_updates, finetune_updates, clusters)
    log(f"report: {report}")
    return report


def write_report(out: Path, results: dict, corpus: dict, pretrain_updates: int, finetune_updates: int,
                 clusters: int) -> Path:
    lines = ["# mamba-hubert demo report", "",
             f"Corpus: {corpus.get('minutes_requested')} min requested; "
             + ", ".join(f"{s} {v['utterances']} utterances / {v['minutes']} min" for s, v in corpus["splits"].items())
             + ". Test voices and sentences are held out of training.",
             f"Labels: k-means ({clusters} clusters) on MFCC, 100 Hz. Pretraining {pretrain_updates} updates, "
             f"CTC fine-tuning {finetune_updates} updates (fairseq `hubert_ctc`), greedy decoding with "
             "`fairseq-generate --scoring wer` on the test split.", "",
             "| model | config | parameters | test WER (greedy) |", "|---|---|---|---|"]
    for title, r in results.items():
        lines.append(f"| {title} | `{r['config']}` | {r['params'] / 1e6:.2f} M | {r['test_wer']:.2f}% |")
    lines += ["", "## Training curves", "", "![pretraining loss](pretrain_loss.png)",
              "![CTC loss](finetune_loss.png)", "![valid WER](finetune_valid_wer.png)", "",
              "## Wall times (2 CPU cores)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in Stage.times.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--minutes", type=float, default=20.0, help="corpus size (all splits)")
    parser.add_argument("--pretrain-updates", type=int, default=300)
    parser.add_argument("--finetune-updates", type=int, default=400)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run_demo(args.out, args.minutes, args.pretrain_updates, args.finetune_updates, args.clusters, args.jobs,
             args.seed)


if __name__ == "__main__":
    main()
