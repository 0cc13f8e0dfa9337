"""Runs fairseq's own command-line tools (training, decoding), and this package's, as subprocesses, with their logs
kept."""

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[1]
CONFIG_ROOT = PLUGIN_DIR.parent / "examples" / "config"
_WER = re.compile(r"^Generate .* WER: ([0-9.]+)$", re.MULTILINE)


def run_console_script(args: list[str], log_path: Path, echo: Callable[[str], None] | None = None,
                       threads: int | None = None) -> str:
    """Runs one console script of this interpreter's environment (fairseq's or this package's); writes its whole
    output to `log_path`, passes each line to `echo` as it comes, and raises with the output's end if it fails. It runs in
    `log_path`'s folder, where hydra leaves its own files. `threads` caps its intra-op threads (two runs side
    by side with one thread each beat one run with two on small models)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(log_path, "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=log_path.parent
    ) as process:
        for line in process.stdout:
            log.write(line)
            lines.append(line)
            if echo is not None:
                echo(line.rstrip())
    output = "".join(lines)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed ({process.returncode}); log: {log_path}\n{output[-4000:]}")
    return output


def hydra_train(config: str, overrides: list[str], log_path: Path, echo: Callable[[str], None] | None = None,
                threads: int | None = None) -> str:
    """`fairseq-hydra-train` with an example config, e.g. config="pretrain/tiny_conbimamba"."""
    group, name = config.split("/")
    args = ["fairseq-hydra-train", "--config-dir", str(CONFIG_ROOT / group), "--config-name", name,
            f"common.user_dir={PLUGIN_DIR}", *overrides]
    return run_console_script(args, log_path, echo, threads)


def generate_wer(data_dir: Path, label_dir: Path, checkpoint: Path, subset: str, results_dir: Path,
                 echo: Callable[[str], None] | None = None, threads: int | None = None,
                 decoder_args: Sequence[str] = ()) -> float:
    """Decodes `subset` with `fairseq-generate --scoring wer --results-path results_dir`: greedy CTC, or what
    `decoder_args` choose (e.g. `--ctc-lexicon L --ctc-lm LM`). fairseq writes the hypotheses and its scorer's line
    to `generation_results(results_dir, subset)`; the console log goes to results_dir/generate.log. Returns the WER
    of that scorer line."""
    run_console_script(
        ["fairseq-generate", str(data_dir), "--user-dir", str(PLUGIN_DIR), "--task", "mamba_hubert_pretraining",
         "--fine-tuning", "--labels", '["ltr"]', "--single-target", "--pad-audio", "--label-dir", str(label_dir),
         "--path", str(checkpoint), "--gen-subset", subset, "--scoring", "wer", "--post-process", "letter",
         "--cpu", "--max-tokens", "1000000", "--required-batch-size-multiple", "1", "--results-path",
         str(results_dir), *decoder_args],
        results_dir / "generate.log", echo, threads,
    )
    results = generation_results(results_dir, subset)
    scores = _WER.findall(results.read_text())
    if len(scores) != 1:
        raise RuntimeError(f"fairseq-generate wrote {len(scores)} WER lines to {results}")
    return float(scores[0])


def generation_results(results_dir: Path, subset: str) -> Path:
    """The file fairseq-generate writes with `--results-path`: S-/T-/H-/D-/P- lines, then its scorer's result."""
    return results_dir / f"generate-{subset}.txt"


def decoded_hypotheses(results_dir: Path, subset: str) -> dict[int, str]:
    """The D- lines of `generation_results`: {utterance index in the manifest: decoded words}."""
    lines = generation_results(results_dir, subset).read_text().splitlines()
    return {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in lines if line.startswith("D-")}
