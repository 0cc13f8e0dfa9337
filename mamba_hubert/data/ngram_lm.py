"""Word n-gram LM in ARPA format for lexicon + LM decoding (`--ctc-lexicon/--ctc-lm`), estimated by IRSTLM.

    mamba-hubert-lm --text CORPUS/lm.txt --out CORPUS/lm.arpa [--order 3] [--smoothing ikn]

IRSTLM (Debian package `irstlm`) estimates an interpolated LM, by default with its improved Kneser-Ney
smoothing (`ikn`), which needs enough text to count how many n-grams occur once, twice, ...; Witten-Bell
(`wb`) works on any text. flashlight-text's KenLM reads the ARPA file it writes.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mamba_hubert.command_line import one_line_errors, setup_logging

TLM_PATHS = ("tlm", "/usr/lib/irstlm/bin/tlm")  # Debian installs IRSTLM's tools outside PATH


def find_tlm() -> str:
    """IRSTLM's estimator, or SystemExit naming the package that provides it."""
    for candidate in TLM_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit("building the n-gram LM needs IRSTLM's tlm: apt-get install irstlm")


def build_arpa(text: Path, arpa: Path, order: int = 3, smoothing: str = "ikn") -> Path:
    """Estimate an `order`-gram LM on `text` (one sentence per line) with IRSTLM's `smoothing` method and
    write it to `arpa`."""
    lines = [line.split() for line in Path(text).read_text().splitlines()]
    if not any(lines):
        raise ValueError(f"{text}: no sentences to estimate an LM from")
    tlm = find_tlm()
    arpa = Path(arpa)
    with tempfile.TemporaryDirectory(dir=arpa.parent) as tmp:  # same file system: the rename below is atomic
        marked = Path(tmp) / "text.txt"  # IRSTLM wants the sentence boundaries written out
        marked.write_text("".join(f"<s> {' '.join(words)} </s>\n" for words in lines if words))
        partial = Path(tmp) / "lm.arpa"
        result = subprocess.run([tlm, f"-tr={marked}", f"-n={order}", f"-lm={smoothing}", f"-o={partial}"],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0 or not partial.exists():
            raise RuntimeError(f"IRSTLM tlm failed on {text} (exit {result.returncode}):\n{result.stderr[-2000:]}")
        os.replace(partial, arpa)  # only a finished LM appears under its name
    return arpa


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-lm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, required=True, help="training text, one sentence per line (lm.txt)")
    parser.add_argument("--out", type=Path, required=True, help="output ARPA file")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--smoothing", default="ikn", help="IRSTLM's -lm method: ikn, kn, msb, wb, ...")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.text.is_file():
        parser.error(f"no text file {args.text}")
    if args.order < 1:
        parser.error(f"--order must be at least 1, got {args.order}")
    with one_line_errors(parser.prog):
        print(build_arpa(args.text, args.out, args.order, args.smoothing))


if __name__ == "__main__":
    main()
