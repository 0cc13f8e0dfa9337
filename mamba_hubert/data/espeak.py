"""espeak-ng through its C library (ctypes): audio with a phoneme event per rendered phoneme, and a text's phonemes in
IPA clause by clause; its English phoneme mnemonics mapped onto the corpus's phone set."""

import ctypes
from collections.abc import Sequence

import numpy as np

from mamba_hubert.data.phones import Segments

ESPEAK_LIBRARY = "libespeak-ng.so.1"


# espeak-ng English phoneme mnemonics -> ARPAbet. An empty tuple merges the phoneme into the one before it
# (";" marks a hiatus between vowels); a tuple of several phones shares the phoneme's duration evenly.
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    **{p: ("SIL",) for p in ("_", "_:", "_!", "_|", "_^_")},
    ";": (),
    "p": ("P",), "b": ("B",), "t": ("T",), "d": ("D",), "k": ("K",), "g": ("G",), "f": ("F",), "v": ("V",),
    "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",), "Z": ("ZH",), "h": ("HH",),
    "tS": ("CH",), "dZ": ("JH",), "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",),
    "w": ("W",), "j": ("Y",), "x": ("K",), "?": ("T",),  # glottal stop stands for a /t/ ("button")
    "n-": ("AH", "N"), "@L": ("AH", "L"), "m-": ("AH", "M"),
    "a": ("AE",), "aa": ("AE",), "a#": ("AH",), "A:": ("AA",), "A@": ("AA", "R"), "0": ("AA",),
    "O": ("AO",), "O:": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"), "E": ("EH",), "e": ("EH",),
    "e@": ("EH", "R"), "eI": ("EY",), "I": ("IH",), "i": ("IY",), "i:": ("IY",), "i@": ("IH", "R"),
    "i@3": ("IH", "R"), "IR": ("ER",), "@": ("AH",), "3": ("ER",), "3:": ("ER",), "VR": ("ER",),
    "V": ("AH",), "U": ("UH",), "U@": ("UH", "R"), "u:": ("UW",), "u": ("UW",), "aI": ("AY",),
    "aI@": ("AY", "ER"), "aU": ("AW",), "aU@": ("AW", "ER"), "oU": ("OW",), "o": ("OW",), "OI": ("OY",),
}  # fmt: skip
# Accent and allophone marks espeak appends to a base mnemonic ("t#" flap, "t[" dental, "@2", "I2", "w#").
_ESPEAK_MARKS = "#[/-2345"


def espeak_phones(symbol: str) -> tuple[str, ...] | None:
    """ARPAbet phones for one espeak-ng phoneme mnemonic, or None if it is not known."""
    while symbol:
        if symbol in ESPEAK_TO_ARPABET:
            return ESPEAK_TO_ARPABET[symbol]
        if symbol[-1] not in _ESPEAK_MARKS:
            return None
        symbol = symbol[:-1]
    return None


class _EspeakEvent(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


class Espeak:
    """espeak-ng's C library in synchronous mode: audio with phoneme events per utterance, or a text's IPA."""

    _EVENT_END_OF_LIST, _EVENT_PHONEME = 0, 7
    _RATE, _PITCH = 1, 3  # espeak_PARAMETER
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.POINTER(_EspeakEvent))

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ESPEAK_LIBRARY)
        self._libc = ctypes.CDLL(None)  # espeak-ng 1.51 draws its voices' breath and jitter noise from libc's rand()
        # AUDIO_OUTPUT_SYNCHRONOUS, default buffer, default data path, espeakINITIALIZE_PHONEME_EVENTS
        self.sample_rate = self.lib.espeak_Initialize(2, 0, None, 1)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: the library holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._to_phonemes = self.lib.espeak_TextToPhonemes
        self._to_phonemes.restype = ctypes.c_char_p
        self._to_phonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != self._EVENT_END_OF_LIST:
            if events[i].type == self._EVENT_PHONEME:
                self._events.append((events[i].id.string.decode(), events[i].audio_position))
            i += 1
        return 0

    def render(self, voice: str, rate: float, pitch: float, text: str,
               noise_seed: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 audio at self.sample_rate and (mnemonic, start ms) phoneme events. `noise_seed` seeds the noise of
        the variants that breathe (f2, f3, f5, ...): without it their audio would depend on every earlier rand() call
        of the process, and of the process it was forked from."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(self._RATE, round(175 * rate), 0)  # words per minute, default 175
        self.lib.espeak_SetParameter(self._PITCH, round(min(max(50 + 150 * (pitch - 1), 0), 100)), 0)  # 0-100
        self._chunks, self._events = [], []
        self._libc.srand(ctypes.c_uint(noise_seed))
        data = text.encode()
        # espeak_Synth(text, size, position, POS_CHARACTER, end_position, espeakCHARS_AUTO, id, user_data)
        self.lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, 1, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, self._events

    def ipa_clauses(self, voice: str, text: str) -> list[tuple[list[list[str]], str]]:
        """The text's phonemes in IPA as espeak-ng would speak them: per clause, its words (each a list of phonemes,
        stress marks kept on the phoneme they precede) and the punctuation that ends it ("" if none)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        data = ctypes.create_string_buffer(text.encode())
        start = ctypes.addressof(data)
        pointer = ctypes.c_void_p(start)
        clauses = []
        while pointer.value:
            before = pointer.value - start
            # espeakCHARS_AUTO; espeakPHONEMES_IPA with "_" (bits 8-23) between the phonemes of a word
            phonemes = self._to_phonemes(ctypes.byref(pointer), 0, 0x02 | (ord("_") << 8)).decode()
            consumed = text[before:(pointer.value - start) if pointer.value else len(text)]
            ending = next((c for c in reversed(consumed) if c in ",.;:?!"), "")
            words = [word.split("_") for word in phonemes.split()]
            if words:
                clauses.append((words, ending))
        return clauses


def espeak_segments(events: Sequence[tuple[str, int]], duration: float) -> Segments:
    """Segments from espeak phoneme events (mnemonic, start ms); unknown mnemonics join the phone before."""
    bounds = [start / 1000 for _, start in events[1:]] + [duration]
    segments: Segments = []
    for (symbol, start_ms), end in zip(events, bounds):
        phones = espeak_phones(symbol)
        if not phones:
            if segments:
                segments[-1] = (segments[-1][0], segments[-1][1], end)
            continue
        start = start_ms / 1000
        step = (end - start) / len(phones)
        segments += [(phone, start + k * step, start + (k + 1) * step) for k, phone in enumerate(phones)]
    return segments




_ESPEAK: Espeak | None = None  # one per process, created on first use


def espeak() -> Espeak:
    """This process's espeak-ng library (initialised once)."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = Espeak()
    return _ESPEAK
