"""Phone boundaries of a rendered utterance against an independent forced alignment (pocketsphinx 5's aligner with
its own CMU dictionary and US English acoustic model): the start time of every phone the two sequences share."""

import difflib
from collections.abc import Sequence

import numpy as np

from mamba_hubert.data.phones import Segments


def dictionary_words() -> set[str]:
    """The words pocketsphinx's dictionary knows (alignment needs every word in it)."""
    from pocketsphinx import get_model_path

    with open(f"{get_model_path()}/en-us/cmudict-en-us.dict", encoding="utf-8") as f:
        return {line.split()[0].upper() for line in f if line.strip() and "(" not in line.split()[0]}


def pocketsphinx_segments(audio: np.ndarray, words: str) -> Segments | None:
    """(phone, start s, end s) of `words` forced-aligned to 16 kHz `audio` (pocketsphinx's 10 ms frames), or None
    where its beam search finds no alignment."""
    from pocketsphinx import Decoder

    samples = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    decoder = Decoder(loglevel="ERROR")
    decoder.set_align_text(words.lower())
    decoder.start_utt()
    decoder.process_raw(samples, full_utt=True)
    decoder.end_utt()
    decoder.set_alignment()  # a second pass for phone-level boundaries within the word alignment
    decoder.start_utt()
    decoder.process_raw(samples, full_utt=True)
    try:
        decoder.end_utt()
    except RuntimeError:
        return None
    return [(phone.name, phone.start / 100, (phone.start + phone.duration) / 100)
            for word in decoder.get_alignment() for phone in word]


def boundary_errors(ours: Segments, theirs: Segments) -> list[float]:
    """|start difference| (s) of each non-silence phone matched between the two phone sequences."""
    matcher = difflib.SequenceMatcher(a=[p for p, _, _ in ours], b=[p for p, _, _ in theirs], autojunk=False)
    return [abs(ours[block.a + i][1] - theirs[block.b + i][1]) for block in matcher.get_matching_blocks()
            for i in range(block.size) if ours[block.a + i][0] != "SIL"]


def agreement(errors: Sequence[float]) -> tuple[float, float]:
    """(median error in ms, share of phones within 50 ms)."""
    values = 1000 * np.asarray(errors)
    return float(np.median(values)), float(np.mean(values <= 50))
