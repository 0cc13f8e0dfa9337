"""CPU benchmark: updates per second of the demo's tiny models on each front end, as the demo trains them.

    python benchmarks/bench_tiny_update.py --demo runs/demo --out benchmarks/results/tiny_update
        [--work runs/bench_tiny_update] [--models tiny_conbimamba tiny_transformer] [--updates 300]

Needs a finished `make demo` run (--demo) for its corpus and labels. Per model, `fairseq-hydra-train` pretrains it
--updates updates on HuBERT's CNN and on the log-mel front end (`model.extractor_mode=fbank` at 50 Hz, the demo's
overrides and learning rate), the two side by side with one thread each, as the demo runs two trainings; then
`hubert_ctc` fine-tunes each result --updates updates, side by side again. Validation is off; updates per second is
the median of fairseq's own per-10-updates `ups` after the first 50 updates (start-up). The ratio log-mel / CNN is
the speed-up of the demo's front end change, measured in one run.
"""

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from machine import run_header, write_results

WARM_UP_UPDATES = 50
DEFAULT_MODELS = ("tiny_conbimamba", "tiny_transformer")


def updates_per_second(log_text: str) -> float:
    from mamba_hubert.demo.common import read_metrics

    rows = read_metrics(log_text)["train_inner"]
    return statistics.median(float(r["ups"]) for r in rows if int(r["num_updates"]) > WARM_UP_UPDATES)


def run_model(model: str, demo: Path, out: Path, updates: int) -> dict[str, dict[str, float]]:
    """{stage: {front end: updates/s}} for one model, each stage's two front ends side by side."""
    from mamba_hubert.demo.common import run_jobs
    from mamba_hubert.demo.fairseq_tools import hydra_train
    from mamba_hubert.demo.main_job import FRONT_ENDS, front_end_overrides

    corpus, common = demo / "corpus", ["common.log_format=json", "common.seed=1", "dataset.disable_validation=true",
                                       f"optimization.max_update={updates}"]
    labels = {"cnn": demo / "labels" / "iter1", "fbank": demo / "labels" / "iter1_50hz"}

    def pretrain(front_end: str) -> float:
        save = out / model / front_end / "pretrain"
        return updates_per_second(hydra_train(f"pretrain/{model}", [
            f"task.data={corpus}", f"task.label_dir={labels[front_end]}", f"checkpoint.save_dir={save}", *common,
            *front_end_overrides(front_end, model)], save.parent / "pretrain.log", None, 1))

    def finetune(front_end: str) -> float:
        save = out / model / front_end / "finetune"
        return updates_per_second(hydra_train("finetune/tiny_ctc", [
            f"task.data={corpus}", f"task.label_dir={corpus}", f"checkpoint.save_dir={save}", "checkpoint.no_save=true",
            f"model.w2v_path={save.parent / 'pretrain' / 'checkpoint_last.pt'}", *common],
            save.parent / "finetune.log", None, 1))

    pretraining = run_jobs({f: ((), lambda f=f: pretrain(f)) for f in FRONT_ENDS})
    finetuning = run_jobs({f: ((), lambda f=f: finetune(f)) for f in FRONT_ENDS})
    return {"pretraining": pretraining, "hubert_ctc": finetuning}


def markdown(results: dict[str, dict[str, dict[str, float]]], meta: dict) -> str:
    lines = ["# Updates per second of the demo's tiny models, CNN vs log-mel front end (CPU)", "",
             (f"`{meta['command']}`: {meta['cpu']}, one thread per training, the two front ends side by side, "
              f"torch {meta['torch']}, {meta['updates']} updates each, {meta['wall_s']:.0f} s."), "",
             "| model | stage | CNN updates/s | log-mel updates/s | log-mel / CNN |", "|---|---|---|---|---|"]
    for model, stages in results.items():
        for stage, rates in stages.items():
            lines.append(f"| {model} | {stage} | {rates['cnn']:.2f} | {rates['fbank']:.2f} | "
                         f"{rates['fbank'] / rates['cnn']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished demo run")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_tiny_update"), help="results.json, results.md")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_tiny_update/runs"),
                        help="the trainings' checkpoints and logs")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="pretraining config names")
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args(argv)
    demo = args.demo.resolve()
    for needed in (demo / "corpus" / "train.tsv", demo / "labels" / "iter1" / "train.km",
                   demo / "labels" / "iter1_50hz" / "train.km"):
        if not needed.exists():
            parser.error(f"{needed} is missing: --demo must be a finished `make demo` run (log-mel front end)")
    if args.updates <= 2 * WARM_UP_UPDATES:
        parser.error(f"--updates must exceed {2 * WARM_UP_UPDATES}: the first {WARM_UP_UPDATES} are start-up")

    started = time.time()
    results = {}
    for model in args.models:
        results[model] = run_model(model, demo, args.work.resolve(), args.updates)
        for stage, rates in results[model].items():
            print(f"{model} {stage}: CNN {rates['cnn']:.2f}, log-mel {rates['fbank']:.2f} updates/s", flush=True)
    meta = {**run_header(__file__, argv),
            "updates": args.updates,
            "wall_s": round(time.time() - started, 1)}
    write_results(args.out, {"meta": meta, "models": results}, markdown(results, meta), None, "")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
