"""This project's training data from LibriSpeech-layout directories.

    mamba-hubert-librispeech train=/data/LibriSpeech/train-clean-100 valid=/data/LibriSpeech/dev-clean --out DATA

A LibriSpeech-layout directory holds SPEAKER/CHAPTER/UTTID.flac and one SPEAKER-CHAPTER.trans.txt per chapter
(lines `UTTID WORDS...`), at any depth below it (LibriLight's fine-tuning splits nest them as 1h/0/clean/...).
Every split is checked first (each transcript line has its audio, each audio file its line, every file is
readable 16 kHz mono audio), and nothing is written unless all are clean. Then, per split, fairseq's own
examples/wav2vec/wav2vec_manifest.py writes DATA/{split}.tsv (rows sorted by path here) and its libri_labels.py
DATA/{split}.ltr (letters, `|` after every word) and DATA/{split}.wrd; DATA/dict.ltr.txt lists every symbol of
the written .ltr files, counted over them; and the data check (mamba-hubert-check) runs on the result. Give all
splits in one command: dict.ltr.txt covers only the splits it was given.
"""

import argparse
import glob
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mamba_hubert.command_line import UsageError, one_line_errors, setup_logging
from mamba_hubert.data import check
from mamba_hubert.data.corpus import SAMPLE_RATE, write_dict
from mamba_hubert.data.kmeans import run_fairseq_example

logger = logging.getLogger(__name__)

LAYOUT = "SPEAKER/CHAPTER/UTTID.{ext} with SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt"
MAX_LISTED = 20


def _transcript_name(folder: str) -> str:
    """The transcript file fairseq's libri_labels.py reads for the audio of `folder` (…/SPEAKER/CHAPTER)."""
    speaker, chapter = Path(folder).parts[-2:]
    return os.path.join(folder, f"{speaker}-{chapter}.trans.txt")


def _read_transcript(path: str, ext: str, problems: list[str]) -> set[str]:
    """The utterance ids of one transcript file; a line that libri_labels.py would misread, or whose audio is
    missing, is a problem naming the file and line."""
    ids: dict[str, int] = {}
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    for line_no, raw in enumerate(raw_lines, start=1):
        where = f"{path}:{line_no}"
        try:
            words = raw.decode("utf-8").split()
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})")
            continue
        if not words:
            problems.append(f"{where}: empty line (expected 'UTTID WORDS...')")
            continue
        uttid = words[0]
        if len(words) == 1:
            problems.append(f"{where}: no words after the utterance id {uttid}")
        elif any("|" in word for word in words[1:]):
            problems.append(f"{where}: '|' in the transcript ('|' is the word boundary of the .ltr labels)")
        if uttid in ids:
            problems.append(f"{where}: utterance id {uttid} already on line {ids[uttid]}")
            continue
        ids[uttid] = line_no
        audio = os.path.join(os.path.dirname(path), f"{uttid}.{ext}")
        if not os.path.isfile(audio):
            problems.append(f"{where}: no audio {audio} for this transcript line")
    return set(ids)


def check_layout(root: str, ext: str = "flac", sample_rate: int = SAMPLE_RATE) -> tuple[int, list[str]]:
    """(number of audio files, problems) of one LibriSpeech-layout directory; reads audio headers and
    transcripts only, writes nothing. Audio is found and named as fairseq's wav2vec_manifest.py finds it
    (`**/*.{ext}` below the directory, links resolved)."""
    if not os.path.isdir(root):
        return 0, [f"{root}: not a directory"]
    root = os.path.realpath(root)
    audio, transcripts = (sorted(os.path.realpath(p) for p in glob.glob(
        os.path.join(glob.escape(root), "**", pattern), recursive=True)) for pattern in (f"*.{ext}", "*.trans.txt"))
    if not audio:
        return 0, [f"{root}: no *.{ext} file below it (expected {LAYOUT.format(ext=ext)})"]
    problems: list[str] = []

    def in_chapter_folder(path: str) -> bool:
        folder_parts = Path(os.path.relpath(path, root)).parent.parts
        if len(folder_parts) < 2 or ".." in folder_parts[-2:]:
            problems.append(f"{path}: not in a SPEAKER/CHAPTER folder below {root} (expected {LAYOUT.format(ext=ext)})")
            return False
        return True

    by_folder: dict[str, list[str]] = {}
    for path in audio:
        if "." in os.path.basename(path)[: -len(ext) - 1]:
            problems.append(f"{path}: a dot in the utterance id (fairseq's libri_labels.py cuts the id at the first dot)")
        elif in_chapter_folder(path):
            by_folder.setdefault(os.path.dirname(path), []).append(path)
    ids: dict[str, set[str]] = {}
    for path in transcripts:
        if not in_chapter_folder(path):
            continue
        expected = _transcript_name(os.path.dirname(path))
        if expected != path:
            problems.append(f"{path}: a transcript not named after its folder (expected {expected})")
        else:
            ids[path] = _read_transcript(path, ext, problems)
    for folder, paths in by_folder.items():
        transcript = _transcript_name(folder)
        if transcript not in ids:
            if not os.path.isfile(transcript):
                problems.append(f"{paths[0]}: no transcript file {transcript} for it "
                                f"({len(paths)} audio file(s) in {folder})")
                continue
            ids[transcript] = _read_transcript(transcript, ext, problems)  # a link's target outside the root
        for path in paths:
            uttid = os.path.basename(path)[: -len(ext) - 1]
            if uttid not in ids[transcript]:
                problems.append(f"{path}: no line for {uttid} in {transcript}")
    for path in audio:
        problems += [message for _, message in check.audio_header(path, sample_rate)[1]]
    return len(audio), problems


def _write_split(name: str, root: str, out: str, ext: str, expected_files: int) -> list[str]:
    """{name}.tsv by fairseq's wav2vec_manifest.py, then {name}.ltr and .wrd by its libri_labels.py; returns the
    .ltr lines."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        run_fairseq_example("wav2vec/wav2vec_manifest.py", root, "--dest", tmp, "--ext", ext, "--valid-percent", 0)
        header, *rows = Path(tmp, "train.tsv").read_text().splitlines()
    if len(rows) != expected_files:
        raise RuntimeError(f"fairseq's wav2vec_manifest.py listed {len(rows)} files of {root}, "
                           f"the check found {expected_files}")
    manifest = os.path.join(out, f"{name}.tsv")
    # Sorted: fairseq lists files in the order the file system returns them, which differs between machines.
    Path(manifest).write_text("".join(f"{line}\n" for line in [header, *sorted(rows)]))
    run_fairseq_example("wav2vec/libri_labels.py", manifest, "--output-dir", out, "--output-name", name)
    ltr = Path(out, f"{name}.ltr").read_text().splitlines()
    minutes = sum(int(row.split("\t")[1]) for row in rows) / SAMPLE_RATE / 60
    logger.info("%s: %d utterances, %.1f min from %s -> %s", name, len(rows), minutes, root, manifest)
    return ltr


def prepare(splits: Sequence[tuple[str, str]], out: str, ext: str = "flac") -> None:
    """Check every (name, directory) split, then write out/{name}.tsv, .ltr, .wrd and out/dict.ltr.txt; raises
    UsageError listing the problems (file, line, what) before writing anything."""
    problems, counts = [], {}
    for name, root in splits:
        counts[name], found = check_layout(root, ext)
        problems += found
    if len(problems) == 1:
        raise UsageError(f"{problems[0]} (nothing written)")
    if problems:
        listed = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            listed.append(f"... and {len(problems) - MAX_LISTED} more")
        raise UsageError(f"{len(problems)} problems, nothing written:\n  " + "\n  ".join(listed))
    os.makedirs(out, exist_ok=True)
    letters: Counter = Counter()
    for name, root in splits:
        for line in _write_split(name, root, out, ext, counts[name]):
            letters.update(line.split())
    write_dict(Path(out, "dict.ltr.txt"), sorted(letters), letters, sort=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mamba-hubert-librispeech", description=__doc__.split("\n\n")[0],
        epilog="Exit status 0: written and checked. Otherwise bad input (each problem named, nothing written) or "
        "the data check's problems in what was written.")
    parser.add_argument("splits", nargs="+", metavar="NAME=DIR",
                        help="a split name (train, valid, test, ...) and its LibriSpeech-layout directory")
    parser.add_argument("--out", required=True, help="output directory for {NAME}.tsv/.ltr/.wrd and dict.ltr.txt")
    parser.add_argument("--ext", default="flac", help="audio file extension (default: flac)")
    args = parser.parse_args(argv)
    setup_logging()
    splits = []
    for item in args.splits:
        name, sep, root = item.partition("=")
        if not sep or not name or not root or os.sep in name:
            parser.error(f"expected NAME=DIR (e.g. train=/data/LibriSpeech/train-clean-100), got {item!r}")
        splits.append((name, root))
    names = [name for name, _ in splits]
    if len(set(names)) != len(names):
        parser.error(f"split names must differ, got {' '.join(names)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file, not a directory")
    with one_line_errors(parser.prog):
        prepare(splits, args.out, args.ext)
    return check.main([args.out, "--splits", *names, "--labels", "ltr"])


if __name__ == "__main__":
    sys.exit(main())
