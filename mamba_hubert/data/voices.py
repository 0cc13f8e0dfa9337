"""The corpus's voices and their splits, read from a voices file (`default_voices.txt` beside this module is the
demo's; its header gives the format). Every problem is refused with the file, line and what is wrong, before any
audio is written: unknown engines, splits and voices, Kokoro blends that are not weights summing to one, a speaker in
two splits, a held-out blend too close to a training one, a neural voice's package missing or not the pinned file."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mamba_hubert.command_line import UsageError
from mamba_hubert.data.model_files import ModelFileError
from mamba_hubert.data.neural_voices import KOKORO_STYLES, PIPER_VOICE, check_engine_files

DEFAULT_VOICES = Path(__file__).with_name("default_voices.txt")
SPLITS = ("train", "valid", "test")
ESPEAK_ACCENTS = (
    "en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)  # fmt: skip
ESPEAK_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6)) + ("klatt", "klatt2")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")  # built into Debian's flite
# Debian package that provides each festival voice.
FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
ENGINES = ("espeak", "flite", "festival", "kokoro", "piper")
MIN_HELD_OUT_DISTANCE = 0.3  # L1 between Kokoro blends: a held-out blend is a voice training never heard
_SUM_TOLERANCE = 1e-3  # blends written with two decimals


@dataclass(frozen=True)
class Voice:
    engine: str  # one of ENGINES
    name: str  # the engine's voice: espeak "accent+variant", a Kokoro blend "style:weight,...", ...
    speaker: str  # voices of one speaker share it; splits hold speakers out whole
    split: str = "train"
    f0: float = 0.0  # mean F0 (Hz) the pitch factor scales, where the engine takes one

    @property
    def weights(self) -> tuple[float, ...]:
        """A Kokoro blend's weight per style, in KOKORO_STYLES order."""
        named = dict(item.split(":") for item in self.name.split(","))
        return tuple(float(named.get(style, 0.0)) for style in KOKORO_STYLES)


class VoicesFileError(UsageError):
    """A voices file that cannot be used; the message names the file and line."""


def _blend(text: str, where: str) -> str:
    """The blend in canonical form (styles in KOKORO_STYLES order, zero weights left out)."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        style, _, value = item.partition(":")
        if style not in KOKORO_STYLES:
            raise VoicesFileError(f"{where}: unknown Kokoro style {style!r} (styles: {' '.join(KOKORO_STYLES)})")
        if style in weights:
            raise VoicesFileError(f"{where}: Kokoro style {style} given twice")
        try:
            weights[style] = float(value)
        except ValueError:
            raise VoicesFileError(f"{where}: the weight of {style} is {value!r}, not a number") from None
        if weights[style] < 0:
            raise VoicesFileError(f"{where}: the weight of {style} is negative ({value})")
    if abs(sum(weights.values()) - 1) > _SUM_TOLERANCE:
        raise VoicesFileError(f"{where}: the blend's weights sum to {sum(weights.values()):g}, not 1")
    return ",".join(f"{style}:{weights[style]:g}" for style in KOKORO_STYLES if weights.get(style))


def _voices_of_line(fields: Sequence[str], where: str) -> list[Voice]:
    if len(fields) not in (4, 5):
        raise VoicesFileError(f"{where}: expected `speaker engine split voice [f0]`, got {len(fields)} fields")
    speaker, engine, split, name = fields[:4]
    if engine not in ENGINES:
        raise VoicesFileError(f"{where}: unknown engine {engine!r} (engines: {' '.join(ENGINES)})")
    if split not in SPLITS:
        raise VoicesFileError(f"{where}: unknown split {split!r} (splits: {' '.join(SPLITS)})")
    f0 = 0.0
    if len(fields) == 5:
        if engine not in ("flite", "festival"):
            raise VoicesFileError(f"{where}: {engine} takes no f0")
        try:
            f0 = float(fields[4])
        except ValueError:
            raise VoicesFileError(f"{where}: f0 {fields[4]!r} is not a number") from None
        if not f0 > 0:
            raise VoicesFileError(f"{where}: f0 must be positive, got {fields[4]}")
    known = {"espeak": ESPEAK_VARIANTS, "flite": FLITE_VOICES, "festival": tuple(FESTIVAL_VOICE_PACKAGES),
             "piper": (PIPER_VOICE,)}
    if engine in known and name not in known[engine]:
        raise VoicesFileError(f"{where}: unknown {engine} voice {name!r} (voices: {' '.join(known[engine])})")
    if engine == "espeak":
        return [Voice(engine, f"{accent}+{name}", speaker, split) for accent in ESPEAK_ACCENTS]
    if engine == "kokoro":
        name = _blend(name, where)
    return [Voice(engine, name, speaker, split, f0)]


def read_voices(path: Path = DEFAULT_VOICES, check_packages: bool = True) -> list[Voice]:
    """The voices of a voices file, checked (see the module docstring)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise VoicesFileError(f"{path}: cannot read the voices file ({error.strerror})") from None
    voices: list[Voice] = []
    where_of: dict[Voice, str] = {}
    split_of: dict[str, tuple[str, str]] = {}  # speaker -> (split, where)
    engines_checked: set[str] = set()
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        for voice in _voices_of_line(fields, where):
            if voice in where_of:
                raise VoicesFileError(f"{where}: the same voice as {where_of[voice]}")
            first = split_of.setdefault(voice.speaker, (voice.split, where))
            if first[0] != voice.split:
                raise VoicesFileError(f"{where}: speaker {voice.speaker} is in {voice.split} here and in {first[0]} "
                                      f"at {first[1]}; a speaker belongs to one split")
            where_of[voice] = where
            voices.append(voice)
        if check_packages and fields[1] not in engines_checked:
            engines_checked.add(fields[1])
            try:
                check_engine_files(fields[1])
            except ModelFileError as error:
                raise VoicesFileError(f"{where}: {fields[1]}: {error}") from None
    for split in SPLITS:
        if not any(voice.split == split for voice in voices):
            raise VoicesFileError(f"{path}: no voice for the {split} split")
    blends = [voice for voice in voices if voice.engine == "kokoro"]
    for held_out in (voice for voice in blends if voice.split != "train"):
        for trained in (voice for voice in blends if voice.split == "train"):
            distance = sum(abs(a - b) for a, b in zip(held_out.weights, trained.weights))
            if distance < MIN_HELD_OUT_DISTANCE:
                raise VoicesFileError(
                    f"{where_of[held_out]}: the {held_out.split} blend {held_out.speaker} lies {distance:.2f} (L1) "
                    f"from the training blend {trained.speaker} ({where_of[trained]}); held-out blends need "
                    f"{MIN_HELD_OUT_DISTANCE}")
    return voices


def held_out_speakers(voices: Sequence[Voice]) -> dict[str, list[str]]:
    """{split: its speakers} for valid and test, as `corpus.json` records them."""
    return {split: sorted({v.speaker for v in voices if v.split == split}) for split in ("test", "valid")}
