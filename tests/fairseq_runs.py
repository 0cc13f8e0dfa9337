"""Small generated data for tests that run real fairseq CLIs."""

from pathlib import Path

import numpy as np
import soundfile as sf

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


def pretrain_overrides(data: Path, save_dir: Path, *extra: str) -> list:
    return [f"task.data={data}", f"task.label_dir={data}", f"checkpoint.save_dir={save_dir}", *extra]


def finetune_overrides(data: Path, save_dir: Path, w2v_path: Path, *extra: str) -> list:
    return [*pretrain_overrides(data, save_dir, *extra), f"model.w2v_path={w2v_path}"]
