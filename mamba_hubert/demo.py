"""The main job: corpus -> MFCC k-means labels -> pretrain tiny Mamba-HuBERTs and a tiny Transformer HuBERT
(fairseq-hydra-train) -> fine-tune with fairseq's hubert_ctc -> decode the held-out test split with
fairseq-generate (greedy, and lexicon + 3-gram LM) -> layer-wise mutual information -> runs/demo/report.md.

    python -m mamba_hubert.demo --out runs/demo
"""

import argparse
import itertools
import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mamba_hubert.analysis.cli import write_outputs as write_mi_outputs
from mamba_hubert.data.corpus import build_corpus
from mamba_hubert.data.kmeans import run_kmeans
from mamba_hubert.data.mfcc import dump_mfcc
from mamba_hubert.data.ngram_lm import build_arpa
from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config, count_parameters
from mamba_hubert.pipeline import generate_wer, hydra_train, run_console_script

SPLITS = ("train", "valid", "test")
# title -> (pretraining config, fine-tuned and decoded?)
MODELS = {
    "Mamba-HuBERT (ConBiMamba)": ("tiny_conbimamba", True),
    "Transformer HuBERT": ("tiny_transformer", True),
    "Mamba-HuBERT (ExtBiMamba)": ("tiny_ext_bimamba", False),
}
# Lexicon + LM decoding: chosen on the valid split of a development run of this demo (ConBiMamba, 47% letter
# errors; grid 1-6 x -1-3: valid WER 79.4% here, 82.3% at 4 / 1, over 84% at 6 or at word score 3).
LM_WEIGHT = 2.0
WORD_SCORE = 0.0
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
    x_key = "valid_num_updates" if kind == "valid" else "num_updates"
    for name, metrics in curves.items():
        rows = [r for r in metrics[kind] if key in r and x_key in r]
        ax.plot([float(r[x_key]) for r in rows], [float(r[key]) for r in rows], label=name)
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prefixed(name: str) -> Callable[[str], None]:
    """A progress printer tagging each line with the run it comes from (two runs print side by side)."""
    return lambda line: log(f"[{name}] {line}")


def timed(times: dict[str, float], name: str, step, *args):
    """Runs one stage, logging its start and wall time into `times`."""
    log(f"== {name}")
    start = time.time()
    result = step(*args)
    times[name] = time.time() - start
    log(f"== {name}: {times[name]:.0f} s")
    return result


def mi_pattern(rows: list[dict]) -> str:
    """Words for the shape of an I(X;T_i) curve, judged on the seed means with the seed spread as tolerance."""
    means = [r["mi_xt"]["mean"] for r in rows]
    spread = max(max(r["mi_xt"]["std"] for r in rows), 1e-3)
    low = min(range(len(means)), key=means.__getitem__)
    if all(b < a + spread for a, b in itertools.pairwise(means)) and means[-1] < means[0] - spread:
        return "falls with depth (monotone within the seed spread)"
    if 0 < low < len(means) - 1 and means[-1] > means[low] + spread and means[low] < means[0] - spread:
        return f"falls to layer {low + 1}, then rises"
    return "no clear trend beyond the seed spread"


def mi_verdict(layers: dict[str, list[dict]]) -> list[str]:
    """The report's plain statement of whether the paper's two MI patterns show in these models."""
    shapes = {name: mi_pattern(rows) for name, rows in layers.items()}
    alone = [n for n in shapes if n.startswith("Mamba") and "CTC" not in n]
    with_head = [n for n in shapes if n.startswith("Mamba") and "CTC" in n]

    def listing(names: list[str]) -> str:
        return "; ".join(f"{n}: {shapes[n]}" for n in names) or "no such model in this run"

    lines = [
        f"The paper's first pattern, I(X;T_i) falling layer by layer in Mamba-HuBERT alone: {listing(alone)}.",
        "",
        ("Its second, a fall then a rise when the model is followed by a module that reconstructs its input (the "
         f"paper's Conformer head): {listing(with_head)}. `hubert_ctc`'s head is one linear layer, which "
         "reconstructs nothing, so no rise is what the paper predicts for it; this demo does not test a "
         "reconstruction-capable head."),
    ]
    if any(r.get("mi_ty", {}).get("mean", 0.0) < 0 for rows in layers.values() for r in rows):
        lines += ["", ("A negative I(T_i;Y) is a probe that did worse on held-out frames than the label prior: "
                       "no measurable phone information (mutual information itself is never negative).")]
    return lines


def run_demo(out: Path, minutes: float, pretrain_updates: int, finetune_updates: int, clusters: int,
             jobs: int, seed: int, pretrain_only_updates: int) -> Path:
    """The whole chain into `out`; models that are only pretrained (for the MI comparison) take
    `pretrain_only_updates`."""
    out = out.resolve()
    corpus, mfcc_dir, labels = out / "corpus", out / "features" / "mfcc", out / "labels" / "iter1"
    times: dict[str, float] = {}
    demo_start = time.time()

    def make_corpus() -> None:
        if (corpus / "corpus.json").exists():
            if not (corpus / "lm.txt").exists():
                raise SystemExit(f"{corpus} was built by an older version (it has no lm.txt): remove it, or "
                                 "choose another --out")
            built = json.loads((corpus / "corpus.json").read_text())
            if (built.get("minutes_requested"), built.get("seed")) != (minutes, seed):
                raise SystemExit(f"{corpus} was built with --minutes {built.get('minutes_requested')} --seed "
                                 f"{built.get('seed')}, not {minutes:g} / {seed}: remove it, or choose another --out")
            log(f"reusing {corpus}")
        else:
            build_corpus(str(corpus), minutes, jobs=jobs, seed=seed, log=log)

    def make_labels() -> None:
        for split in SPLITS:
            dump_mfcc(str(corpus), split, str(mfcc_dir), 1, 0)
        run_kmeans(str(mfcc_dir), str(labels), SPLITS, clusters, seed=seed, n_init=5)

    timed(times, "corpus", make_corpus)
    timed(times, "MFCC + k-means labels", make_labels)
    lm = timed(times, "3-gram LM (IRSTLM)", build_arpa, corpus / "lm.txt", corpus / "lm.arpa")
    lm_decoding = ["--ctc-lexicon", str(corpus / "lexicon.txt"), "--ctc-lm", str(lm), "--ctc-lm-weight",
                   f"{LM_WEIGHT:g}", "--ctc-word-score", f"{WORD_SCORE:g}"]

    def train_model(title: str, config: str, finetuned: bool) -> dict:
        """One model's chain: pretrain, then (if asked) fine-tune and decode; one thread, beside another chain."""
        model_dir = out / "models" / config
        echo = prefixed(config)
        pretrained = model_dir / "pretrain" / "checkpoint_best.pt"
        text = timed(times, f"pretrain {config}", hydra_train, f"pretrain/{config}", [
            f"task.data={corpus}", f"task.label_dir={labels}", f"checkpoint.save_dir={pretrained.parent}",
            f"optimization.max_update={pretrain_updates if finetuned else pretrain_only_updates}",
            "common.log_format=json", f"common.seed={seed}",
        ], model_dir / "pretrain.log", echo, 1)
        result = {"config": config, "pretrained": pretrained, "pretrain_curves": read_metrics(text),
                  "params": count_parameters(build_from_config(DEFAULT_CONFIG_DIR, config, clusters))["total"]}
        if finetuned:
            checkpoint = model_dir / "finetune" / "checkpoint_best.pt"
            text = timed(times, f"fine-tune {config}", hydra_train, "finetune/tiny_ctc", [
                f"task.data={corpus}", f"task.label_dir={corpus}", f"checkpoint.save_dir={checkpoint.parent}",
                f"model.w2v_path={pretrained}", f"optimization.max_update={finetune_updates}",
                "common.log_format=json", f"common.seed={seed}",
            ], model_dir / "finetune.log", echo, 1)
            wer = timed(times, f"decode {config}", generate_wer, corpus, corpus, checkpoint, "test",
                        model_dir / "generate_test.log", echo, 1)
            wer_lm = timed(times, f"decode {config} with lexicon + LM", generate_wer, corpus, corpus, checkpoint,
                           "test", model_dir / "generate_test_lm.log", echo, 1, lm_decoding)
            log(f"{title}: test WER {wer:.2f}% greedy, {wer_lm:.2f}% with lexicon + LM")
            curves = read_metrics(text)
            result.update(test_wer=wer, test_wer_lm=wer_lm, checkpoint=checkpoint, finetune_curves=curves,
                          valid_uer=min(float(row["valid_uer"]) for row in curves["valid"]))
        return result

    mi_args = ["--data", str(corpus), "--subset", "test", "--max-utterances", "40", "--max-frames", "2500",
               "--mine-iterations", "1500"]  # sized to keep the demo within 30 minutes

    def analyse(name: str, checkpoint: Path, part: str) -> dict:
        """One checkpoint's layer-wise MI: `mamba-hubert-mi` on one thread, into mi/parts/<part>."""
        part_dir = out / "mi" / "parts" / part
        timed(times, f"mutual information: {name}", run_console_script, [
            "mamba-hubert-mi", "--checkpoint", str(checkpoint), "--name", name, "--out", str(part_dir), *mi_args,
        ], part_dir / "mi.log", None, 1)
        return json.loads((part_dir / "mi.json").read_text())

    # Two jobs at a time, one thread each: on 2 cores ~1.4x faster than one job on 2 threads, while a third
    # process halves the throughput (300 pretraining updates: 175-203 s each for two, 514-583 s each for three).
    # A model's MI starts as soon as its chain ends, on the core the chain freed, after the training still queued.
    start = time.time()
    chains = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {pool.submit(train_model, title, *spec): title for title, spec in MODELS.items()}
        mi_futures = {}
        for future in as_completed(futures):
            title = futures[future]
            chains[title] = chain = future.result()
            mi_futures[title] = pool.submit(analyse, title, chain["pretrained"], chain["config"])
            if "checkpoint" in chain:
                mi_futures[f"{title} + CTC"] = pool.submit(
                    analyse, f"{title} + CTC", chain["checkpoint"], f"{chain['config']}_ctc")
        mi_parts = {name: future.result() for name, future in mi_futures.items()}
    times["models and MI (side by side)"] = time.time() - start
    chains = {title: chains[title] for title in MODELS}
    results = {title: {k: chain[k] for k in ("config", "params", "test_wer", "test_wer_lm", "valid_uer") if k in chain}
               for title, chain in chains.items()}
    for title, chain in chains.items():
        if "checkpoint" in chain:
            results[title]["checkpoint"] = str(chain["checkpoint"])
    pretrain_curves = {title: chain["pretrain_curves"] for title, chain in chains.items()}
    finetune_curves = {title: chain["finetune_curves"] for title, chain in chains.items() if "finetune_curves" in chain}
    mi_order = [*MODELS, *(f"{title} + CTC" for title, chain in chains.items() if "checkpoint" in chain)]
    first = mi_parts[mi_order[0]]
    mi = {"subset": first["subset"], "utterances": first["utterances"], "seeds": first["seeds"],
          "checkpoints": {name: mi_parts[name]["checkpoints"][name] for name in mi_order},
          "layers": {name: mi_parts[name]["layers"][name] for name in mi_order}}
    write_mi_outputs(out / "mi", mi)

    plot_curves(pretrain_curves, "loss", "train_inner", "pretraining loss (train)", out / "pretrain_loss.png")
    plot_curves(finetune_curves, "loss", "train_inner", "CTC loss (train)", out / "finetune_loss.png")
    plot_curves(finetune_curves, "valid_uer", "valid", "valid letter error rate (%)", out / "finetune_valid_uer.png")
    plot_curves(finetune_curves, "valid_wer", "valid", "valid WER (%)", out / "finetune_valid_wer.png")
    (out / "results.json").write_text(
        json.dumps({"models": results, "wall_seconds": times, "total_seconds": time.time() - demo_start}, indent=2)
        + "\n")
    report = write_report(out, results, mi, json.loads((corpus / "corpus.json").read_text()), times,
                          time.time() - demo_start, pretrain_updates, pretrain_only_updates, finetune_updates, clusters)
    log(f"report: {report}")
    return report


def write_report(out: Path, results: dict, mi: dict, corpus: dict, times: dict[str, float], total_seconds: float,
                 pretrain_updates: int, pretrain_only_updates: int, finetune_updates: int, clusters: int) -> Path:
    splits = ", ".join(f"{s} {v['utterances']} utterances / {v['minutes']} min" for s, v in corpus["splits"].items())
    only = [r["config"] for r in results.values() if "test_wer" not in r]
    if only and pretrain_only_updates != pretrain_updates:
        pretraining = (f"{pretrain_updates} updates ({', '.join(f'`{c}`' for c in only)}, pretrained only for the MI "
                       f"comparison: {pretrain_only_updates})")
    else:
        pretraining = f"{pretrain_updates} updates"
    lines = [
        "# mamba-hubert demo report", "",
        f"Corpus (synthetic TTS speech): {splits}. Test voices and sentences are held out of training.",
        (f"Labels: k-means ({clusters} clusters) on MFCC at 100 Hz. Pretraining: {pretraining}; "
         f"CTC fine-tuning (fairseq `hubert_ctc`): {finetune_updates} updates. The test split decoded with "
         "`fairseq-generate --scoring wer`: greedy, and a lexicon + 3-gram LM beam search (flashlight-text; "
         f"the LM estimated by IRSTLM on {corpus['lm']['sentences']} sentences of the text pool's training share, "
         f"never a valid or test sentence; {corpus['lm']['lexicon_words']} lexicon words, "
         f"{corpus['lm']['test_oov_percent']}% of test words outside it; LM weight {LM_WEIGHT:g}, word score "
         f"{WORD_SCORE:g}). Letter error: the best valid-split letter error rate fairseq logged during fine-tuning."),
        "",
        "| model | config | parameters | test WER (greedy) | test WER (lexicon + LM) | valid letter error |",
        "|---|---|---|---|---|---|",
    ]
    for title, r in results.items():
        if "test_wer" in r:
            scores = f"{r['test_wer']:.2f}% | {r['test_wer_lm']:.2f}% | {r['valid_uer']:.1f}%"
        else:
            scores = "(pretrained only) | - | -"
        lines.append(f"| {title} | `{r['config']}` | {r['params'] / 1e6:.2f} M | {scores} |")
    lines += ["", "## Training curves", "", "![pretraining loss](pretrain_loss.png)",
              "![CTC loss](finetune_loss.png)",
              "![valid letter error rate](finetune_valid_uer.png)", "![valid WER](finetune_valid_wer.png)", "",
              "## Layer-wise mutual information", "",
              (f"I(X;T_i) by MINE (mean ± spread over seeds {mi['seeds']}, fresh statistics network per estimate, "
               f"held-out frames) and the phone-probe bound I(T_i;Y), on {mi['utterances']} test utterances, "
               "padded frames trimmed. Data: `mi/mi.json`."), "",
              "![I(X;T) per layer](mi/mi_xt.png)", "![information plane](mi/information_plane.png)", "",
              "| model | I(X;T_i) per layer (nats) | I(T_i;Y) per layer (nats) | I(X;T) curve |", "|---|---|---|---|"]
    for name, rows in mi["layers"].items():
        xt = " / ".join(f"{r['mi_xt']['mean']:.2f}±{r['mi_xt']['std']:.2f}" for r in rows)
        ty = " / ".join(f"{r['mi_ty']['mean']:.2f}" for r in rows if "mi_ty" in r)
        lines.append(f"| {name} | {xt} | {ty} | {mi_pattern(rows)} |")
    lines += ["", *mi_verdict(mi["layers"]), "", "## Wall times (2 CPU cores)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in times.items()]
    lines.append(f"| total (wall clock; model and MI stages ran side by side) | {total_seconds:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    # More audio costs ~1 s per minute to synthesise but, at these update counts, buys little: measured with ConBiMamba
    # (1,500 + 2,000 updates), valid letter errors 36.0% / 35.1% / 34.0% at 60 / 90 / 120 minutes, WER on the
    # 60-minute corpus's test split 81.1% / 81.6% / 80.2%.
    parser.add_argument("--minutes", type=float, default=60.0, help="corpus size (all splits)")
    # sized so that the whole demo takes under 30 minutes on 2 cores
    parser.add_argument("--pretrain-updates", type=int, default=1500)
    parser.add_argument("--finetune-updates", type=int, default=2000)
    parser.add_argument("--pretrain-only-updates", type=int, default=1000,
                        help="for the models only pretrained (ExtBiMamba, for the MI comparison)")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    run_demo(args.out, args.minutes, args.pretrain_updates, args.finetune_updates, args.clusters, args.jobs,
             args.seed, args.pretrain_only_updates)


if __name__ == "__main__":
    main()
