"""What the benchmarks share: the machine description and how results are written."""

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path


def cpu_name() -> str:
    """The CPU model and core count, for the results' header."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(out: Path, payload: dict, markdown: str, plot: Callable[[Path], None] | None, png_name: str) -> None:
    """results.json, results.md and (when `plot` is given) the PNG, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "results.md").write_text(markdown)
    if plot is not None:
        plot(out / png_name)
    print(f"wrote {out}/results.json, results.md" + (f", {png_name}" if plot is not None else ""))
