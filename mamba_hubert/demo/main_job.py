"""The main job: corpus -> MFCC k-means labels -> pretrain tiny Mamba-HuBERTs and a tiny Transformer HuBERT
(fairseq-hydra-train) -> fine-tune with fairseq's hubert_ctc -> decode the held-out test split with
fairseq-generate (greedy, and lexicon + 3-gram LM) -> layer-wise mutual information -> runs/demo/report.md.

    python -m mamba_hubert.demo --out runs/demo
"""

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from mamba_hubert.analysis.cli import write_outputs as write_mi_outputs
from mamba_hubert.analysis.verdict import RULE_SUMMARY
from mamba_hubert.command_line import warnings_only
from mamba_hubert.data.judge import JUDGE_NAME
from mamba_hubert.data.kmeans import subsample_labels
from mamba_hubert.data.voices import DEFAULT_VOICES
from mamba_hubert.demo.common import (
    BEAM,
    DEFAULT_CORPUS_CACHE,
    LM_WEIGHT,
    SPLITS,
    WORD_SCORE,
    decode_test,
    human_speech,
    job_console,
    judge_subset,
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
    transcribe_agreement,
    wer_by_speaker,
)
from mamba_hubert.demo.fairseq_tools import generate_wer, hydra_train
from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config, count_parameters

# title -> (pretraining config, fine-tuned and decoded?)
MODELS = {
    "Mamba-HuBERT (ConBiMamba)": ("tiny_conbimamba", True),
    "Transformer HuBERT": ("tiny_transformer", True),
    "Mamba-HuBERT (ExtBiMamba)": ("tiny_ext_bimamba", False),
}


def mi_verdict(mi: dict) -> list[str]:
    """The report's plain statement of whether the paper's two MI patterns show in these models."""
    shapes = {name: verdicts["mine"]["verdict"] for name, verdicts in mi["verdicts"].items() if "mine" in verdicts}
    alone = [n for n in shapes if n.startswith("Mamba") and "CTC" not in n]
    with_head = [n for n in shapes if n.startswith("Mamba") and "CTC" in n]

    def listing(names: list[str]) -> str:
        return "; ".join(f"{n}: {shapes[n]}" for n in names) or "no such model in this run"

    lines = [
        f"The paper's first pattern, I(X;T_i) falling layer by layer in Mamba-HuBERT alone: {listing(alone)}.",
        "",
        ("Its second, a fall then a rise when the model is followed by a module that reconstructs its input (the "
         f"paper's Conformer head): {listing(with_head)}. `hubert_ctc`'s head is one linear layer, which "
         "reconstructs nothing, so no rise is what the paper predicts for it; `mamba-hubert-paper` runs the "
         "comparison with a Conformer head."),
    ]
    if any(r.get("mi_ty", {}).get("mean", 0.0) < 0 for rows in mi["layers"].values() for r in rows):
        lines += ["", ("A negative I(T_i;Y) is a probe that did worse on held-out frames than the label prior: "
                       "no measurable phone information (mutual information itself is never negative).")]
    return lines


# The front ends every model of a run shares: the log-mel front end subsampled to 50 Hz (labels: every other 100 Hz
# label), or HuBERT's CNN on the waveform at 50 Hz (which reads every other 100 Hz label itself).
FRONT_ENDS = ("fbank", "cnn")
# Pretraining learning rates on the log-mel front end where they differ from the config's: each model's best of
# 0.001 / 0.003 / 0.005 on the valid split (docs/DEMO_TUNING.md).
FBANK_PRETRAIN_LR = {"tiny_transformer": 0.003}
# Speed perturbation in CTC fine-tuning: on the valid split of held-out voices it bought ~5 points of WER with the LM
# (docs/DEMO_TUNING.md); the valid split of training voices had hidden that.
FINETUNE_SPEEDS = (0.9, 1.0, 1.1)


def front_end_overrides(front_end: str, config: str) -> list[str]:
    """The pretraining overrides that put `config` on `front_end`: extractor, label rate, learning rate."""
    if front_end == "cnn":  # the configs' own
        return []
    lr = FBANK_PRETRAIN_LR.get(config)
    return ["model.extractor_mode=fbank", "task.label_rate=50", *([f"optimization.lr=[{lr:g}]"] if lr else [])]


def finetune_overrides(speeds: Sequence[float]) -> list[str]:
    """The fine-tuning overrides for speed perturbation at `speeds` (none: off)."""
    return [f"++task.speed_perturb=[{','.join(f'{speed:g}' for speed in speeds)}]"] if speeds else []


def run_demo(out: Path, minutes: float, pretrain_updates: int, finetune_updates: int, clusters: int,
             jobs: int, seed: int, pretrain_only_updates: int, front_end: str = "fbank",
             finetune_speeds: Sequence[float] = FINETUNE_SPEEDS, voices: Path = DEFAULT_VOICES,
             corpus_cache: Path = DEFAULT_CORPUS_CACHE) -> Path:
    """The whole chain into `out`; models that are only pretrained (for the MI comparison) take
    `pretrain_only_updates`."""
    if front_end not in FRONT_ENDS:
        raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {front_end!r}")
    out = out.resolve()
    times: dict[str, float] = {}
    demo_start = time.time()
    data = prepare_data(out, minutes, seed, clusters, jobs, times, voices, corpus_cache)
    human = human_speech(out, data.corpus)
    labels = data.labels
    if front_end == "fbank":
        labels = out / "labels" / "iter1_50hz"
        subsample_labels(str(data.labels), str(labels), SPLITS, 2)
    mi_args = ["--data", str(data.corpus), "--subset", "test", "--max-utterances", "40", "--max-frames", "2500",
               "--mine-iterations", "1500"]  # sized to keep the demo within 30 minutes

    with warnings_only("fairseq", "mamba_hubert.models"), warnings.catch_warnings(category=FutureWarning,
                                                                                 action="ignore"):
        params = {config: count_parameters(build_from_config(
            DEFAULT_CONFIG_DIR, config, clusters, [f"++{o}" for o in front_end_overrides(front_end, config)]
        ))["total"] for config, _ in MODELS.values()}

    def pretrain(title: str, config: str, finetuned: bool) -> dict:
        pretrained = out / "models" / config / "pretrain" / "checkpoint_best.pt"
        updates = pretrain_updates if finetuned else pretrain_only_updates
        with progress_bar(f"pretrain {config}", updates, "update") as progress:
            text = timed(times, f"pretrain {config}", hydra_train, f"pretrain/{config}", [
                f"task.data={data.corpus}", f"task.label_dir={labels}", f"checkpoint.save_dir={pretrained.parent}",
                f"optimization.max_update={updates}", "common.log_format=json", f"common.seed={seed}",
                *front_end_overrides(front_end, config),
            ], out / "models" / config / "pretrain.log", tool_output(config, progress), 1)
        return {"pretrained": pretrained, "pretrain_curves": read_metrics(text), "params": params[config]}

    def finetune(config: str) -> dict:
        checkpoint = out / "models" / config / "finetune" / "checkpoint_best.pt"
        with progress_bar(f"fine-tune {config}", finetune_updates, "update") as progress:
            text = timed(times, f"fine-tune {config}", hydra_train, "finetune/tiny_ctc", [
                f"task.data={data.corpus}", f"task.label_dir={data.corpus}",
                f"checkpoint.save_dir={checkpoint.parent}",
                f"model.w2v_path={out / 'models' / config / 'pretrain' / 'checkpoint_best.pt'}",
                f"optimization.max_update={finetune_updates}", "common.log_format=json", f"common.seed={seed}",
                *finetune_overrides(finetune_speeds),
            ], out / "models" / config / "finetune.log", tool_output(config, progress), 1)
        curves = read_metrics(text)
        return {"checkpoint": checkpoint, "finetune_curves": curves,
                "valid_uer": min(float(row["valid_uer"]) for row in curves["valid"])}

    def decode(title: str, config: str) -> dict:
        checkpoint = out / "models" / config / "finetune" / "checkpoint_best.pt"
        # test by fairseq-generate and by mamba-hubert-transcribe, the human clips: greedy and with the LM each
        with progress_bar(f"decode {config}", 6, "decoding") as progress:
            wer, wer_lm = decode_test(data, checkpoint, out / "models" / config, times, config, progress)
            log(f"{title}: test WER {wer:.2f}% greedy, {wer_lm:.2f}% with lexicon + LM")
            by_speaker = {kind: wer_by_speaker(data.corpus, out / "models" / config / f"decode_{kind}", "test")
                          for kind in ("greedy", "lm")}
            agreement = transcribe_agreement(data, checkpoint, out / "models" / config, times, config, progress)
            human_wer = {}
            for kind, flags in (("greedy", ()), ("lm", data.lm_decoding)):
                human_wer[kind] = timed(times, f"decode {config} human speech ({kind})", generate_wer, human, human,
                                        checkpoint, "human", out / "models" / config / f"human_{kind}",
                                        tool_output(config), 1, flags)
                progress.update()
        return {"test_wer": wer, "test_wer_lm": wer_lm, "test_wer_by_speaker": by_speaker,
                "transcribe_agreement": agreement, "human_wer": human_wer}

    mi_progress = progress_bar("mutual information", sum(2 if finetuned else 1 for _, finetuned in MODELS.values()),
                               "checkpoint")

    def analyse(name: str, checkpoint: Path, part: str) -> dict:
        return layerwise_mi_of(checkpoint, name, out / "mi" / "parts" / part, mi_args, times, mi_progress)

    # Two jobs at a time, one thread each: the fastest use of 2 cores for models this small (docs/DEMO_TUNING.md).
    # A model's MI starts as soon as its checkpoint exists and a core is free.
    graph = {}
    for title, (config, finetuned) in MODELS.items():
        graph[f"pretrain {config}"] = ((), lambda t=title, c=config, f=finetuned: pretrain(t, c, f))
        if finetuned:
            graph[f"fine-tune {config}"] = ((f"pretrain {config}",), lambda c=config: finetune(c))
    graph["judge"] = ((), lambda: {"test": judge_subset(data.corpus, "test", times),
                                   "human": judge_subset(human, "human", times)["all"]})
    for title, (config, finetuned) in MODELS.items():
        if finetuned:
            graph[f"decode {config}"] = ((f"fine-tune {config}",), lambda t=title, c=config: decode(t, c))
    mi_order = []
    for title, (config, finetuned) in MODELS.items():
        checkpoint = out / "models" / config / "pretrain" / "checkpoint_best.pt"
        graph[f"MI {title}"] = ((f"pretrain {config}",), lambda t=title, ck=checkpoint, c=config: analyse(t, ck, c))
        mi_order.append(title)
        if finetuned:
            checkpoint = out / "models" / config / "finetune" / "checkpoint_best.pt"
            name = f"{title} + CTC"
            graph[f"MI {name}"] = ((f"fine-tune {config}",),
                                   lambda n=name, ck=checkpoint, c=config: analyse(n, ck, f"{c}_ctc"))
            mi_order.append(name)
    start = time.time()
    with mi_progress:
        done = run_jobs(graph)
    times["models and MI (side by side)"] = time.time() - start

    results, pretrain_curves, finetune_curves = {}, {}, {}
    for title, (config, finetuned) in MODELS.items():
        chain = {**done[f"pretrain {config}"]}
        if finetuned:
            chain.update(done[f"fine-tune {config}"], **done[f"decode {config}"])
            finetune_curves[title] = chain["finetune_curves"]
        pretrain_curves[title] = chain["pretrain_curves"]
        results[title] = {"config": config, **{k: chain[k] for k in (
            "params", "test_wer", "test_wer_lm", "valid_uer", "test_wer_by_speaker", "transcribe_agreement",
            "human_wer") if k in chain}}
        if finetuned:
            results[title]["checkpoint"] = str(chain["checkpoint"])
    mi = merge_mi_parts({name: done[f"MI {name}"] for name in mi_order})
    write_mi_outputs(out / "mi", mi)

    plot_curves(pretrain_curves, "loss", "train_inner", "pretraining loss (train)", out / "pretrain_loss.png")
    plot_curves(finetune_curves, "loss", "train_inner", "CTC loss (train)", out / "finetune_loss.png")
    plot_curves(finetune_curves, "valid_uer", "valid", "valid letter error rate (%)", out / "finetune_valid_uer.png")
    plot_curves(finetune_curves, "valid_wer", "valid", "valid WER (%)", out / "finetune_valid_wer.png")
    judged = done["judge"]
    (out / "results.json").write_text(
        json.dumps({"models": results, "judge": {"name": JUDGE_NAME, **judged}, "front_end": front_end, "seed": seed,
                    "wall_seconds": times, "total_seconds": time.time() - demo_start}, indent=2) + "\n")
    report = write_report(out, results, mi, json.loads((data.corpus / "corpus.json").read_text()), times,
                          time.time() - demo_start, pretrain_updates, pretrain_only_updates, finetune_updates, clusters,
                          front_end, finetune_speeds, judged)
    log(f"report: {report}")
    return report


FRONT_END_TEXT = {"cnn": "HuBERT's CNN on the waveform (50 Hz, every other label)",
                  "fbank": "80-bin log-mel subsampled to 50 Hz by two convs (every other label)"}


def write_report(out: Path, results: dict, mi: dict, corpus: dict, times: dict[str, float], total_seconds: float,
                 pretrain_updates: int, pretrain_only_updates: int, finetune_updates: int, clusters: int,
                 front_end: str = "fbank", finetune_speeds: Sequence[float] = FINETUNE_SPEEDS,
                 judged: dict | None = None) -> Path:
    splits = ", ".join(f"{s} {v['utterances']} utterances / {v['minutes']} min" for s, v in corpus["splits"].items())
    engines = sorted({voice["engine"] for voice in corpus.get("voices", ())})
    unseen_engines = {split: sorted({v["engine"] for v in corpus.get("voices", ()) if v["split"] == split}
                                    - {v["engine"] for v in corpus.get("voices", ()) if v["split"] == "train"})
                      for split in ("valid", "test")}
    only = [r["config"] for r in results.values() if "test_wer" not in r]
    if only and pretrain_only_updates != pretrain_updates:
        pretraining = (f"{pretrain_updates} updates ({', '.join(f'`{c}`' for c in only)}, pretrained only for the MI "
                       f"comparison: {pretrain_only_updates})")
    else:
        pretraining = f"{pretrain_updates} updates"
    speed_text = (f"training audio played at speeds {' / '.join(f'{speed:g}' for speed in finetune_speeds)}"
                  if finetune_speeds else "no augmentation")
    lines = [
        "# mamba-hubert demo report", "",
        (f"Corpus (synthetic speech of {', '.join(engines) or 'TTS engines'}): {splits}; built in "
         f"{times.get('corpus', 0):.0f} s of this run's {total_seconds:.0f} s (0 when reused from the cache). Valid and "
         "test each hold out their own voices and sentences: neither split's speakers are heard in training. Test "
         f"also hears an engine training never hears ({', '.join(unseen_engines['test']) or 'none'}); valid does not "
         f"({', '.join(unseen_engines['valid']) or 'no unseen engine'}), so valid measures unseen voices of known "
         "engines only."),
        (f"Labels: k-means ({clusters} clusters) on MFCC at 100 Hz. Front end: "
         f"{FRONT_END_TEXT[front_end]}. Pretraining: {pretraining}; "
         f"CTC fine-tuning (fairseq `hubert_ctc`): {finetune_updates} updates, "
         f"{speed_text}. The test split decoded with "
         "`fairseq-generate --scoring wer`: greedy, and a lexicon + 3-gram LM beam search (flashlight-text; "
         f"the LM estimated by IRSTLM on {corpus['lm']['sentences']} sentences of the text pool's training share, "
         f"never a valid or test sentence; {corpus['lm']['lexicon_words']} lexicon words, "
         f"{corpus['lm']['test_oov_percent']}% of test words outside it; LM weight {LM_WEIGHT:g}, word score "
         f"{WORD_SCORE:g}, beam {BEAM}). Letter error: the best valid-split letter error rate fairseq logged during "
         "fine-tuning."),
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
    if judged:
        lines.append(f"| {JUDGE_NAME}, greedy (an independent reference, not trained here) | - | 74 M | "
                     f"{judged['test']['all']['wer']:.2f}% | - | - |")
    by_speaker = [f"{title}: " + ", ".join(f"{speaker} {wer:.1f}% / {r['test_wer_by_speaker']['lm'][speaker]:.1f}%"
                                           for speaker, wer in r["test_wer_by_speaker"]["greedy"].items()
                                           if speaker != "all")
                  for title, r in results.items() if "test_wer_by_speaker" in r]
    if by_speaker:
        lines += ["", f"Test WER by held-out speaker (greedy / lexicon + LM): {'; '.join(by_speaker)}."]
    if judged:
        lines += ["", "The judge's test WER by held-out speaker: " + ", ".join(
            f"{speaker} {result['wer']:.1f}%" for speaker, result in judged["test"].items() if speaker != "all") + "."]
        human = [f"{title} {r['human_wer']['greedy']:.1f}% greedy / {r['human_wer']['lm']:.1f}% with the lexicon + LM"
                 for title, r in results.items() if "human_wer" in r]
        lines += ["", ("Recorded human speech (Debian's pocketsphinx-testdata: five LibriVox sentences read by one "
                       f"woman, five card names by another speaker; {judged['human']['words']} words, a small sample): "
                       f"WER {'; '.join(human)}; the judge {judged['human']['wer']:.1f}%.")]
    agreements = [f"{title}: {r['transcribe_agreement']['greedy'][0]}/{r['transcribe_agreement']['greedy'][1]} "
                  f"greedy, {r['transcribe_agreement']['lm'][0]}/{r['transcribe_agreement']['lm'][1]} with the "
                  "lexicon + LM" for title, r in results.items() if "transcribe_agreement" in r]
    if agreements:
        lines += ["", ("`mamba-hubert-transcribe` on the same test files (the same checkpoint and decoder settings) "
                       f"printed fairseq-generate's words for {'; '.join(agreements)} files.")]
    lines += ["", "## Training curves", "", "![pretraining loss](pretrain_loss.png)",
              "![CTC loss](finetune_loss.png)",
              "![valid letter error rate](finetune_valid_uer.png)", "![valid WER](finetune_valid_wer.png)", "",
              "## Layer-wise mutual information", "",
              (f"I(X;T_i) by MINE (mean ± spread over seeds {mi['seeds']}, fresh statistics network per estimate, "
               f"held-out frames) and the phone-probe bound I(T_i;Y), on {mi['utterances']} test utterances, "
               "padded frames trimmed. Data: `mi/mi.json`."), "",
              "![I(X;T) per layer](mi/mi_xt.png)", "![information plane](mi/information_plane.png)", "",
              (f"The I(X;T) curve's verdict ({RULE_SUMMARY}) is MINE's; `mi/mi.json` has SMILE's beside it."), "",
              "| model | I(X;T_i) per layer (nats) | I(T_i;Y) per layer (nats) | I(X;T) curve |", "|---|---|---|---|"]
    for name, rows in mi["layers"].items():
        xt = " / ".join(f"{r['mi_xt']['mean']:.2f}±{r['mi_xt']['std']:.2f}" for r in rows)
        ty = " / ".join(f"{r['mi_ty']['mean']:.2f}" for r in rows if "mi_ty" in r)
        shape = mi["verdicts"].get(name, {}).get("mine", {}).get("verdict", "-")
        lines.append(f"| {name} | {xt} | {ty} | {shape} |")
    lines += ["", *mi_verdict(mi), "", "## Wall times (2 CPU cores)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in times.items()]
    lines.append(f"| total (wall clock; model and MI stages ran side by side) | {total_seconds:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    # at these update counts more audio buys little (docs/DEMO_TUNING.md)
    parser.add_argument("--minutes", type=float, default=60.0, help="corpus size (all splits)")
    # sized so that the whole demo takes under 30 minutes on 2 cores; of the time left after 1,500 + 2,000 updates,
    # fine-tuning makes better use than pretraining (docs/DEMO_TUNING.md)
    parser.add_argument("--pretrain-updates", type=int, default=1500)
    parser.add_argument("--finetune-updates", type=int, default=4000)
    parser.add_argument("--pretrain-only-updates", type=int, default=1000,
                        help="for the models only pretrained (ExtBiMamba, for the MI comparison)")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--front-end", choices=FRONT_ENDS, default="fbank",
                        help="every model's front end: log-mel (extractor_mode=fbank), or HuBERT's CNN on the waveform")
    parser.add_argument("--speed-perturb", type=float, nargs="*", default=list(FINETUNE_SPEEDS),
                        help="speed factors drawn per utterance in CTC fine-tuning; none (a bare flag) turns it off")
    parser.add_argument("--voices", type=Path, default=DEFAULT_VOICES, help="the corpus's voices file")
    parser.add_argument("--corpus-cache", type=Path, default=DEFAULT_CORPUS_CACHE,
                        help="where corpora are built once and shared (with `make paper`)")
    parser.add_argument("--verbose", action="store_true",
                        help="every line of fairseq's logs on the console (each run's log is in its folder either way)")
    args = parser.parse_args(argv)
    with job_console(args.verbose):
        run_demo(args.out, args.minutes, args.pretrain_updates, args.finetune_updates, args.clusters, args.jobs,
                 args.seed, args.pretrain_only_updates, args.front_end, args.speed_perturb, args.voices,
                 args.corpus_cache)


if __name__ == "__main__":
    main()
