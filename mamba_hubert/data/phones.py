"""The corpus's phone set (39 CMU-dictionary phones and silence) and its frame-level labels: every engine's timings
become (phone, start, end) segments on this set, and each encoder frame takes the phone at its window centre."""

import bisect

from mamba_hubert.frames import conv_output_length, receptive_field

SAMPLE_RATE = 16000

# 39 CMU-dictionary phones plus silence: the label set of every engine.
PHONES: tuple[str, ...] = (
    "SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
    "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W",
    "Y", "Z", "ZH",
)  # fmt: skip
def cmu_phone(name: str) -> str:
    """Map a festival / flite phone (radio / CMU set) to PHONES."""
    name = name.lower()
    if name in ("pau", "h#", "brth", "ssil"):
        return "SIL"
    phone = {"ax": "AH", "axr": "ER"}.get(name, name.upper())
    if phone not in PHONES:
        raise ValueError(f"unknown festival/flite phone {name!r}")
    return phone



Segments = list[tuple[str, float, float]]  # (phone, start s, end s), contiguous and in order


def frame_labels(segments: Segments, num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[str]:
    """One phone per encoder frame: the phone at the centre of the frame's receptive field (SIL outside)."""
    window, hop = receptive_field()
    ends = [end for _, _, end in segments]
    labels = []
    for i in range(conv_output_length(num_samples)):
        centre = (hop * i + window / 2) / sample_rate
        k = bisect.bisect_right(ends, centre)
        inside = k < len(segments) and segments[k][1] <= centre
        labels.append(segments[k][0] if inside else "SIL")
    return labels


