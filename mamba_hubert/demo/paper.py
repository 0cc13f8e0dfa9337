"""The paper's comparison (`mamba-hubert-paper`, `make paper`), on the demo corpus, one command:

- Mamba-HuBERT (ConBiMamba) with a linear CTC head ("the SSL model alone"),
- the same pretrained model followed by a downstream Conformer encoder ("+ Conformer"),
- the Transformer HuBERT of the same size followed by the same Conformer encoder (the baseline),
- a reconstruction-task Mamba (masked log-mel reconstruction, SSAMBA-like),

the SSL models as frozen front ends read through SUPERB's learned weighted sum of their hidden states (as an S3PRL
upstream in ESPnet, the paper's setup), so the three ASR models share their upstream layers exactly and differ only
in what is trained on top;

each trained with fairseq-hydra-train, the ASR models decoded with fairseq-generate (greedy and lexicon + LM), and
layer-wise MI through every model (upstream then head layers) with a verdict per curve and estimator. Writes
`report.md` (with the paper's LibriSpeech numbers beside ours and which findings this run reproduces), `results.json`
and the plots into --out. A finished stage is reused when the command runs again with the same settings.

    mamba-hubert-paper --out runs/paper
    mamba-hubert-paper --out runs/paper --lr-grid 0.001 0.002 0.004   # the learning-rate grid, on valid
"""

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fairseq import checkpoint_utils

from mamba_hubert.analysis.cli import write_outputs as write_mi_outputs
from mamba_hubert.analysis.layerwise import XT_KEYS
from mamba_hubert.analysis.verdict import RULE_SUMMARY
from mamba_hubert.command_line import warnings_only
from mamba_hubert.demo.common import (
    DemoData,
    decode_test,
    job_console,
    layerwise_mi_of,
    log,
    merge_mi_parts,
    plot_curves,
    prepare_data,
    progress_bar,
    read_metrics,
    run_jobs,
    timed,
    tool_output,
)
from mamba_hubert.demo.fairseq_tools import hydra_train


@dataclass(frozen=True)
class AsrModel:
    title: str
    key: str
    pretrain_config: str  # examples/config/pretrain/<name>.yaml
    finetune_config: str  # examples/config/finetune/<name>.yaml
    lr: float  # chosen on the valid split by --lr-grid
    paper_wer: float  # Zhang et al., LibriSpeech 100 h, test-clean
    paper_setting: str


# Learning rates: the best on the valid split of the grid 0.0015 / 0.003 / ... / 0.048 (0.096 for the linear head), the
# same for every model (docs/DEMO_TUNING.md has the grid's table).
ASR_MODELS = (
    AsrModel("Mamba-HuBERT (ConBiMamba), linear head", "conbimamba_linear", "tiny_conbimamba", "tiny_asr_linear",
             0.048, 12.32, "Mamba-HuBERT layer-9 features alone"),
    AsrModel("Mamba-HuBERT (ConBiMamba) + Conformer", "conbimamba_conformer", "tiny_conbimamba", "tiny_asr_conformer",
             0.006, 9.2, "Mamba-HuBERT + Conformer (ESPnet)"),
    AsrModel("Transformer HuBERT + Conformer", "transformer_conformer", "tiny_transformer", "tiny_asr_conformer",
             0.006, 9.3, "HuBERT + Conformer (ESPnet)"),
)
# How the ASR models read their upstream: a frozen front end, SUPERB's weighted sum over its hidden states.
FRONT_END = ("model.freeze_upstream=true", "model.upstream_weighted_sum=true")
RECONSTRUCTION_TITLE = "Reconstruction Mamba (SSAMBA-like)"
RECONSTRUCTION_CONFIG = "tiny_inn_bimamba"  # examples/config/reconstruction
RECONSTRUCTION_LR = 0.006  # the grid's best on the valid split, as the ASR models' above


@dataclass(frozen=True)
class Budget:
    pretrain_updates: int
    finetune_updates: int
    reconstruction_updates: int
    seed: int
    clusters: int


def _train_once(config: str, overrides: list[str], updates: int, save_dir: Path, log_path: Path, run_name: str,
                times: dict[str, float], name: str) -> dict[str, list[dict]]:
    """fairseq-hydra-train, or nothing when `save_dir` holds a finished run with the same overrides (a rerun of a
    finished fairseq run would train one update past max_update); returns its json log records."""
    marker = save_dir / "finished.json"
    if marker.exists():
        finished = json.loads(marker.read_text())
        if finished["overrides"] != overrides:
            raise SystemExit(f"{save_dir} holds a run with other settings ({finished['overrides']}): remove it, or "
                             "choose another --out")
        log(f"== {name}: reusing {save_dir}")
        if "seconds" in finished:
            times[f"{name} (reused: the earlier run's time)"] = finished["seconds"]
        return read_metrics(log_path.read_text())
    with progress_bar(name, updates, "update") as progress:
        text = timed(times, name, hydra_train, config, overrides, log_path, tool_output(run_name, progress), 1)
    marker.write_text(json.dumps({"overrides": overrides, "seconds": times[name]}) + "\n")
    return read_metrics(text)


class PaperRun:
    """The stages of the comparison in one output directory."""

    def __init__(self, out: Path, data: DemoData, budget: Budget, times: dict[str, float]) -> None:
        self.out, self.data, self.budget, self.times = out, data, budget, times

    def pretrained(self, config: str) -> Path:
        return self.out / "models" / config / "pretrain" / "checkpoint_best.pt"

    def pretrain(self, config: str) -> dict:
        save_dir = self.pretrained(config).parent
        overrides = [f"task.data={self.data.corpus}", f"task.label_dir={self.data.labels}",
                     f"checkpoint.save_dir={save_dir}", f"optimization.max_update={self.budget.pretrain_updates}",
                     "common.log_format=json", f"common.seed={self.budget.seed}"]
        curves = _train_once(f"pretrain/{config}", overrides, self.budget.pretrain_updates, save_dir,
                             save_dir.parent / "pretrain.log", config, self.times, f"pretrain {config}")
        return {"curves": curves}

    def finetune(self, model: AsrModel, lr: float, save_dir: Path) -> dict:
        overrides = [f"task.data={self.data.corpus}", f"task.label_dir={self.data.corpus}",
                     f"checkpoint.save_dir={save_dir}", f"model.w2v_path={self.pretrained(model.pretrain_config)}",
                     f"optimization.max_update={self.budget.finetune_updates}", f"optimization.lr=[{lr}]",
                     "common.log_format=json", f"common.seed={self.budget.seed}", *FRONT_END]
        curves = _train_once(f"finetune/{model.finetune_config}", overrides, self.budget.finetune_updates, save_dir,
                             save_dir / "finetune.log", model.key, self.times, f"fine-tune {model.key} (lr {lr:g})")
        return {"curves": curves, "valid_uer": min(float(row["valid_uer"]) for row in curves["valid"]),
                "checkpoint": save_dir / "checkpoint_best.pt"}

    def reconstruct(self, lr: float, save_dir: Path) -> dict:
        overrides = [f"task.data={self.data.corpus}", f"checkpoint.save_dir={save_dir}",
                     f"optimization.max_update={self.budget.reconstruction_updates}", f"optimization.lr=[{lr}]",
                     "common.log_format=json", f"common.seed={self.budget.seed}"]
        curves = _train_once(f"reconstruction/{RECONSTRUCTION_CONFIG}", overrides,
                             self.budget.reconstruction_updates, save_dir, save_dir / "train.log", "reconstruction",
                             self.times, f"reconstruction (lr {lr:g})")
        best = min(curves["valid"], key=lambda row: float(row["valid_loss"]))
        return {"curves": curves, "checkpoint": save_dir / "checkpoint_best.pt",
                "valid": {key: float(best[f"valid_{key}"]) for key in
                          ("loss", "mean_baseline_loss", "nearest_baseline_loss")}}


def run_paper(out: Path, minutes: float, budget: Budget, jobs: int, mi_seeds: Sequence[int],
              mi_utterances: int = 40, mi_iterations: int = 1500) -> Path:
    out = out.resolve()
    times: dict[str, float] = {}
    start = time.time()
    data = prepare_data(out, minutes, budget.seed, budget.clusters, jobs, times)
    run = PaperRun(out, data, budget, times)
    mi_args = ["--data", str(data.corpus), "--subset", "test", "--max-utterances", str(mi_utterances),
               "--max-frames", "2500", "--mine-iterations", str(mi_iterations), "--seeds", *map(str, mi_seeds)]

    mi_progress = progress_bar("mutual information", len(ASR_MODELS) + 1, "checkpoint")

    def decode(model: AsrModel, save_dir: Path) -> tuple[float, float]:
        with progress_bar(f"decode {model.key}", 2, "decoding") as progress:
            return decode_test(data, save_dir / "checkpoint_best.pt", save_dir.parent, times, model.key, progress)

    def asr_chain_jobs(model: AsrModel) -> dict:
        save_dir = out / "models" / model.key / "finetune"
        return {
            f"fine-tune {model.key}": ((f"pretrain {model.pretrain_config}",),
                                       lambda: run.finetune(model, model.lr, save_dir)),
            f"decode {model.key}": ((f"fine-tune {model.key}",), lambda: decode(model, save_dir)),
            f"MI {model.key}": ((f"fine-tune {model.key}",),
                                lambda: layerwise_mi_of(save_dir / "checkpoint_best.pt", model.title,
                                                        out / "mi" / "parts" / model.key, mi_args, times,
                                                        mi_progress)),
        }

    recon_dir = out / "models" / "reconstruction"
    graph = {f"pretrain {config}": ((), lambda c=config: run.pretrain(c))
             for config in dict.fromkeys(m.pretrain_config for m in ASR_MODELS)}
    chains = [asr_chain_jobs(model) for model in ASR_MODELS]
    for kind in ("fine-tune", "decode"):  # fine-tunings first: the MI runs fill the gaps
        graph.update({name: job for chain in chains for name, job in chain.items() if name.startswith(kind)})
    graph["reconstruction"] = ((), lambda: run.reconstruct(RECONSTRUCTION_LR, recon_dir))
    graph.update({name: job for chain in chains for name, job in chain.items() if name.startswith("MI")})
    graph["MI reconstruction"] = (("reconstruction",), lambda: layerwise_mi_of(
        recon_dir / "checkpoint_best.pt", RECONSTRUCTION_TITLE, out / "mi" / "parts" / "reconstruction", mi_args,
        times, mi_progress))
    models_start = time.time()
    with mi_progress:
        done = run_jobs(graph, workers=jobs)
    times["models and MI (side by side)"] = time.time() - models_start

    mi = merge_mi_parts({**{m.title: done[f"MI {m.key}"] for m in ASR_MODELS},
                         RECONSTRUCTION_TITLE: done["MI reconstruction"]})
    write_mi_outputs(out / "mi", mi)
    results = {}
    for model in ASR_MODELS:
        finetuned = done[f"fine-tune {model.key}"]
        wer, wer_lm = done[f"decode {model.key}"]
        results[model.key] = {"title": model.title, "lr": model.lr, "test_wer": wer, "test_wer_lm": wer_lm,
                              "valid_uer": finetuned["valid_uer"], **model_summary(finetuned["checkpoint"])}
    reconstruction = done["reconstruction"]
    results["reconstruction"] = {"title": RECONSTRUCTION_TITLE, "lr": RECONSTRUCTION_LR,
                                 "valid": reconstruction["valid"],
                                 **model_summary(reconstruction["checkpoint"])}
    plot_curves({m.title: done[f"fine-tune {m.key}"]["curves"] for m in ASR_MODELS}, "valid_uer", "valid",
                "valid letter error rate (%)", out / "finetune_valid_uer.png")
    plot_curves({RECONSTRUCTION_TITLE: reconstruction["curves"]}, "valid_loss", "valid",
                "valid reconstruction loss (L2 per masked bin)", out / "reconstruction_valid_loss.png")
    (out / "results.json").write_text(json.dumps(
        {"models": results, "mi_verdicts": mi["verdicts"], "wall_seconds": times,
         "total_seconds": time.time() - start, "budget": budget.__dict__}, indent=2, default=str) + "\n")
    report = write_paper_report(out, results, mi, budget, times, time.time() - start)
    log(f"report: {report}")
    return report


def model_summary(checkpoint: Path) -> dict:
    """Parameters of a trained model, in all and trained (the pretraining label embeddings a fine-tuned model keeps
    unused left out), and, for a weighted-sum head, the learned weights over the upstream's hidden states."""
    with warnings_only("fairseq", "mamba_hubert.models"):
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0]
    summary = {"params": sum(p.numel() for n, p in model.named_parameters() if "label_embs" not in n),
               "trained_params": sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)}
    weights = getattr(getattr(model, "w2v_encoder", None), "layer_weights", None)
    if weights is not None:
        summary["layer_weights"] = [round(w, 4) for w in torch.softmax(weights.detach(), 0).tolist()]
    return summary


def _count(parameters: int) -> str:
    return f"{parameters / 1e6:.2f} M" if parameters >= 100_000 else f"{parameters / 1e3:.1f} k"


def _verdict(mi: dict, title: str, estimator: str) -> str:
    return mi["verdicts"].get(title, {}).get(estimator, {}).get("verdict", "-")


def findings(results: dict, mi: dict) -> list[str]:
    """Which of the paper's findings this run reproduces, each with its numbers."""
    linear, conformer, baseline = (results[m.key] for m in ASR_MODELS)
    titles = {m.key: m.title for m in ASR_MODELS}
    recon = results["reconstruction"]["valid"]

    def shapes(title: str) -> str:
        return f"MINE: {_verdict(mi, title, 'mine')}, SMILE: {_verdict(mi, title, 'smile')}"

    def reproduced(ok: bool | list[bool]) -> str:
        oks = ok if isinstance(ok, list) else [ok]
        if all(oks):
            return "**reproduced**"
        return "**reproduced by one estimator only**" if any(oks) else "**not reproduced**"

    lower = conformer["test_wer"] < linear["test_wer"] and conformer["test_wer_lm"] < linear["test_wer_lm"]
    rise = [_verdict(mi, titles["conbimamba_conformer"], e) == "falls then rises" for e in XT_KEYS]
    fall = [_verdict(mi, titles["conbimamba_linear"], e) == "falls" for e in XT_KEYS]
    recon_rise = [_verdict(mi, RECONSTRUCTION_TITLE, e) == "falls then rises" for e in XT_KEYS]
    close = abs(conformer["test_wer"] - baseline["test_wer"])
    return [
        (f"1. A Conformer head lowers Mamba-HuBERT's WER (paper: 12.32% -> 9.2%): {reproduced(lower)}; here "
         f"{linear['test_wer']:.2f}% -> {conformer['test_wer']:.2f}% greedy, {linear['test_wer_lm']:.2f}% -> "
         f"{conformer['test_wer_lm']:.2f}% with lexicon + LM."),
        f"2. Mamba-HuBERT alone: I(X;T) falls with depth: {reproduced(fall)} ({shapes(linear['title'])}).",
        (f"3. With the Conformer head, I(X;T) falls in the upstream and rises again in the head: "
         f"{reproduced(rise)} ({shapes(conformer['title'])})."),
        (f"4. The reconstruction-task Mamba rebuilds its input (I(X;T) falls, then rises): {reproduced(recon_rise)} "
         f"({shapes(RECONSTRUCTION_TITLE)}); its valid loss {recon['loss']:.3f} against "
         f"{recon['mean_baseline_loss']:.3f} (utterance-mean spectrum) and {recon['nearest_baseline_loss']:.3f} "
         "(nearest unmasked step)."),
        (f"5. Mamba-HuBERT + Conformer is on a par with HuBERT + Conformer (paper: 9.2% vs 9.3%): here "
         f"{conformer['test_wer']:.2f}% vs {baseline['test_wer']:.2f}% greedy ({close:.2f} points apart), "
         f"{conformer['test_wer_lm']:.2f}% vs {baseline['test_wer_lm']:.2f}% with lexicon + LM."),
    ]


def write_paper_report(out: Path, results: dict, mi: dict, budget: Budget, times: dict[str, float],
                       total_seconds: float) -> Path:
    corpus = json.loads((out / "corpus" / "corpus.json").read_text())
    splits = ", ".join(f"{s} {v['utterances']} utterances / {v['minutes']} min" for s, v in corpus["splits"].items())
    recon = results["reconstruction"]
    lines = [
        "# The paper's comparison: a downstream reconstruction module for ASR", "",
        (f"Corpus (synthetic TTS speech): {splits}; test voices and sentences held out of training. Pretraining "
         f"{budget.pretrain_updates} updates (HuBERT, MFCC k-means labels, {budget.clusters} clusters). CTC "
         f"training {budget.finetune_updates} updates through fairseq's `hubert_ctc` machinery "
         "(`mamba_hubert_asr`), the pretrained model a frozen front end read through a learned weighted sum of its "
         "hidden states (as an S3PRL upstream in the paper's ESPnet setup), so the three ASR models share their "
         f"upstream layers and differ in their head; reconstruction {budget.reconstruction_updates} updates. "
         "Learning rates chosen by the same grid on the valid split for every model (`mamba-hubert-paper "
         "--lr-grid`)."), "",
        ("| model | parameters (trained) | lr | test WER greedy | test WER lexicon + LM | valid letter errors | paper "
         "(LibriSpeech 100 h, test-clean) |"),
        "|---|---|---|---|---|---|---|",
    ]
    for model in ASR_MODELS:
        r = results[model.key]
        lines.append(f"| {model.title} | {_count(r['params'])} ({_count(r['trained_params'])}) | {r['lr']:g} | "
                     f"{r['test_wer']:.2f}% | {r['test_wer_lm']:.2f}% | {r['valid_uer']:.1f}% | {model.paper_wer}% "
                     f"({model.paper_setting}) |")
    lines += ["", "Learned weights of the upstream's hidden states (encoder input, then each layer's output):"]
    lines += [f"- {results[m.key]['title']}: {' / '.join(f'{w:.2f}' for w in results[m.key]['layer_weights'])}"
              for m in ASR_MODELS if "layer_weights" in results[m.key]]
    lines += [
        "", "## The reconstruction-task model", "",
        (f"{RECONSTRUCTION_TITLE}, {_count(recon['params'])} parameters, lr {recon['lr']:g}: valid L2 loss per "
         f"masked log-mel bin (normalised per utterance) {recon['valid']['loss']:.4f}; predictions that need no "
         f"training: the utterance's mean spectrum {recon['valid']['mean_baseline_loss']:.4f}, the nearest unmasked "
         f"step {recon['valid']['nearest_baseline_loss']:.4f}."), "",
        "![valid letter errors](finetune_valid_uer.png) ![reconstruction loss](reconstruction_valid_loss.png)", "",
        "## Layer-wise mutual information", "",
        (f"I(X;T_i) on {mi['utterances']} test utterances, seeds {mi['seeds']}: X the encoder input (local "
         "features), T_i each layer's output, upstream then head layers on one axis (a dashed line marks where the "
         f"head starts). Quantity: {mi['xt_quantity']}. Two estimator families with the same critic: MINE "
         "(Donsker-Varadhan bound) and SMILE (clipped, trained on the Jensen-Shannon objective). Verdict rule: "
         f"{RULE_SUMMARY}. Data: `mi/mi.json`."), "",
        "![I(X;T), MINE](mi/mi_xt.png) ![I(X;T), SMILE](mi/mi_xt_smile.png)", "",
        "| model | layers (stage) | I(X;T_i) MINE (nats) | I(X;T_i) SMILE (nats) | verdict MINE | verdict SMILE |",
        "|---|---|---|---|---|---|",
    ]
    for title, rows in mi["layers"].items():
        stages = " ".join("H" if r["stage"] == "head" else "U" if r["stage"] == "upstream" else "E" for r in rows)
        cells = [" / ".join(f"{r[key]['mean']:.2f}" for r in rows) for key in XT_KEYS.values()]
        lines.append(f"| {title} | {stages} | {cells[0]} | {cells[1]} | {_verdict(mi, title, 'mine')} | "
                     f"{_verdict(mi, title, 'smile')} |")
    lines += ["", "U: upstream layer, H: head layer, E: encoder layer.", "",
              "## Which of the paper's findings this run reproduces", "", *findings(results, mi), "",
              ("The paper's numbers come from LibriSpeech-scale models on GPUs (ESPnet Conformer with BPE units); "
               "these are 2-core CPU models of ~1-2 M parameters on synthetic speech, so only the direction of each "
               "comparison carries over, not the size."), "",
              "## Wall times (2 CPU cores)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in times.items()]
    lines.append(f"| total of this invocation (wall clock; jobs ran two at a time; stages marked reused ran in an "
                 f"earlier one) | {total_seconds:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_lr_grid(out: Path, minutes: float, budget: Budget, jobs: int, grid: Sequence[float]) -> Path:
    """Each ASR model's fine-tuning and the reconstruction model at every learning rate of `grid`, scored on the
    valid split (lowest valid letter error; lowest valid loss); writes grid.json and grid.md into out/grid."""
    out = out.resolve()
    times: dict[str, float] = {}
    data = prepare_data(out, minutes, budget.seed, budget.clusters, jobs, times)
    run = PaperRun(out, data, budget, times)
    graph = {f"pretrain {config}": ((), lambda c=config: run.pretrain(c))
             for config in dict.fromkeys(m.pretrain_config for m in ASR_MODELS)}
    for lr in grid:
        for model in ASR_MODELS:
            graph[f"{model.key} {lr:g}"] = ((f"pretrain {model.pretrain_config}",), lambda m=model, lr=lr: run.finetune(
                m, lr, out / "grid" / m.key / f"lr{lr:g}"))
        graph[f"reconstruction {lr:g}"] = ((), lambda lr=lr: run.reconstruct(lr, out / "grid" / "reconstruction"
                                                                             / f"lr{lr:g}"))
    done = run_jobs(graph, workers=jobs)
    scores = {model.key: {f"{lr:g}": done[f"{model.key} {lr:g}"]["valid_uer"] for lr in grid} for model in ASR_MODELS}
    scores["reconstruction"] = {f"{lr:g}": done[f"reconstruction {lr:g}"]["valid"]["loss"] for lr in grid}
    chosen = {key: min(by_lr, key=by_lr.get) for key, by_lr in scores.items()}
    (out / "grid").mkdir(exist_ok=True)
    (out / "grid" / "grid.json").write_text(json.dumps({"grid": list(grid), "scores": scores, "chosen": chosen,
                                                        "budget": budget.__dict__}, indent=2) + "\n")
    lines = ["| model (valid score) | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
             "|---|" + "---|" * (len(grid) + 1)]
    for key, by_lr in scores.items():
        unit = "loss" if key == "reconstruction" else "letter errors %"
        lines.append(f"| {key} ({unit}) | " + " | ".join(f"{v:.4g}" for v in by_lr.values()) + f" | {chosen[key]} |")
    path = out / "grid" / "grid.md"
    path.write_text("\n".join(lines) + "\n")
    log(path.read_text())
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-paper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/paper"))
    parser.add_argument("--minutes", type=float, default=60.0, help="corpus size (all splits), as the demo's")
    parser.add_argument("--pretrain-updates", type=int, default=1500)
    parser.add_argument("--finetune-updates", type=int, default=3000, help="training updates of each ASR head")
    parser.add_argument("--reconstruction-updates", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mi-seeds", type=int, default=5, help="MI estimates per layer (fresh networks, splits)")
    parser.add_argument("--mi-utterances", type=int, default=40, help="held-out test utterances the MI reads")
    parser.add_argument("--mi-iterations", type=int, default=1500, help="training steps of each MI network")
    parser.add_argument("--lr-grid", type=float, nargs="+", help="instead of the comparison: train every model at "
                        "each of these learning rates and score it on the valid split")
    parser.add_argument("--verbose", action="store_true",
                        help="every line of fairseq's logs on the console (each run's log is in its folder either way)")
    args = parser.parse_args(argv)
    for name in ("pretrain_updates", "finetune_updates", "reconstruction_updates", "clusters", "jobs",
                 "mi_utterances", "mi_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.mi_seeds < 2:
        parser.error("--mi-seeds must be at least 2 (a curve's verdict compares seeds)")
    budget = Budget(args.pretrain_updates, args.finetune_updates, args.reconstruction_updates, args.seed,
                    args.clusters)
    with job_console(args.verbose):
        if args.lr_grid:
            run_lr_grid(args.out, args.minutes, budget, args.jobs, args.lr_grid)
        else:
            run_paper(args.out, args.minutes, budget, args.jobs, range(args.mi_seeds), args.mi_utterances,
                      args.mi_iterations)


if __name__ == "__main__":
    main()
