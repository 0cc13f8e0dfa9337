"""GPU benchmark, run by scripts/gpu_check.sh: paper-size pretraining steps and this package's Mamba layer against
mamba-ssm's fused one.

    python benchmarks/bench_gpu.py --out DIR [--quick]

Writes results.json and results.md into --out.

- One pretraining step (forward with HuBERT masking, the pretraining loss, backward, Adam step) of Mamba base,
  ConBiMamba base and the Transformer base (built from examples/config/pretrain/*_iter2.yaml as fairseq-hydra-train
  builds them, 500 classes) on one GPU's batch of base_gpu.yaml: dataset.max_tokens 1,400,000 samples of crops of
  task.max_sample_size 250,000, so 5 utterances of 250,000 samples. Model and batch in bf16 and in fp16, as
  fairseq's common.bf16 / common.fp16 run them (its optimizer's fp32 copies left out).
  Median of 3 steps after 2 warm-up steps, and the peak of allocated CUDA memory.
- `mamba_hubert.modules.Mamba` (scan_impl auto: mamba-ssm's fused mamba_inner_fn where causal-conv1d imports) against
  `mamba_ssm.Mamba` with its fused fast path (mamba_inner_fn), same weights, Mamba base's layer size on the frames of
  that batch, forward and forward+backward, fp32 and bf16 autocast: times and ours / mamba-ssm ratios.

--quick: tiny configs and shapes, for a check of the results' fields on any machine; without CUDA the mamba-ssm
comparison is recorded as skipped with the reason, this package's layer is still timed; the steps run in fp32.
"""

import argparse
import importlib.metadata
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_encoder import NUM_CLASSES, build_model, pretraining_loss
from machine import cpu_name, time_and_peak_memory, write_results

MODELS = ("mamba_base_iter2", "conbimamba_base_iter2", "transformer_base_iter2")
QUICK_MODELS = ("tiny_mamba", "tiny_conbimamba", "tiny_transformer")
BATCH, SAMPLES = 5, 250_000  # base_gpu.yaml: max_tokens 1,400,000 // max_sample_size 250,000 crops
QUICK_BATCH, QUICK_SAMPLES = 1, 16_000
LAYER = {"d_model": 768, "d_state": 24, "d_conv": 4, "expand": 3}  # arch/mamba_base.yaml
QUICK_LAYER = {"d_model": 32, "d_state": 8, "d_conv": 4, "expand": 2}
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WARMUP, REPEATS = 2, 3


def measure(call: Callable[[], None], device: torch.device) -> dict:
    """Median time of `call` and the memory it takes: on CUDA the peak of allocated memory above what was allocated
    before, over WARMUP + REPEATS calls; on CPU machine.py's resident-set measure."""
    if device.type != "cuda":
        call()  # warm-up: first-use kernel compilation and allocator growth
        return time_and_peak_memory(call, repeat_wall_s=1.0)
    for _ in range(WARMUP):
        call()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"status": "ok", "time_s": statistics.median(times), "runs": REPEATS, "peak_mb": peak_mb}


def training_step(name: str, precision: str, device: torch.device, batch: int, samples: int) -> dict:
    """One pretraining step of config `name` under `precision` autocast, timed."""
    from mamba_hubert.frames import conv_output_length

    dtype = PRECISIONS[precision]
    model = build_model(name).to(device, dtype).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, eps=1e-4)  # 1e-8 is 0 in fp16
    generator = torch.Generator().manual_seed(0)
    source = (torch.randn(batch, samples, generator=generator) * 0.1).to(device, dtype)
    labels = torch.randint(0, NUM_CLASSES, (batch, conv_output_length(samples)), generator=generator).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        pretraining_loss(model, source, labels).backward()
        optimizer.step()

    result = measure(step, device)
    return {"model": name, "precision": precision, "parameters": sum(p.numel() for p in model.parameters()),
            **result}


def mamba_ssm_unavailable(device: torch.device) -> str | None:
    """Why bare mamba-ssm's fused Mamba cannot run here, or None."""
    if device.type != "cuda":
        return "skipped (no CUDA device: mamba-ssm's fused path runs on CUDA only)"
    try:
        import mamba_ssm  # noqa: F401
    except Exception as error:  # noqa: BLE001 (an ImportError, or a kernel built for another GPU failing to load)
        return f"skipped (mamba_ssm cannot be imported: {error})"
    return None


def layer_comparison(device: torch.device, batch: int, frames: int, size: dict) -> dict:
    """This package's Mamba layer against mamba-ssm's on the same weights and input: times and ratios."""
    from mamba_hubert.modules import Mamba

    ours = Mamba(**size, scan_impl="auto").to(device)
    skipped = mamba_ssm_unavailable(device)
    theirs = None
    if skipped is None:
        import mamba_ssm

        theirs = mamba_ssm.Mamba(**size).to(device)
        theirs.load_state_dict(ours.state_dict())  # same parameter names and shapes
    x = torch.randn(batch, frames, size["d_model"], device=device)
    cases = []
    for precision in ("fp32", "bf16"):
        for passes in ("forward", "forward+backward"):
            row = {"precision": precision, "pass": passes}
            for label, layer in (("ours", ours), ("mamba_ssm", theirs)):
                if layer is None:
                    continue
                row[label] = _layer_call_time(layer, x, precision, passes, device)
            if theirs is not None and row["ours"]["status"] == row["mamba_ssm"]["status"] == "ok":
                row["ratio_ours_over_mamba_ssm"] = row["ours"]["time_s"] / row["mamba_ssm"]["time_s"]
            cases.append(row)
    agreement = None
    if theirs is not None:
        with torch.no_grad():
            agreement = (ours(x) - theirs(x)).abs().max().item()
    return {"shape": {"batch": batch, "frames": frames, **size}, "mamba_ssm": skipped or "ok",
            "max_abs_difference_fp32": agreement, "cases": cases}


def _layer_call_time(layer: torch.nn.Module, x: torch.Tensor, precision: str, passes: str,
                     device: torch.device) -> dict:
    inputs = x.detach().clone().requires_grad_(passes == "forward+backward")

    def call() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = layer(inputs)
        if passes == "forward+backward":
            out.float().square().mean().backward()

    try:
        return measure(call, device)
    except Exception as error:  # noqa: BLE001 (one failing case, e.g. out of memory, must not end the run)
        return {"status": f"failed ({type(error).__name__}: {str(error)[:200]})"}


def _safe_training_step(name: str, precision: str, device: torch.device, batch: int, samples: int) -> dict:
    try:
        return training_step(name, precision, device, batch, samples)
    except Exception as error:  # noqa: BLE001 (one failing case, e.g. out of memory, must not end the run)
        return {"model": name, "precision": precision, "status": f"failed ({type(error).__name__}: {error!s:.200})"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cell(entry: dict | None) -> str:
    return "" if entry is None else f"{entry['time_s']:.5f}" if entry["status"] == "ok" else entry["status"]


def markdown(payload: dict) -> str:
    lines = [f"# GPU benchmark ({'quick, ' if payload['quick'] else ''}{payload['device']})", "",
             (f"{payload['machine']['gpu'] or payload['machine']['cpu']}; torch {payload['machine']['torch']}, "
              f"CUDA {payload['machine']['cuda']}, mamba-ssm {payload['machine']['mamba_ssm']}"), "",
             f"Training step, batch {payload['batch']['utterances']} x {payload['batch']['samples']} samples:", "",
             "| model | precision | step (s) | peak memory (MiB) |", "|---|---|---|---|"]
    for row in payload["training_step"]:
        if row["status"] == "ok":
            lines.append(f"| {row['model']} | {row['precision']} | {row['time_s']:.3f} | {row['peak_mb']:.0f} |")
        else:
            lines.append(f"| {row['model']} | {row['precision']} | {row['status']} | |")
    layer = payload["mamba_layer"]
    lines += ["", f"Mamba layer {layer['shape']}; mamba-ssm: {layer['mamba_ssm']}", "",
              "| precision | pass | ours (s) | mamba-ssm (s) | ours / mamba-ssm |", "|---|---|---|---|---|"]
    for row in layer["cases"]:
        ratio = row.get("ratio_ours_over_mamba_ssm")
        lines.append(f"| {row['precision']} | {row['pass']} | {_cell(row.get('ours'))} | {_cell(row.get('mamba_ssm'))} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny configs and shapes (any machine, seconds)")
    args = parser.parse_args(argv)
    import logging

    for noisy in ("hydra", "fairseq", "mamba_hubert"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mamba_hubert.frames import conv_output_length

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models, batch, samples, size = ((QUICK_MODELS, QUICK_BATCH, QUICK_SAMPLES, QUICK_LAYER) if args.quick
                                    else (MODELS, BATCH, SAMPLES, LAYER))
    precisions = ("fp32",) if args.quick else ("bf16", "fp16")  # CPU bf16/fp16 kernels are slow and say nothing
    steps = [_safe_training_step(name, precision, device, batch, samples) for name in models for precision in precisions]
    payload = {
        "quick": args.quick,
        "device": device.type,
        "machine": {"cpu": cpu_name(), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                    "torch": torch.__version__, "cuda": torch.version.cuda, "mamba_ssm": _version("mamba_ssm"),
                    "causal_conv1d": _version("causal_conv1d")},
        "batch": {"utterances": batch, "samples": samples},
        "training_step": steps,
        "mamba_layer": layer_comparison(device, batch, conv_output_length(samples), size),
    }
    write_results(args.out, payload, markdown(payload), None, "")


if __name__ == "__main__":
    main()
