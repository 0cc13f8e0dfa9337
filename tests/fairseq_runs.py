"""Small generated data for tests that run real fairseq CLIs, and helpers to run and read those CLIs."""

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import editdistance
import numpy as np
import soundfile as sf
import torch
from fairseq import checkpoint_utils

import mamba_hubert  # noqa: F401  (the checkpoint allow-list, for loading checkpoints in tests)
from mamba_hubert.data.ngram_lm import build_arpa
from mamba_hubert.demo.fairseq_tools import CONFIG_ROOT, PLUGIN_DIR

TINY_CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
# Small enough that a few updates take seconds on 2 cores.
SMALL_MODEL = ["model.encoder_layers=2", "model.encoder_embed_dim=64", "model.encoder_ffn_embed_dim=128",
               "model.conv_feature_layers='[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'", "model.final_dim=32"]


def make_tone_corpus(root: Path, splits=(("train", 12), ("valid", 3)), seed: int = 0) -> Path:
    """Tones in noise, with frame labels that follow the pitch (learnable) and letter transcripts."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    letters = "ABCDE"
    for split, count in splits:
        manifest, km, ltr = [str(root)], [], []
        for i in range(count):
            num_samples = int(rng.integers(12000, 24000))
            pitch = int(rng.integers(0, 5))
            t = np.arange(num_samples) / 16000
            wav = 0.3 * np.sin(2 * np.pi * (150 + 50 * pitch) * t) + 0.02 * rng.standard_normal(num_samples)
            name = f"wav/{split}{i}.wav"
            sf.write(root / name, wav.astype(np.float32), 16000)
            manifest.append(f"{name}\t{num_samples}")
            frames = (num_samples - 400) // 160 + 1  # MFCC-style labels at 100 Hz
            km.append(" ".join([str(pitch)] * frames))
            ltr.append(" ".join(letters[pitch] * 2) + " |")
        for suffix, lines in (("tsv", manifest), ("km", km), ("ltr", ltr)):
            (root / f"{split}.{suffix}").write_text("\n".join(lines) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(5)))
    (root / "dict.ltr.txt").write_text("| 10\n" + "".join(f"{c} 10\n" for c in letters))
    return root


def write_lm(sentences: list[str], path: Path) -> Path:
    """A 3-gram LM by the project's own builder (IRSTLM); Witten-Bell, as Kneser-Ney needs more text."""
    text = path.with_suffix(".txt")
    text.write_text("".join(sentence + "\n" for sentence in sentences))
    return build_arpa(text, path, order=3, smoothing="wb")


def write_lexicon(words: dict[str, str], path: Path) -> Path:
    path.write_text("".join(f"{word}\t{' '.join(spelling)} |\n" for word, spelling in words.items()))
    return path


def train_fairseq_hubert(data: Path, root: Path, label_rate: int = 100) -> Path:
    """checkpoint_last.pt of a real fairseq-hydra-train run of fairseq's own `hubert` with fairseq's own HuBERT Base
    recipe (hubert_base_librispeech.yaml), made tiny (2 updates) on `data` (`{split}.tsv`, `.km`, `dict.km.txt`)."""
    save_dir = root / "ckpt"
    config_dir = Path(checkpoint_utils.__file__).parent / "examples" / "hubert" / "config" / "pretrain"
    overrides = [
        f"task.data={data}", f"task.label_dir={data}", "task.labels=[km]", f"model.label_rate={label_rate}",
        "task.min_sample_size=8000", "task.max_sample_size=16000", "common.fp16=false", "++common.cpu=true",
        "common.tensorboard_logdir=null", "common.log_interval=1", "distributed_training.distributed_world_size=1",
        "distributed_training.nprocs_per_node=1", "dataset.num_workers=0", "dataset.max_tokens=64000",
        "++dataset.required_batch_size_multiple=1", "optimization.max_update=2", "lr_scheduler.warmup_updates=1",
        "++model.encoder_layers=2", "++model.encoder_embed_dim=32", "++model.encoder_ffn_embed_dim=64",
        "++model.encoder_attention_heads=2", "model.final_dim=16", f'model.conv_feature_layers="{TINY_CONV}"',
        "++model.conv_pos=16", "++model.conv_pos_groups=4", "model.encoder_layerdrop=0",
        f"++checkpoint.save_dir={save_dir}", f"hydra.run.dir={root / 'hydra'}",
    ]
    command = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(config_dir),
               "--config-name", "hubert_base_librispeech", *overrides]
    follow(start(command, root), root / "train.log")
    checkpoint = save_dir / "checkpoint_last.pt"
    assert checkpoint.is_file()
    return checkpoint


def pretrain_overrides(data: Path, save_dir: Path, *extra: str) -> list:
    return [f"task.data={data}", f"task.label_dir={data}", f"checkpoint.save_dir={save_dir}", *extra]


def finetune_overrides(data: Path, save_dir: Path, w2v_path: Path, *extra: str) -> list:
    return [*pretrain_overrides(data, save_dir, *extra), f"model.w2v_path={w2v_path}"]


# Running the real `fairseq-hydra-train` console script as a subprocess that a test can watch, kill or run
# beside another one (two ranks), and reading its json logs and checkpoints.

TIMEOUT_S = 300


def train_command(config: str, overrides: list[str]) -> list[str]:
    """This environment's `fairseq-hydra-train` with an example config (e.g. "pretrain/tiny_mamba") and the plugin,
    exactly as a user runs it."""
    group, name = config.split("/")
    return [str(Path(sys.executable).parent / "fairseq-hydra-train"), "--config-dir", str(CONFIG_ROOT / group),
            "--config-name", name, f"common.user_dir={PLUGIN_DIR}", *overrides]


def start(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts `command` in `cwd` (hydra writes its files there) with one thread per op and unbuffered output."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # checkpoints must load without it
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def follow(process: subprocess.Popen, log_path: Path, kill_when: Callable[[str], bool] | None = None) -> str:
    """Reads a process's output into `log_path` until it ends, or SIGKILLs it on the first line for which
    `kill_when` is true; returns the output. A run that finishes must succeed; none may pass TIMEOUT_S."""
    watchdog = threading.Timer(TIMEOUT_S, process.kill)
    watchdog.start()
    lines = []
    try:
        with open(log_path, "w") as log:
            for line in process.stdout:
                log.write(line)
                lines.append(line)
                if kill_when is not None and kill_when(line):
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait()
    finally:
        watchdog.cancel()
        process.stdout.close()
    output = "".join(lines)
    if kill_when is None or process.returncode != -signal.SIGKILL:
        assert process.returncode == 0, f"run failed ({process.returncode}); log {log_path}:\n{output[-3000:]}"
    return output


def nth_line_with(marker: str, n: int) -> Callable[[str], bool]:
    """A `kill_when` that is true on the n-th line containing `marker`."""
    seen = [0]

    def check(line: str) -> bool:
        seen[0] += marker in line
        return seen[0] == n

    return check


def logged_records(output: str, tag: str) -> dict[int, dict]:
    """{num_updates: json record} of the lines logged under `tag` ("train_inner", "valid"), with
    common.log_format=json (and common.log_interval=1 for one train_inner record per update)."""
    records = [json.loads(line.split(" - ", 1)[1]) for line in output.splitlines() if f"[{tag}]" in line]
    key = "num_updates" if tag == "train_inner" else f"{tag}_num_updates"
    return {int(record[key]): record for record in records}


def load_state(path: Path) -> dict:
    return checkpoint_utils.load_checkpoint_to_cpu(str(path))


def assert_same_parameters(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def wer_of_printed_hypotheses(results: Path, manifest: Path) -> float:
    """Word error rate recomputed from fairseq-generate's T-/D- lines (an untrained model's WER may pass 100%
    through insertions, so the check is that the printed WER is the one of the printed hypotheses)."""
    lines = results.read_text().splitlines()
    targets = {line.split("\t")[0][2:]: line.split("\t")[1] for line in lines if line.startswith("T-")}
    hypotheses = {line.split("\t")[0][2:]: line.split("\t")[2] for line in lines if line.startswith("D-")}
    assert len(targets) == len(hypotheses) == len(manifest.read_text().splitlines()) - 1  # every utterance decoded
    errors = sum(editdistance.eval(targets[i].split(), hypotheses[i].split()) for i in targets)
    return 100.0 * errors / sum(len(target.split()) for target in targets.values())
