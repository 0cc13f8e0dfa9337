"""CPU benchmark: streaming a causal paper-size model, latency and real-time factor per chunk size.

    python benchmarks/bench_streaming.py --out benchmarks/results/streaming [--models mamba_base_iter1
        mamba2_small_iter1] [--chunk-ms 100 200 500 1000 2000] [--seconds 20] [--threads 1]

Writes results.json and results.md into --out. Each model is built from its pretraining config as fairseq builds it,
made causal as a streaming model must be (`model.conv_pos=0 model.extractor_mode=layer_norm`; random weights: the
time does not depend on them), and fed --seconds of audio through `StreamingEncoder` in chunks of each size, after a
warm-up stream. Per chunk size: the compute latency of a chunk (from its arrival to its frames' features: mean,
95th percentile, max), the worst delay a frame sees (the chunk length, since its first sample waits for the chunk to
fill, plus the max compute latency), and the real-time factor (compute time / audio time). One fresh process per
model; --threads 1 is one core per stream.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import measure_in_child, run_header, write_results

SAMPLE_RATE = 16000
DEFAULT_MODELS = ("mamba_base_iter1", "mamba2_small_iter1")
CAUSAL = ("++model.conv_pos=0", "++model.extractor_mode=layer_norm")  # ++: set whether or not the file does


def run_model(name: str, chunk_ms: list[float], seconds: float, threads: int) -> dict:
    from mamba_hubert.inference.streaming import StreamingEncoder
    from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_from_config(DEFAULT_CONFIG_DIR, name, 500, CAUSAL).eval()
    encoder = StreamingEncoder(model)
    audio = torch.randn(round(seconds * SAMPLE_RATE))

    def stream(chunk: int, samples: torch.Tensor) -> list[float]:
        latencies = []
        for start in range(0, len(samples), chunk):
            began = time.perf_counter()
            encoder.push(samples[start : start + chunk])
            latencies.append(time.perf_counter() - began)
        encoder.flush()
        return latencies

    rows = []
    for ms in chunk_ms:
        chunk = round(ms * SAMPLE_RATE / 1000)
        stream(chunk, audio[: 2 * chunk])  # warm-up
        latencies = sorted(stream(chunk, audio))
        rows.append({"chunk_ms": ms, "chunks": len(latencies), "mean_ms": 1000 * statistics.mean(latencies),
                     "p95_ms": 1000 * latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
                     "max_ms": 1000 * latencies[-1], "worst_delay_ms": ms + 1000 * latencies[-1],
                     "rtf": sum(latencies) / seconds})
    return {"status": "ok", "parameters": sum(p.numel() for p in model.parameters()), "rows": rows}


def markdown(results: dict[str, dict], meta: dict) -> str:
    lines = ["# Streaming latency and real-time factor per chunk size (CPU)", "",
             (f"`{meta['command']}`: {meta['cpu']}, {meta['threads']} thread(s), torch {meta['torch']}, "
             f"{meta['seconds']:g} s of audio per chunk size, {meta['wall_s']:.0f} s."), "",
             "| model | parameters | chunk ms | chunks | latency mean ms | p95 ms | max ms | worst frame delay ms | RTF |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if result["status"] != "ok":
            lines.append(f"| {name} | {result['status']} | | | | | | | |")
            continue
        for row in result["rows"]:
            lines.append(f"| {name} | {result['parameters'] / 1e6:.1f} M | {row['chunk_ms']:g} | {row['chunks']} | "
                         f"{row['mean_ms']:.1f} | {row['p95_ms']:.1f} | {row['max_ms']:.1f} | "
                         f"{row['worst_delay_ms']:.0f} | {row['rtf']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_streaming"))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="pretraining config names")
    parser.add_argument("--chunk-ms", type=float, nargs="+", default=[100, 200, 500, 1000, 2000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="a model's process is killed after this")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(run_model(case["model"], case["chunk_ms"], case["seconds"], case["threads"])))
        return 0

    started = time.time()
    results = {}
    for name in args.models:
        case = {"model": name, "chunk_ms": args.chunk_ms, "seconds": args.seconds, "threads": args.threads}
        results[name] = measure_in_child(__file__, case, args.timeout_s)
        for row in results[name].get("rows", []):
            print(f"{name} {row['chunk_ms']:g} ms: mean {row['mean_ms']:.1f} ms, max {row['max_ms']:.1f} ms, "
                  f"RTF {row['rtf']:.3f}", flush=True)
    meta = {**run_header(__file__, argv),
            "threads": args.threads, "seconds": args.seconds,
            "wall_s": round(time.time() - started, 1)}
    write_results(args.out, {"meta": meta, "models": results}, markdown(results, meta), None, "")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
