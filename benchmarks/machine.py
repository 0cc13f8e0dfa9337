"""What the benchmarks share: the machine description and how results are written."""

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


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


def run_header(script: str, argv: list[str] | None) -> dict:
    """The results' header every benchmark starts with: how `script` (its __file__) was run (argv, or the process's
    own), the CPU and torch's version."""
    command = " ".join(["python", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])
    return {"command": command, "cpu": cpu_name(), "torch": torch.__version__}


def write_results(out: Path, payload: dict, markdown: str, plot: Callable[[Path], None] | None, png_name: str) -> None:
    """results.json, results.md and (when `plot` is given) the PNG, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "results.md").write_text(markdown)
    if plot is not None:
        plot(out / png_name)
    print(f"wrote {out}/results.json, results.md" + (f", {png_name}" if plot is not None else ""))


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, VmSize, ...) in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> int:
    """Resets VmHWM to the current resident set and returns that resident set in bytes."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return proc_status_bytes("VmRSS")


def time_and_peak_memory(call: Callable[[], None], repeat_wall_s: float = 10.0) -> dict:
    """Median wall time of `call` (at least one run, up to 5 while their total stays under `repeat_wall_s`) and
    the memory its first run touched (VmHWM over the resident set before it, Linux): meant for a fresh process,
    after a warm-up call on small inputs."""
    base = reset_peak_memory()
    times: list[float] = []
    while not times or (sum(times) < repeat_wall_s and len(times) < 5):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak_mb = (proc_status_bytes("VmHWM") - base) / 2**20
    timed = times[1:] if len(times) > 1 else times  # the first call also pays first-touch page faults
    return {"status": "ok", "time_s": statistics.median(timed), "runs": len(times), "peak_mb": peak_mb}


def measure_in_child(script: str, case: dict, timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Runs `script --child CASE_JSON` in a fresh Python process (with `env`, default this one's); its last stdout
    line is the result's JSON. A child that ran out of memory reports status "out of memory"."""
    command = [sys.executable, os.path.abspath(script), "--child", json.dumps(case)]
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"skipped (> {timeout_s:.0f} s wall, killed)"}
    if done.returncode != 0:
        if "can't allocate memory" in done.stderr or "MemoryError" in done.stderr:
            return {"status": "out of memory"}
        tail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"status": f"failed ({tail[:200]})"}
    return json.loads(done.stdout.strip().splitlines()[-1])
