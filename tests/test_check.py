"""mamba_hubert.data.check: every bad-input case is reported with file and line, fails the CLI and the task's
validation, and leaves the data directory untouched; clean data passes."""

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fairseq.data import Dictionary

from mamba_hubert.data import check

SR = 16000
LABEL_RATE = 50
SIZES = (8000, 9600, 11200)  # three 0.5-0.7 s utterances


def _write_utterance(root: Path, name: str, num_samples: int, seed: int, **sf_kwargs) -> None:
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, size=num_samples).astype("float32")
    sf.write(root / "wav" / name, audio, sf_kwargs.pop("samplerate", SR), **sf_kwargs)


def make_data(root: Path) -> Path:
    """A clean data directory: train.tsv, three wavs (one stored as float), km labels at 50 Hz, dict.km.txt."""
    (root / "wav").mkdir(parents=True)
    lines, labels = [str(root)], []
    for i, n in enumerate(SIZES):
        _write_utterance(root, f"u{i}.wav", n, seed=i, subtype="FLOAT" if i == 2 else "PCM_16")
        lines.append(f"wav/u{i}.wav\t{n}")
        labels.append(" ".join(str((i + t) % 5) for t in range(n * LABEL_RATE // SR)))
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    (root / "train.km").write_text("\n".join(labels) + "\n")
    (root / "dict.km.txt").write_text("".join(f"{k} 10\n" for k in range(5)))
    return root


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_mode}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().split("\n")
    lines[line_no - 1] = text
    path.write_text("\n".join(lines))


def _set_manifest_size(root: Path, line_no: int, num_samples: int) -> None:
    relpath = (root / "train.tsv").read_text().split("\n")[line_no - 1].split("\t")[0]
    _replace_line(root / "train.tsv", line_no, f"{relpath}\t{num_samples}")


def _set_labels(root: Path, label_line: int, count: int) -> None:
    _replace_line(root / "train.km", label_line, " ".join(["1"] * count))


def _nan_samples(root: Path) -> None:
    audio, _ = sf.read(root / "wav" / "u2.wav", dtype="float32")
    audio[100] = np.nan
    audio[200] = np.inf
    sf.write(root / "wav" / "u2.wav", audio, SR, subtype="FLOAT")


def _empty_utterance(root: Path) -> None:
    sf.write(root / "wav" / "u1.wav", np.zeros(0, "float32"), SR, subtype="PCM_16")
    _set_manifest_size(root, 3, 0)
    _replace_line(root / "train.km", 2, "")


def _too_short(root: Path) -> None:
    _write_utterance(root, "u1.wav", 200, seed=5, subtype="PCM_16")
    _set_manifest_size(root, 3, 200)
    _set_labels(root, 2, 1)


def _wrong_rate(root: Path) -> None:
    _write_utterance(root, "u1.wav", SIZES[1], seed=1, subtype="PCM_16", samplerate=8000)


def _stereo(root: Path) -> None:
    audio = np.zeros((SIZES[1], 2), "float32")
    sf.write(root / "wav" / "u1.wav", audio, SR, subtype="PCM_16")


def _truncated_header(root: Path) -> None:
    data = (root / "wav" / "u1.wav").read_bytes()
    (root / "wav" / "u1.wav").write_bytes(data[:30])  # RIFF header without its data chunk


# (name, how to break the clean directory, problem kind, file the message names, line it names)
BAD_CASES = [
    ("manifest missing", lambda r: (r / "train.tsv").unlink(), check.MANIFEST_MISSING, "train.tsv", None),
    ("manifest root missing", lambda r: _replace_line(r / "train.tsv", 1, str(r / "nowhere")),
     check.MANIFEST_ROOT_MISSING, "train.tsv", 1),
    ("malformed manifest line", lambda r: _replace_line(r / "train.tsv", 3, "wav/u1.wav 9600"),
     check.MANIFEST_MALFORMED, "train.tsv", 3),
    ("missing audio", lambda r: (r / "wav" / "u1.wav").unlink(), check.AUDIO_MISSING, "train.tsv", 3),
    ("unreadable audio", _truncated_header, check.AUDIO_UNREADABLE, "train.tsv", 3),
    ("non-audio file", lambda r: (r / "wav" / "u1.wav").write_text("not audio at all\n" * 20),
     check.NOT_AUDIO, "train.tsv", 3),
    ("wrong sample rate", _wrong_rate, check.SAMPLE_RATE, "train.tsv", 3),
    ("multi-channel audio", _stereo, check.MULTI_CHANNEL, "train.tsv", 3),
    ("empty utterance", _empty_utterance, check.EMPTY_UTTERANCE, "train.tsv", 3),
    ("too-short utterance", _too_short, check.TOO_SHORT, "train.tsv", 3),
    ("manifest num_samples differ", lambda r: _set_manifest_size(r, 4, SIZES[2] + 1000),
     check.NUM_SAMPLES_MISMATCH, "train.tsv", 4),
    ("NaN/Inf samples", _nan_samples, check.NON_FINITE, "train.tsv", 4),
    ("label line count", lambda r: (r / "train.km").write_text("\n".join(
        (r / "train.km").read_text().split("\n")[:2]) + "\n"), check.LABEL_LINE_COUNT, "train.km", 3),
    ("label length", lambda r: _set_labels(r, 2, 10), check.LABEL_LENGTH, "train.km", 2),
    ("label not in dictionary", lambda r: _replace_line(r / "train.km", 3, "1 2 999 " * 11),
     check.LABEL_NOT_IN_DICT, "train.km", 3),
    ("label file missing", lambda r: (r / "train.km").unlink(), check.LABEL_MISSING, "train.km", None),
    ("dictionary missing", lambda r: (r / "dict.km.txt").unlink(), check.DICT_MISSING, "dict.km.txt", None),
    ("dictionary malformed", lambda r: _replace_line(r / "dict.km.txt", 2, "1"), check.DICT_MALFORMED,
     "dict.km.txt", 2),
]


def _cli(root: Path, *extra: str) -> list:
    return [str(root), "--splits", "train", "--labels", "km", "--label-rate", str(LABEL_RATE), *extra]


def test_clean_data_passes(tmp_path, capsys):
    root = make_data(tmp_path / "data")
    before = tree_hash(root)
    assert check.main(_cli(root)) == 0
    out = capsys.readouterr().out
    assert "3 utterances, 3 kept; 0 fatal, 0 skippable" in out
    report = check.validate_or_raise(str(root), "train", labels=["km"], label_rates=LABEL_RATE, scan_samples=True)
    assert report.ok and report.problems == [] and report.kept == 3
    assert tree_hash(root) == before


@pytest.mark.parametrize("name,breaker,kind,named_file,line", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_reported(tmp_path, capsys, name, breaker, kind, named_file, line):
    root = make_data(tmp_path / "data")
    breaker(root)
    before = tree_hash(root)

    assert check.main(_cli(root)) == 1
    out = capsys.readouterr().out
    location = str(root / named_file) + (f":{line}:" if line is not None else ":")
    messages = [m for m in out.splitlines() if f"[{kind}]" in m]
    assert len(messages) == 1, out  # one message for the one problem
    assert messages[0].startswith(location) and "error:" in messages[0], out
    assert f"{kind}: 1" in out  # the summary counts it

    # The task's load path refuses to start (NaN/Inf needs the opt-in sample scan there).
    with pytest.raises(check.DataValidationError) as raised:
        check.validate_or_raise(str(root), "train", labels=["km"], label_rates=LABEL_RATE, scan_samples=True)
    assert isinstance(raised.value, ValueError)
    assert f"[{kind}]" in str(raised.value) and location in str(raised.value)
    assert tree_hash(root) == before


def test_skippable_problems_are_reported_not_fatal(tmp_path, capsys, caplog):
    root = make_data(tmp_path / "data")
    _too_short(root)
    # Below the task's min_sample_size, fairseq drops the utterance: a warning, not an error.
    assert check.main(_cli(root, "--min-samples", "1000")) == 0
    out = capsys.readouterr().out
    assert f"{root / 'train.tsv'}:3: skipped: [{check.TOO_SHORT}]" in out and "2 kept" in out
    assert check.main(_cli(root, "--min-samples", "1000", "--strict")) == 1
    capsys.readouterr()

    with caplog.at_level(logging.WARNING, logger=check.__name__):
        report = check.validate_or_raise(str(root), "train", labels=["km"], label_rates=LABEL_RATE, min_samples=1000)
    assert report.ok and [p.kind for p in report.skippable] == [check.TOO_SHORT]
    assert any(check.TOO_SHORT in r.getMessage() for r in caplog.records)

    # A problem on an utterance the task skips anyway (its audio is gone too) is skippable as well.
    (root / "wav" / "u1.wav").unlink()
    report = check.check_split(str(root), "train", labels=["km"], label_rates=LABEL_RATE, min_samples=1000)
    assert report.ok and {p.kind for p in report.skippable} == {check.TOO_SHORT, check.AUDIO_MISSING}

    # Too long for the task's max_keep_size: skipped as well.
    report = check.check_split(str(root), "train", labels=["km"], label_rates=LABEL_RATE, min_samples=1000,
                               max_samples=10000)
    assert report.ok and report.counts()[check.TOO_LONG] == 1 and report.kept == 1


def test_sample_scan_is_optional_on_the_task_path(tmp_path, capsys):
    root = make_data(tmp_path / "data")
    _nan_samples(root)
    assert check.validate_or_raise(str(root), "train", labels=["km"], label_rates=LABEL_RATE).ok  # headers only
    assert check.main(_cli(root, "--no-scan")) == 0
    assert check.main(_cli(root)) == 1  # the CLI scans by default
    assert "2 NaN/Inf sample(s)" in capsys.readouterr().out


def test_sequence_labels_and_given_dictionaries(tmp_path):
    root = make_data(tmp_path / "data")
    (root / "train.ltr").write_text("A B | C |\nD |\nE F |\n")  # lengths unrelated to the audio: no check
    letters = Dictionary()
    for symbol in "ABCDEF|":
        letters.add_symbol(symbol)
    report = check.check_split(str(root), "train", labels=["ltr"], label_rates=-1, dictionaries=[letters])
    assert report.ok, [str(p) for p in report.problems]
    (root / "train.ltr").write_text("A B | C |\nD X |\nE F |\n")
    report = check.check_split(str(root), "train", labels=["ltr"], label_rates=-1, dictionaries=[letters])
    assert [(p.kind, p.line) for p in report.fatal] == [(check.LABEL_NOT_IN_DICT, 2)]


def test_stored_zip_audio(tmp_path):
    """fairseq's manifests may point into an uncompressed zip as `file.zip:offset:length`."""
    root = make_data(tmp_path / "data")
    wav = (root / "wav" / "u0.wav").read_bytes()
    with zipfile.ZipFile(root / "audio.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("u0.wav", wav)
    offset = (root / "audio.zip").read_bytes().find(wav)
    _replace_line(root / "train.tsv", 2, f"audio.zip:{offset}:{len(wav)}\t{SIZES[0]}")
    assert check.check_split(str(root), "train").ok
    _replace_line(root / "train.tsv", 2, f"audio.zip:{offset + 10 ** 6}:{len(wav)}\t{SIZES[0]}")
    report = check.check_split(str(root), "train")
    assert [(p.kind, p.line) for p in report.fatal] == [(check.AUDIO_UNREADABLE, 2)]


def test_cli_process_exit_status(tmp_path):
    root = make_data(tmp_path / "data")
    (root / "wav" / "u0.wav").unlink()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    result = subprocess.run([sys.executable, "-m", "mamba_hubert.data.check", *_cli(root)], check=False,
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"{root / 'train.tsv'}:2: error: [{check.AUDIO_MISSING}]" in result.stdout
