"""Helpers for tests that run real fairseq CLIs on small generated data."""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "mamba_hubert"
PRETRAIN_CONFIGS = REPO / "examples" / "config" / "pretrain"
FINETUNE_CONFIGS = REPO / "examples" / "config" / "finetune"
BIN = Path(sys.executable).parent
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


def run_cli(args: List[str], cwd: Path, timeout: int = 600) -> str:
    """Runs a fairseq console script of this venv; fails the test with its output if it fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # checkpoints must load without it
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} failed ({result.returncode}):\n{output[-6000:]}")
    return output


def pretrain(data: Path, save_dir: Path, config: str, *overrides: str) -> str:
    return run_cli(["fairseq-hydra-train", "--config-dir", str(PRETRAIN_CONFIGS), "--config-name", config,
                    f"common.user_dir={PLUGIN}", f"task.data={data}", f"task.label_dir={data}",
                    f"checkpoint.save_dir={save_dir}", *overrides], cwd=save_dir.parent)


def finetune(data: Path, save_dir: Path, w2v_path: Path, *overrides: str) -> str:
    return run_cli(["fairseq-hydra-train", "--config-dir", str(FINETUNE_CONFIGS), "--config-name", "tiny_ctc",
                    f"common.user_dir={PLUGIN}", f"task.data={data}", f"task.label_dir={data}",
                    f"checkpoint.save_dir={save_dir}", f"model.w2v_path={w2v_path}", *overrides], cwd=save_dir.parent)
