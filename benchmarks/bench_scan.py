"""Selective-scan speed and peak memory on CPU: our fused kernel vs mamba-ssm's reference vs mambapy's pscan.

    python benchmarks/bench_scan.py --out runs/bench_scan [--lengths 500 2000 8000] [--d-states 16 24]
        [--d-inner 1536] [--batch 1] [--threads 2] [--budget-s 120] [--max-gb 10] [--png]

Writes results.json, results.md (a table with ratios) and, with --png, scan_time.png into --out.

What is measured, per (implementation, mode, d_state, L):
- The full Mamba-1 scan as a Mamba block calls it: softplus(delta + delta_bias), D skip, silu(z) gate, float32,
  inputs in mamba-ssm's layout (u, delta, z: (batch, d_inner, L); B, C: (batch, d_state, L)). mambapy works in
  (batch, L, d_inner) layout, so its transposes and the softplus / gate around `MambaBlock.selective_scan`
  (the same ops its own block runs) are inside its timing.
- Modes: `forward` under torch.no_grad(), and `forward_backward`: forward with every input requiring grad, then
  backward of a fixed random output gradient.
- Time: median wall time over the repeats (at least one, up to 5 while the case's total stays under 10 s), after
  a warm-up call on a short input that loads libraries and the compiled kernel.
- Peak memory: every case runs in a fresh Python process (a shared process would let the allocator reuse pages
  freed by earlier cases and hide their cost). After the inputs exist the process resets its peak resident set
  (Linux /proc/self/clear_refs) and reports VmHWM - VmRSS after the first timed call: all memory the call
  touched, outputs and gradients included, whoever allocated it (tracemalloc would not see torch's buffers).
- Budget: a case is skipped, not run, when the same implementation at a shorter L, scaled linearly in L (in the
  padded power-of-two length for mambapy), predicts more than --budget-s seconds or --max-gb GB; a case that still
  runs past the budget is killed and marked skipped. mamba-ssm's reference autograds a Python loop over time and
  mambapy materialises (batch, L, d_inner, d_state) tensors, which is what the skips are about.
"""

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import measure_in_child, run_header, time_and_peak_memory, write_results

IMPLS = ("ours", "mamba_ssm_ref", "mambapy")
MODES = ("forward", "forward_backward")
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def load_mamba_ssm_ref() -> Callable | None:
    """mamba-ssm's pure-PyTorch `selective_scan_ref`, or None when mamba-ssm's Python part is not installed."""
    from mamba_hubert.ops.mamba_ssm_reference import load_mamba_ssm_reference

    try:
        return load_mamba_ssm_reference().selective_scan_ref
    except ImportError:
        return None


def load_mambapy_scan() -> Callable | None:
    """mambapy's pscan-based scan behind mamba-ssm's signature, or None when mambapy is not installed."""
    try:
        from mambapy.mamba import MambaBlock
    except ImportError:
        return None

    def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        # The softplus and gate around selective_scan are the ops mambapy's MambaBlock runs itself.
        delta = delta + delta_bias[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        # selective_scan does not use self; it takes (batch, L, d_inner) / (batch, L, d_state) tensors.
        y = MambaBlock.selective_scan(None, u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2),
                                      C.transpose(1, 2), D)
        return y.transpose(1, 2) * F.silu(z)

    return scan


def load_ours() -> Callable | None:
    from mamba_hubert.ops import cpu_kernel

    return cpu_kernel.selective_scan_cpu if cpu_kernel.is_available() else None


LOADERS = {"ours": load_ours, "mamba_ssm_ref": load_mamba_ssm_ref, "mambapy": load_mambapy_scan}


def make_inputs(batch: int, d_inner: int, d_state: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs shaped and scaled like a Mamba block's: dt ~ 0.001-0.1 after softplus, A = -(1..N), D = 1."""
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.randn(batch, d_inner, length, generator=g) * 0.5,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.ones(d_inner),
        "z": torch.randn(batch, d_inner, length, generator=g),
        "delta_bias": torch.log(torch.expm1(torch.exp(torch.rand(d_inner, generator=g) * math.log(100)) * 1e-3)),
    }


def run_case(impl: str, mode: str, batch: int, d_inner: int, d_state: int, length: int, threads: int) -> dict:
    """Times one case in this process and measures its peak memory; meant to run in a fresh process."""
    torch.set_num_threads(threads)
    scan = LOADERS[impl]()
    if scan is None:
        return {"status": f"unavailable ({impl} not installed)"}
    backward = mode == "forward_backward"

    def call(inputs: dict[str, torch.Tensor], grad_out: torch.Tensor) -> None:
        with torch.set_grad_enabled(backward):
            y = scan(*(inputs[k] for k in ARG_NAMES), delta_softplus=True)
            if backward:
                y.backward(grad_out)
        for tensor in inputs.values():
            tensor.grad = None

    def prepared(length_: int):
        inputs = {k: v.requires_grad_(backward) for k, v in make_inputs(batch, d_inner, d_state, length_).items()}
        return inputs, torch.randn(batch, d_inner, length_)

    call(*prepared(64))  # warm-up: imports, the compiled kernel, thread pool
    inputs, grad_out = prepared(length)
    return time_and_peak_memory(lambda: call(inputs, grad_out))


def effective_length(impl: str, length: int) -> int:
    """The length an implementation's cost scales with: mambapy pads time to a power of two."""
    return 2 ** math.ceil(math.log2(length)) if impl == "mambapy" else length


def predicted_skip(impl: str, length: int, earlier: list[dict], budget_s: float, max_gb: float) -> str | None:
    """Why to skip a case given the same implementation's results at shorter lengths, or None to run it."""
    if not earlier:
        return None
    last = earlier[-1]
    if last["status"] != "ok":
        return "skipped (a shorter L already was)"
    scale = effective_length(impl, length) / effective_length(impl, last["length"])
    if last["time_s"] * scale > budget_s:
        return f"skipped (predicted {last['time_s'] * scale:.0f} s > {budget_s:.0f} s budget)"
    if last["peak_mb"] * scale > max_gb * 1024:
        return f"skipped (predicted {last['peak_mb'] * scale / 1024:.1f} GB > {max_gb:.0f} GB cap)"
    return None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _ratio(cases: dict[tuple, dict], impl: str, key: tuple, field: str) -> float | None:
    ours, other = cases.get(("ours",) + key), cases.get((impl,) + key)
    if not ours or not other or ours["status"] != "ok" or other["status"] != "ok" or ours[field] <= 0:
        return None  # unmeasured, or below the resident-set resolution (a page)
    return other[field] / ours[field]


def summarize(results: list[dict]) -> dict[str, float | None]:
    """Worst-case (smallest) ratios over the measured cases: how many times faster / smaller ours is."""
    cases = {(r["impl"], r["d_state"], r["length"], r["mode"]): r for r in results}
    keys = sorted({(r["d_state"], r["length"], r["mode"]) for r in results})
    summary = {}
    for impl in IMPLS[1:]:
        for mode in MODES:
            for field, label in (("time_s", "speedup"), ("peak_mb", "memory_ratio")):
                ratios = [_ratio(cases, impl, k, field) for k in keys if k[2] == mode]
                ratios = [r for r in ratios if r is not None]
                summary[f"{label}_vs_{impl}_{mode}_min"] = min(ratios) if ratios else None
    return summary


def markdown(results: list[dict], meta: dict, summary: dict[str, float | None]) -> str:
    cases = {(r["impl"], r["d_state"], r["length"], r["mode"]): r for r in results}
    keys = sorted({(r["d_state"], r["length"], r["mode"]) for r in results}, key=lambda k: (k[2], k[0], k[1]))

    def cell(impl: str, key: tuple, field: str) -> str:
        """The value, or for the time column the reason there is none."""
        r = cases.get((impl,) + key)
        if r is None or (r["status"] != "ok" and field != "time_s"):
            return "-"
        return _fmt(r[field]) if r["status"] == "ok" else r["status"]

    lines = [
        "# Selective scan on CPU: ours vs mamba-ssm `selective_scan_ref` vs mambapy `pscan`",
        "",
        f"Command: `{meta['command']}`",
        "",
        (
            f"Machine: {meta['cpu']}, {meta['threads']} torch threads; torch {meta['torch']}; "
            f"batch {meta['batch']}, d_inner {meta['d_inner']}, float32, softplus + delta_bias + D + z gate. "
            "Time: median wall seconds; memory: peak resident-set growth of a fresh process during one call (MB). "
            "Ratios: other / ours (higher is better for ours)."
        ),
        "",
        (
            "| mode | d_state | L | ours s | ref s | mambapy s | ref/ours | mambapy/ours "
            "| ours MB | ref MB | mambapy MB | ref/ours mem | mambapy/ours mem |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        d_state, length, mode = key
        row = [mode, str(d_state), str(length)]
        row += [cell(i, key, "time_s") for i in IMPLS]
        row += [_fmt(_ratio(cases, i, key, "time_s")) for i in IMPLS[1:]]
        row += [cell(i, key, "peak_mb") for i in IMPLS]
        row += [_fmt(_ratio(cases, i, key, "peak_mb")) for i in IMPLS[1:]]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Smallest ratio over the measured cases (other / ours):", ""]
    lines += [f"- {name}: {_fmt(value)}" for name, value in summary.items()]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Time (top) and peak memory (bottom) against L, log-log, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for column, mode in enumerate(MODES):
        for row, (field, unit) in enumerate((("time_s", "seconds"), ("peak_mb", "peak memory (MB)"))):
            ax = axes[row][column]
            for impl in IMPLS:
                for d_state in sorted({r["d_state"] for r in results}):
                    points = [(r["length"], r[field]) for r in results if r["impl"] == impl and r["mode"] == mode
                              and r["d_state"] == d_state and r["status"] == "ok"]
                    if points:
                        xs, ys = zip(*points)
                        ax.loglog(xs, ys, marker="o", label=f"{impl}, N={d_state}")
            ax.set_title(mode.replace("_", " + "))
            ax.set_ylabel(unit)
            ax.grid(True, which="both", alpha=0.3)
        axes[1][column].set_xlabel("sequence length L")
    lengths = sorted({r["length"] for r in results})
    for ax in axes.flat:
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(lengths, [str(length) for length in lengths])
    axes[0][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_scan"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--d-states", type=int, nargs="+", default=[16, 24])
    parser.add_argument("--d-inner", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--budget-s", type=float, default=120.0, help="time budget for one call of one case")
    parser.add_argument("--max-gb", type=float, default=10.0, help="skip cases predicted to need more memory")
    parser.add_argument("--png", action="store_true", help="also draw scan_time.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(run_case(case["impl"], case["mode"], case["batch"], case["d_inner"], case["d_state"],
                                  case["length"], case["threads"])))
        return 0

    started = time.time()
    results: list[dict] = []
    for mode in args.modes:
        for d_state in args.d_states:
            for impl in args.impls:
                earlier: list[dict] = []
                for length in sorted(args.lengths):
                    case = {"impl": impl, "mode": mode, "batch": args.batch, "d_inner": args.d_inner,
                            "d_state": d_state, "length": length}
                    reason = predicted_skip(impl, length, earlier, args.budget_s, args.max_gb)
                    child = {**case, "threads": args.threads}
                    outcome = {"status": reason} if reason else measure_in_child(__file__, child, args.budget_s * 3)
                    result = {**case, "time_s": None, "peak_mb": None, **outcome}
                    earlier.append(result)
                    results.append(result)
                    print(f"{mode:16s} N={d_state:<3d} L={length:<6d} {impl:14s} "
                          f"{_fmt(result['time_s'])} s  {_fmt(result['peak_mb'])} MB  {result['status']}", flush=True)

    meta = {
        **run_header(__file__, argv),
        "threads": args.threads, "batch": args.batch,
        "d_inner": args.d_inner, "budget_s": args.budget_s, "max_gb": args.max_gb,
        "wall_s": round(time.time() - started, 1),
    }
    summary = summarize(results)
    write_results(args.out, {"meta": meta, "summary": summary, "cases": results}, markdown(results, meta, summary),
                  (lambda path: plot(results, path)) if args.png else None, "scan_time.png")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
