"""Validation of a HuBERT data directory (manifests, audio, labels, dictionaries) before training.

The layout is fairseq's HuBERT task's: `{data}/{split}.tsv` (first line: the audio root directory, then
`relpath<TAB>num_samples` per utterance), `{label_dir}/{split}.{label}` (one line of space-separated
symbols per manifest entry) and `{label_dir}/dict.{label}.txt` (`symbol count` lines). Every problem is
reported once, naming the file and line, and classified as fatal (training would crash, or silently learn
from wrong data) or skippable (fairseq drops the utterance itself: it is outside the task's
`min_sample_size` / `max_keep_size`, so a problem on it never reaches the model).

Cost: the default check reads only audio headers (`soundfile.info`: rate, channels, frame count) and
the label files, cheap enough to run on every task load. `scan_samples=True` (the CLI's default, the
task's opt-in) also decodes every file stored as float (WAV/AIFF FLOAT or DOUBLE subtype) to find NaN or
Inf samples; integer PCM, FLAC and lossy codecs cannot hold them, so those files are never decoded.
Nothing is ever written: every file is opened read-only.
"""

import argparse
import glob
import io
import logging
import os
import sys
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from mamba_hubert.frames import HUBERT_CONV_LAYERS, receptive_field

logger = logging.getLogger(__name__)

# Problem kinds (the keys of the summary).
MANIFEST_MISSING = "manifest-missing"
MANIFEST_EMPTY = "manifest-empty"
MANIFEST_ROOT_MISSING = "manifest-root-missing"
MANIFEST_MALFORMED = "manifest-malformed"
AUDIO_MISSING = "audio-missing"
AUDIO_UNREADABLE = "audio-unreadable"
NOT_AUDIO = "not-audio"
SAMPLE_RATE = "wrong-sample-rate"
MULTI_CHANNEL = "multi-channel"
EMPTY_UTTERANCE = "empty-utterance"
TOO_SHORT = "too-short"
TOO_LONG = "too-long"
NUM_SAMPLES_MISMATCH = "num-samples-mismatch"
NON_FINITE = "non-finite-samples"
LABEL_MISSING = "label-file-missing"
LABEL_LINE_COUNT = "label-line-count"
LABEL_LENGTH = "label-length"
LABEL_NOT_IN_DICT = "label-not-in-dictionary"
DICT_MISSING = "dictionary-missing"
DICT_MALFORMED = "dictionary-malformed"

# fairseq's HubertDataset.verify_label_lengths tolerance between audio and label durations.
LABEL_DURATION_TOLERANCE_S = 0.1
# What fairseq's audio_utils.parse_path treats as a plain file; anything else may be `zip:offset:length`.
_PLAIN_FILE_SUFFIXES = (".npy", ".wav", ".flac", ".ogg")
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
# fairseq's Dictionary always holds these, so a label equal to one of them encodes without <unk>.
_DICT_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_SCAN_BLOCK = 1 << 20


class DataValidationError(ValueError):
    """Raised by `validate_or_raise` when a split has fatal problems; `report` holds all of them."""

    def __init__(self, report: "CheckReport", max_listed: int = 20) -> None:
        self.report = report
        fatal = report.fatal
        lines = [f"data check failed for split '{report.split}' ({report.manifest}): {len(fatal)} fatal problem(s)"]
        lines += [f"  {p}" for p in fatal[:max_listed]]
        if len(fatal) > max_listed:
            lines.append(f"  ... and {len(fatal) - max_listed} more (`mamba-hubert-check` lists them all)")
        lines.append(f"  summary: {report.summary()}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    line: int | None  # 1-based line in `path`; None for a whole-file problem
    message: str
    fatal: bool

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {'error' if self.fatal else 'skipped'}: [{self.kind}] {self.message}"


@dataclass
class CheckReport:
    split: str
    manifest: str
    entries: int = 0  # utterance lines in the manifest
    kept: int = 0  # of which the task keeps (inside its size limits)
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def skippable(self) -> list[Problem]:
        return [p for p in self.problems if not p.fatal]

    @property
    def ok(self) -> bool:
        return not self.fatal

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.counts().items())) or "no problems"
        return (
            f"{self.split}: {self.entries} utterances, {self.kept} kept; "
            f"{len(self.fatal)} fatal, {len(self.skippable)} skippable ({kinds})"
        )

    def add(self, kind: str, path: str, line: int | None, message: str, fatal: bool = True) -> None:
        self.problems.append(Problem(kind, path, line, message, fatal))


@dataclass
class _Entry:
    line: int  # line in the manifest
    relpath: str
    num_samples: int
    kept: bool


def _read_manifest(manifest: str, report: CheckReport, min_samples: int | None,
                   max_samples: int | None) -> tuple[str | None, list[_Entry | None]]:
    """Root directory and one entry per utterance line (None where the line is malformed)."""
    with open(manifest, "r", encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            report.add(MANIFEST_MALFORMED, manifest, None, f"not UTF-8 text ({e.reason} at byte {e.start})")
            return None, []
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        report.add(MANIFEST_EMPTY, manifest, None, "the manifest is empty (its first line must be the audio root)")
        return None, []
    entries: list[_Entry | None] = []
    for line_no, text in enumerate(lines[1:], start=2):
        items = text.strip().split("\t")
        if len(items) != 2 or not items[1].strip().isdigit():
            report.add(MANIFEST_MALFORMED, manifest, line_no,
                       f"expected 'relative/path<TAB>num_samples', got {text[:80]!r}")
            entries.append(None)
            continue
        size = int(items[1])
        # fairseq's load_audio drops sizes < min_keep and > max_keep before anything else is read.
        kept = not (min_samples is not None and size < min_samples) and not (
            max_samples is not None and size > max_samples)
        entries.append(_Entry(line_no, items[0], size, kept))
    if not entries:
        report.add(MANIFEST_EMPTY, manifest, None, "the manifest lists no utterances")
    return lines[0].strip(), entries


def _open_audio(path: str) -> tuple[str | io.BytesIO | None, tuple[str, str] | None]:
    """A readable source for `path` (a file or a stored-zip slice) or (kind, message) if there is none."""
    source = path
    slice_ptr: list[str] = []
    if not path.endswith(_PLAIN_FILE_SUFFIXES):
        source, *slice_ptr = path.split(":")
    if len(slice_ptr) not in (0, 2) or not all(s.isdigit() for s in slice_ptr):
        return None, (AUDIO_MISSING, f"{path}: not a file path nor 'file.zip:offset:length'")
    if not os.path.isfile(source):
        return None, (AUDIO_MISSING, f"{source}: audio file not found (or not a regular file)")
    try:
        if not slice_ptr:
            if os.path.getsize(source) == 0:
                return None, (NOT_AUDIO, f"{source}: the file is empty (0 bytes)")
            return source, None
        offset, length = int(slice_ptr[0]), int(slice_ptr[1])
        with open(source, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        return None, (AUDIO_UNREADABLE, f"{source}: cannot read ({e.strerror or e})")
    if len(data) != length:
        return None, (AUDIO_UNREADABLE, f"{path}: the slice ends past the end of {source}")
    return io.BytesIO(data), None


def audio_header(path: str, sample_rate: int) -> "tuple[sf._SoundFileInfo | None, list[tuple[str, str]]]":
    """soundfile's header of `path` (a file or 'file.zip:offset:length') and its problems as (kind, message), each
    message starting with the path: missing, unreadable, not audio (info None), a sample rate other than
    `sample_rate`, more than one channel."""
    source, error = _open_audio(path)
    if error is not None:
        return None, [error]
    try:
        info = sf.info(source)
    except sf.LibsndfileError as e:
        unrecognised = e.code == 1  # SF_ERR_UNRECOGNISED_FORMAT
        what = "not an audio file soundfile can read" if unrecognised else "cannot read the audio"
        kind = NOT_AUDIO if unrecognised else AUDIO_UNREADABLE
        return None, [(kind, f"{path}: {what} ({e.error_string.rstrip('.')})")]
    except (OSError, RuntimeError) as e:
        return None, [(AUDIO_UNREADABLE, f"{path}: cannot read the audio ({e})")]
    problems = []
    if info.samplerate != sample_rate:
        message = f"{path}: sample rate {info.samplerate} Hz, the task expects {sample_rate} Hz (resample it)"
        problems.append((SAMPLE_RATE, message))
    if info.channels != 1:
        # fairseq would silently average the channels.
        problems.append((MULTI_CHANNEL, f"{path}: {info.channels} channels, expected mono"))
    return info, problems


def _check_audio(entry: _Entry, root: str, manifest: str, report: CheckReport, sample_rate: int,
                 scan_samples: bool) -> None:
    path = os.path.join(root, entry.relpath)
    fatal = entry.kept

    def add(kind: str, message: str) -> None:
        report.add(kind, manifest, entry.line, message, fatal)

    info, problems = audio_header(path, sample_rate)
    for kind, message in problems:
        add(kind, message)
    if info is None:
        return
    if info.frames != entry.num_samples:
        add(NUM_SAMPLES_MISMATCH,
            f"{path}: the manifest says {entry.num_samples} samples, the file has {info.frames} (stale manifest?)")
    if scan_samples and info.subtype in _FLOAT_SUBTYPES:
        bad = _count_non_finite(_open_audio(path)[0])  # opened again: a zip slice's buffer was read to its end
        if bad:
            add(NON_FINITE, f"{path}: {bad} NaN/Inf sample(s)")


def _count_non_finite(source: str | io.BytesIO) -> int:
    # float32, as fairseq's dataset casts the audio to float32: a finite double beyond its range is Inf there.
    return sum(int(np.count_nonzero(~np.isfinite(block)))
               for block in sf.blocks(source, blocksize=_SCAN_BLOCK, dtype="float32", always_2d=True))


def _check_sizes(entry: _Entry, manifest: str, report: CheckReport, min_samples: int | None,
                 max_samples: int | None, min_cnn_samples: int) -> None:
    n = entry.num_samples
    if min_samples is not None and n < min_samples:
        report.add(TOO_SHORT, manifest, entry.line,
                   f"{n} samples < task min_sample_size={min_samples}: the task skips it", fatal=False)
    elif max_samples is not None and n > max_samples:
        report.add(TOO_LONG, manifest, entry.line,
                   f"{n} samples > task max_keep_size={max_samples}: the task skips it", fatal=False)
    elif n == 0:
        report.add(EMPTY_UTTERANCE, manifest, entry.line, "0 samples (set task.min_sample_size to skip it)")
    elif n < min_cnn_samples:
        report.add(TOO_SHORT, manifest, entry.line,
                   f"{n} samples: the feature extractor needs at least {min_cnn_samples} for one frame "
                   f"(set task.min_sample_size to skip it)")


def _load_dictionary(path: str, report: CheckReport) -> set | None:
    """Symbols of a fairseq dictionary file, parsed as fairseq's Dictionary.add_from_file does."""
    if not os.path.isfile(path):
        report.add(DICT_MISSING, path, None, "dictionary file not found")
        return None
    symbols = set(_DICT_SPECIALS)
    ok = True
    with open(path, "r", encoding="utf-8", errors="replace") as f:  # undecodable bytes then fail the checks
        for line_no, line in enumerate(f, start=1):
            parts = line.rstrip().rsplit(" ", 1)
            overwrite = len(parts) == 2 and parts[1] == "#fairseq:overwrite"
            if overwrite:
                parts = parts[0].rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                report.add(DICT_MALFORMED, path, line_no, f"expected '<symbol> <count>', got {line.rstrip()[:80]!r}")
                ok = False
            elif parts[0] in symbols and not overwrite:
                report.add(DICT_MALFORMED, path, line_no, f"duplicate symbol {parts[0]!r}")
                ok = False
            else:
                symbols.add(parts[0])
    return symbols if ok else None


def _check_labels(label_path: str, label_rate: float, entries: list[_Entry | None], report: CheckReport,
                  sample_rate: int, vocab: Container[str] | None) -> None:
    if not os.path.isfile(label_path):
        report.add(LABEL_MISSING, label_path, None, "label file not found")
        return
    with open(label_path, "r", encoding="utf-8", errors="replace") as f:  # as fairseq's load_label reads them
        lines = [line.rstrip() for line in f]
    if len(lines) != len(entries):
        report.add(LABEL_LINE_COUNT, label_path, min(len(lines), len(entries)) + 1,
                   f"{len(lines)} label lines but the manifest has {len(entries)} utterances "
                   f"(lines must correspond one to one)")
        return
    for line_no, (text, entry) in enumerate(zip(lines, entries), start=1):
        if entry is None:
            continue
        tokens = text.split()
        if label_rate > 0:
            audio_s, label_s = entry.num_samples / sample_rate, len(tokens) / label_rate
            if abs(audio_s - label_s) > LABEL_DURATION_TOLERANCE_S:
                report.add(LABEL_LENGTH, label_path, line_no,
                           f"{len(tokens)} labels = {label_s:.3f} s at {label_rate:g} Hz, but the audio "
                           f"({entry.relpath}) lasts {audio_s:.3f} s (tolerance {LABEL_DURATION_TOLERANCE_S} s): "
                           f"wrong label rate or labels of other audio", fatal=entry.kept)
        if vocab is not None:
            unknown = sorted({t for t in tokens if t not in vocab})
            if unknown:
                shown = " ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                report.add(LABEL_NOT_IN_DICT, label_path, line_no,
                           f"{len(unknown)} symbol(s) not in the dictionary: {shown}", fatal=entry.kept)


def check_split(
    data_dir: str,
    split: str,
    label_dir: str | None = None,
    labels: Sequence[str] = (),
    label_rates: float | Sequence[float] = -1.0,
    sample_rate: int = 16000,
    min_samples: int | None = None,
    max_samples: int | None = None,
    dictionaries: Sequence[Container[str] | None] | None = None,
    scan_samples: bool = False,
    conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS,
) -> CheckReport:
    """Check one split of a HuBERT data directory; never raises on bad data, never writes.

    `labels`, `label_rates` (-1: sequence labels such as `ltr`, no length check; one rate for all labels or
    one per label), `sample_rate`, `min_samples` (fairseq's task.min_sample_size) and `max_samples`
    (task.max_keep_size) mean what they mean to fairseq's hubert_pretraining task; `label_dir` defaults
    to `data_dir`. `dictionaries`: one symbol container per label (a fairseq Dictionary works); None or a
    None item reads `{label_dir}/dict.{label}.txt`. `conv_layers`: the feature extractor, which fixes the
    shortest usable utterance. `scan_samples`: decode float-stored audio to look for NaN/Inf.
    """
    manifest = os.path.join(data_dir, f"{split}.tsv")
    report = CheckReport(split=split, manifest=manifest)
    if not os.path.isfile(manifest):
        report.add(MANIFEST_MISSING, manifest, None, f"manifest of split '{split}' not found")
        return report
    root, entries = _read_manifest(manifest, report, min_samples, max_samples)
    report.entries = len(entries)
    report.kept = sum(1 for e in entries if e is not None and e.kept)

    min_cnn_samples = receptive_field(conv_layers)[0]  # an unpadded conv stack's shortest input for one frame
    for entry in entries:
        if entry is not None:
            _check_sizes(entry, manifest, report, min_samples, max_samples, min_cnn_samples)
    if root is not None and entries:
        if not os.path.isdir(root):
            # One message instead of one per utterance; fairseq joins relative roots to the working directory.
            report.add(MANIFEST_ROOT_MISSING, manifest, 1,
                       f"audio root {root!r} is not a directory (resolved from {os.getcwd()!r})")
        else:
            for entry in entries:
                if entry is not None:
                    _check_audio(entry, root, manifest, report, sample_rate, scan_samples)

    rates = [float(label_rates)] * len(labels) if isinstance(label_rates, (int, float)) else list(label_rates)
    if len(rates) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(rates)} label rates")
    label_dir = label_dir or data_dir
    for i, (label, rate) in enumerate(zip(labels, rates)):
        vocab = dictionaries[i] if dictionaries is not None else None
        if vocab is None:
            vocab = _load_dictionary(os.path.join(label_dir, f"dict.{label}.txt"), report)
        _check_labels(os.path.join(label_dir, f"{split}.{label}"), rate, entries, report, sample_rate, vocab)
    return report


def validate_or_raise(
    data_dir: str,
    split: str,
    label_dir: str | None = None,
    labels: Sequence[str] = (),
    label_rates: float | Sequence[float] = -1.0,
    sample_rate: int = 16000,
    min_samples: int | None = None,
    max_samples: int | None = None,
    dictionaries: Sequence[Container[str] | None] | None = None,
    scan_samples: bool = False,
    conv_layers: Sequence[tuple[int, int, int]] = HUBERT_CONV_LAYERS,
    max_logged: int = 20,
) -> CheckReport:
    """`check_split` for the task's load path: logs skippable problems, raises DataValidationError on fatal ones.

    From a HubertPretrainingConfig: data_dir=cfg.data, label_dir=cfg.label_dir or cfg.data, labels=cfg.labels,
    label_rates=cfg.label_rate, sample_rate=cfg.sample_rate, min_samples=cfg.min_sample_size,
    max_samples=cfg.max_keep_size, dictionaries=the task's dictionaries (or [target_dictionary] when fine-tuning).
    """
    report = check_split(data_dir, split, label_dir, labels, label_rates, sample_rate, min_samples, max_samples,
                         dictionaries, scan_samples, conv_layers)
    skippable = report.skippable
    for problem in skippable[:max_logged]:
        logger.warning("%s", problem)
    if len(skippable) > max_logged:
        logger.warning("... and %d more skippable problem(s) in split '%s'", len(skippable) - max_logged, split)
    if not report.ok:
        raise DataValidationError(report, max_listed=max_logged)
    logger.info("data check: %s", report.summary())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mamba-hubert-check",
        description="Check a HuBERT data directory (manifests, audio, labels, dictionaries) before training. "
        "Exit status: 0 no fatal problem, 1 fatal problems (or any problem with --strict).",
    )
    parser.add_argument("data_dir", help="directory holding {split}.tsv manifests")
    parser.add_argument("--label-dir", default=None, help="directory of {split}.{label} and dict.{label}.txt "
                        "(default: DATA_DIR)")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to check (default: every *.tsv)")
    parser.add_argument("--labels", nargs="*", default=[], help="label extensions, e.g. km or ltr")
    parser.add_argument("--label-rate", nargs="+", type=float, default=[-1.0],
                        help="label rate(s) in Hz, one for all labels or one per label; -1 = sequence labels")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--min-samples", type=int, default=None,
                        help="the task's min_sample_size (shorter utterances are skipped, not errors)")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="the task's max_keep_size (longer utterances are skipped)")
    parser.add_argument("--no-scan", action="store_true", help="skip decoding float audio to look for NaN/Inf")
    parser.add_argument("--strict", action="store_true", help="fail on skippable problems too")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)

    splits = args.splits or sorted(os.path.basename(p)[: -len(".tsv")]
                                   for p in glob.glob(os.path.join(glob.escape(args.data_dir), "*.tsv")))
    if not splits:
        print(f"{args.data_dir}: no *.tsv manifest found", file=sys.stderr)
        return 1
    if len(args.label_rate) not in (1, len(args.labels)):
        parser.error(f"give one --label-rate or one per label ({len(args.labels)})")
    rates = args.label_rate[0] if len(args.label_rate) == 1 else args.label_rate
    failed = False
    for split in splits:
        report = check_split(args.data_dir, split, args.label_dir, args.labels, rates, args.sample_rate,
                             args.min_samples, args.max_samples, scan_samples=not args.no_scan)
        if not args.quiet:
            for problem in report.problems:
                print(problem)
        print(report.summary())
        failed |= not report.ok or (args.strict and bool(report.problems))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
