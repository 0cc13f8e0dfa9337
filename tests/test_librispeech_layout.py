"""mamba-hubert-librispeech: a LibriSpeech-layout directory becomes manifests, letter/word labels and a letter
dictionary that the data check accepts and fairseq-hydra-train pretrains on; bad input stops it with the file (and
line) named, before anything is written."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_hubert.data import check, kmeans, librispeech, mfcc
from mamba_hubert.demo.fairseq_tools import hydra_train
from tests.fairseq_runs import SMALL_MODEL, finetune_overrides

# Words beside each tone's own letters, so transcripts have several words and an apostrophe.
EXTRA_WORDS = ("TONE", "IT'S LOW", "A HUM")


def write_layout(root: Path, utterances: list[tuple[str, str, str, np.ndarray, int, str]]) -> dict[str, str]:
    """SPEAKER/CHAPTER/UTTID.flac and SPEAKER-CHAPTER.trans.txt below `root` for (speaker, chapter, uttid, audio,
    sample rate, transcript) items; returns {uttid: transcript}."""
    chapters: dict[Path, list[str]] = {}
    for speaker, chapter, uttid, audio, rate, transcript in utterances:
        folder = root / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{uttid}.flac", audio, rate)
        chapters.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(f"{uttid} {transcript}\n")
    for path, lines in chapters.items():
        path.write_text("".join(sorted(lines)))
    return {uttid: transcript for _, _, uttid, _, _, transcript in utterances}


def tone_utterances(corpus: Path, split: str, speakers: int, chapters: int) -> list:
    """The tone corpus's `split` spread over speakers and chapters, its letter transcript as the first word."""
    root, *rows = (corpus / f"{split}.tsv").read_text().splitlines()
    letters = (corpus / f"{split}.ltr").read_text().splitlines()
    items = []
    for i, (row, ltr) in enumerate(zip(rows, letters)):
        speaker, chapter = str(100 + i % speakers), str(2000 + (i // speakers) % chapters)
        audio, rate = sf.read(Path(root) / row.split("\t")[0], dtype="float32")
        word = "".join(ltr.split()).rstrip("|")
        items.append((speaker, chapter, f"{speaker}-{chapter}-{i:04d}", audio, rate,
                      f"{word} {EXTRA_WORDS[i % len(EXTRA_WORDS)]}"))
    return items


@pytest.fixture(scope="module")
def layout(tone_corpus, tmp_path_factory) -> dict:
    """train (3 speakers x 2 chapters) at the top of its directory, valid nested as in LibriLight's fine-tuning
    splits (1h/0/clean/SPEAKER/CHAPTER)."""
    root = tmp_path_factory.mktemp("librispeech")
    train = write_layout(root / "train-clean", tone_utterances(tone_corpus, "train", 3, 2))
    valid = write_layout(root / "dev" / "1h" / "0" / "clean", tone_utterances(tone_corpus, "valid", 1, 1))
    return {"dirs": {"train": root / "train-clean", "valid": root / "dev"}, "transcripts": {"train": train,
                                                                                           "valid": valid}}


@pytest.fixture(scope="module")
def prepared(layout, tmp_path_factory) -> tuple[Path, str]:
    """The command run as a user runs it; its output directory and console output."""
    out = tmp_path_factory.mktemp("data")
    command = [sys.executable, "-m", "mamba_hubert.data.librispeech",
               *(f"{name}={path}" for name, path in layout["dirs"].items()), "--out", str(out)]
    proc = subprocess.run(command, check=False, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout + proc.stderr


def test_manifests_labels_and_dict_follow_the_layout(layout, prepared):
    out, console = prepared
    letters = Counter()
    for split, transcripts in layout["transcripts"].items():
        root, *rows = (out / f"{split}.tsv").read_text().splitlines()
        assert root == os.path.realpath(layout["dirs"][split])
        paths = [row.split("\t")[0] for row in rows]
        assert paths == sorted(paths) and len(paths) == len(transcripts)
        assert {Path(p).name[: -len(".flac")] for p in paths} == set(transcripts)
        ltr = (out / f"{split}.ltr").read_text().splitlines()
        wrd = (out / f"{split}.wrd").read_text().splitlines()
        assert len(ltr) == len(wrd) == len(rows)
        for row, letter_line, word_line in zip(rows, ltr, wrd):
            path, num_samples = row.split("\t")
            assert int(num_samples) == sf.info(Path(root) / path).frames
            transcript = transcripts[Path(path).name[: -len(".flac")]]
            assert word_line == transcript
            # Back from letters to words: `|` closes every word.
            assert "".join(letter_line.split(" ")).split("|") == [*transcript.split(), ""]
            letters.update(letter_line.split())
    labels = dict(zip((out / "train.wrd").read_text().splitlines(), (out / "train.ltr").read_text().splitlines()))
    tone = next(words.split()[0] for words in labels if words.endswith(" IT'S LOW"))
    assert labels[f"{tone} IT'S LOW"] == f"{' '.join(tone)} | I T ' S | L O W |"
    dictionary = [line.split(" ") for line in (out / "dict.ltr.txt").read_text().splitlines()]
    assert {symbol: int(count) for symbol, count in dictionary} == letters
    assert [int(count) for _, count in dictionary] == sorted(letters.values(), reverse=True)
    for split in layout["dirs"]:
        report = check.check_split(str(out), split, labels=["ltr"], scan_samples=True)
        assert report.problems == [] and report.kept == len(layout["transcripts"][split])
        assert report.summary() in console  # the command ran the data check itself


def test_pretraining_and_finetuning_run_on_the_prepared_data(prepared, tmp_path):
    """MFCC and k-means labels, 2 pretraining updates, then 2 CTC updates on the written .ltr and dict.ltr.txt."""
    out, _ = prepared
    for split in ("train", "valid"):
        mfcc.dump_mfcc(str(out), split, str(tmp_path / "feat"), 1, 0)
    kmeans.run_kmeans(str(tmp_path / "feat"), str(tmp_path / "km"), ("train", "valid"), 5, n_init=1, max_iter=5)
    save_dir = tmp_path / "ckpt"
    log = hydra_train("pretrain/tiny_conbimamba",
                      [f"task.data={out}", f"task.label_dir={tmp_path / 'km'}", f"checkpoint.save_dir={save_dir}",
                       "optimization.max_update=2", "common.log_interval=1", *SMALL_MODEL], tmp_path / "train.log")
    assert "data check: train:" in log and "num_updates 2" in log and "valid on 'valid' subset" in log
    log = hydra_train("finetune/tiny_ctc", finetune_overrides(out, tmp_path / "ft", save_dir / "checkpoint_last.pt",
                                                              "optimization.max_update=2", "common.log_interval=1",
                                                              "model.freeze_finetune_updates=0"), tmp_path / "ft.log")
    assert "data check: train:" in log and "num_updates 2" in log
    assert (tmp_path / "ft" / "checkpoint_last.pt").is_file()


# Bad input: each case ends the command with an error naming the file (and line), before anything is written.

def small_layout(root: Path, rate: int = 16000) -> Path:
    """Two utterances of one chapter, 0.6 s of noise each."""
    rng = np.random.default_rng(0)
    write_layout(root, [("7", "11", f"7-11-000{i}", 0.1 * rng.standard_normal(int(0.6 * rate)).astype(np.float32),
                         rate, f"WORD NUMBER {i}") for i in range(2)])
    return root


def failure(tmp_path: Path, root: Path) -> str:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        librispeech.main([f"train={root}", "--out", str(out)])
    assert not out.exists()
    return str(exit_info.value.code)


def test_transcript_line_without_audio(tmp_path):
    root = small_layout(tmp_path / "ls")
    (root / "7" / "11" / "7-11-0001.flac").unlink()
    message = failure(tmp_path, root)
    assert f"{os.path.realpath(root / '7' / '11' / '7-11.trans.txt')}:2: no audio" in message


def test_audio_without_transcript_line(tmp_path):
    root = small_layout(tmp_path / "ls")
    transcript = root / "7" / "11" / "7-11.trans.txt"
    transcript.write_text(transcript.read_text().splitlines()[0] + "\n")
    message = failure(tmp_path, root)
    assert (f"{os.path.realpath(root / '7' / '11' / '7-11-0001.flac')}: no line for 7-11-0001 in "
            f"{os.path.realpath(transcript)}") in message


def test_sample_rate_other_than_16k(tmp_path):
    root = small_layout(tmp_path / "ls", rate=8000)
    message = failure(tmp_path, root)
    assert f"{os.path.realpath(root / '7' / '11' / '7-11-0000.flac')}: sample rate 8000 Hz" in message


def test_unreadable_audio(tmp_path):
    root = small_layout(tmp_path / "ls")
    (root / "7" / "11" / "7-11-0000.flac").write_bytes(b"not flac at all" * 10)
    message = failure(tmp_path, root)
    assert f"{os.path.realpath(root / '7' / '11' / '7-11-0000.flac')}: not an audio file" in message


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    message = failure(tmp_path, tmp_path / "empty")
    assert f"{os.path.realpath(tmp_path / 'empty')}: no *.flac file below it" in message


def test_audio_outside_speaker_chapter_folders(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    sf.write(flat / "7-11-0000.flac", np.zeros(8000, np.float32), 16000)
    (flat / "7-11.trans.txt").write_text("7-11-0000 WORD\n")
    message = failure(tmp_path, flat)
    assert f"{os.path.realpath(flat / '7-11-0000.flac')}: not in a SPEAKER/CHAPTER folder" in message
