"""CPU benchmark: a Mamba-2 encoder layer (`layer_type=mamba2`) against a Mamba-1 one (`mamba`), side by side.

    python benchmarks/bench_mamba2.py --out benchmarks/results/mamba2 [--dims 384 768] [--lengths 500 2000 8000]
        [--modes inference train] [--threads 2] [--budget-s 60]

Writes results.json and results.md into --out. Each block with mamba-ssm's defaults, as Lin et al. swap one for
the other: Mamba-1 d_state 16, Mamba-2 d_state 128, headdim 64, chunks of 256 (our chunked SSD scan on CPU);
both expand 2, d_conv 4, in a post-LN layer without FFN (their mambaformer and mamba2former). Batch 1, random
weights and input (time does not depend on them). `inference`: the forward without gradient; `train`: forward and
backward of the sum of the outputs. Each case in a fresh process: median wall time (after a warm-up call on a short
input) and the resident memory the first call added. The table gives Mamba-2 / Mamba-1 ratios per case.
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from machine import measure_in_child, run_header, time_and_peak_memory, write_results

BLOCKS = ("mamba", "mamba2")
MODES = ("inference", "train")
BLOCK_SETTINGS = {"mamba": {"d_state": 16}, "mamba2": {"d_state": 128, "headdim": 64, "chunk_size": 256}}


def build_layer(block: str, d_model: int) -> torch.nn.Module:
    from mamba_hubert.modules.layers import MambaEncoderLayer, build_mixer

    mixer = build_mixer(block, d_model, "concat", {"d_conv": 4, "expand": 2, **BLOCK_SETTINGS[block]})
    return MambaEncoderLayer(mixer, d_model, 0, 0.0, torch.nn.functional.gelu, 0.0, False)


def run_case(block: str, mode: str, d_model: int, length: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = build_layer(block, d_model)

    def call(x: torch.Tensor) -> None:
        if mode == "train":
            layer(x)[0].sum().backward()
        else:
            with torch.no_grad():
                layer(x)

    def inputs(frames: int) -> torch.Tensor:
        return torch.randn(frames, 1, d_model, requires_grad=mode == "train")  # (T, b, C), as fairseq's encoder

    call(inputs(min(length, 300)))  # warm-up
    x = inputs(length)
    return {**time_and_peak_memory(lambda: call(x)), "parameters": sum(p.numel() for p in layer.parameters())}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def ratios(results: list[dict]) -> list[dict]:
    """Per (mode, d_model, length): Mamba-2 / Mamba-1 time and peak memory."""
    by_key = {(r["block"], r["mode"], r["d_model"], r["length"]): r for r in results}
    rows = []
    for (block, mode, d_model, length), r in by_key.items():
        if block != "mamba2":
            continue
        one = by_key.get(("mamba", mode, d_model, length))
        if one is None or r["status"] != "ok" or one["status"] != "ok":
            continue
        rows.append({"mode": mode, "d_model": d_model, "length": length, "mamba_s": one["time_s"],
                     "mamba2_s": r["time_s"], "time_ratio": r["time_s"] / one["time_s"], "mamba_mb": one["peak_mb"],
                     "mamba2_mb": r["peak_mb"], "memory_ratio": r["peak_mb"] / max(one["peak_mb"], 1e-3)})
    return rows


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# Mamba-2 vs Mamba-1 encoder layer (CPU)", "",
        (f"`{meta['command']}`: {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['wall_s']:.0f} s."), "",
        ("| mode | d_model | frames | Mamba-1 s | Mamba-2 s | time Mamba-2 / Mamba-1 | Mamba-1 MB | Mamba-2 MB "
        "| memory Mamba-2 / Mamba-1 |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ratios(results):
        lines.append(f"| {row['mode']} | {row['d_model']} | {row['length']} | {_fmt(row['mamba_s'])} | "
                     f"{_fmt(row['mamba2_s'])} | {row['time_ratio']:.2f} | {_fmt(row['mamba_mb'])} | "
                     f"{_fmt(row['mamba2_mb'])} | {row['memory_ratio']:.2f} |")
    failed = [r for r in results if r["status"] != "ok"]
    lines += ["", *(f"- {r['block']} {r['mode']} d={r['d_model']} L={r['length']}: {r['status']}" for r in failed)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mamba2"))
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--lengths", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=60.0, help="a case still running at 3x this is killed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(run_case(case["block"], case["mode"], case["d_model"], case["length"], case["threads"])))
        return 0

    started = time.time()
    results = []
    for mode in args.modes:
        for d_model in args.dims:
            for length in args.lengths:
                for block in BLOCKS:  # the two blocks one after the other: the same machine load
                    case = {"block": block, "mode": mode, "d_model": d_model, "length": length}
                    outcome = measure_in_child(__file__, {**case, "threads": args.threads}, args.budget_s * 3)
                    results.append({**case, "time_s": None, "peak_mb": None, **outcome})
                    print(f"{mode:9s} d={d_model:<4d} L={length:<6d} {block:7s} {_fmt(results[-1]['time_s'])} s "
                          f"{_fmt(results[-1]['peak_mb'])} MB {results[-1]['status']}", flush=True)
    meta = {**run_header(__file__, argv),
            "threads": args.threads,
            "wall_s": round(time.time() - started, 1)}
    write_results(args.out, {"meta": meta, "ratios": ratios(results), "cases": results}, markdown(results, meta),
                  None, "")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
