"""Whole-model CPU benchmark: Mamba-HuBERT base models vs fairseq's Transformer HuBERT Base.

    python benchmarks/bench_encoder.py --out benchmarks/results/encoder [--quick] [--png]
        [--models mamba_base_iter2 conbimamba_base_iter2 transformer_base_iter2] [--seconds 10 30 60 120 300]
        [--long-form-seconds 600] [--mamba-plain-seconds 10 60] [--threads 2] [--chunk-seconds 10]
        [--train-seconds 10] [--budget-s 900] [--max-gb 16] [--min-calls 1] [--rounds 1]

Writes results.json, results.md and, with --png, encoder_rtf.png into --out.

What is measured, per model (built from examples/config/pretrain/<name>.yaml exactly as fairseq-hydra-train
builds it, 500 label classes, random weights: run time does not depend on them):
- Inference over random audio of each duration, batch 1: Mamba models through `extract_features_long` (chunked
  CNN, layer-by-layer encoder with carried scan state), the Transformer through plain `extract_features`
  (its attention needs the whole sequence). With --mamba-plain-seconds, Mamba models also through plain
  `extract_features`, for the long-form path's own cost; --long-form-seconds adds durations (a 10-minute
  recording by default) for the Mamba models' long-form path only. RTF = wall time / audio duration (fastest of
  up to 3 calls while a case stays under 20 s; its process CPU time is kept too). Peak memory: growth of the
  resident set (VmHWM after /proc/self/clear_refs) during the first call, above the loaded model and audio, and
  the process's absolute peak.
- One training step (forward with HuBERT masking, cross-entropy on the masked and unmasked logits, backward,
  Adam step) on one utterance of --train-seconds, fastest of up to 3 after a warm-up step.
- FLOPs, analytic: every Conv1d and Linear the inference path runs (2 per multiply-add), the selective scan at 7
  per (frame, channel, state) element (decay exp, state multiply-add, output multiply-add) and attention's two
  T x T products; a training step is counted as 3x the forward. Against this machine's fp32 GEMM rate (torch.mm
  of 2048 x 2048 at the same thread count, best of 5, measured at the start and end of the run) this gives the
  time the arithmetic alone would take at GEMM speed: the compute floor.
- Each case runs in a fresh process (run time and peak memory are its own). With --rounds N the whole sweep of
  inference cases runs N times over, and the tables, plot and summary give each case's median over the rounds
  (the RTF table also its range): fresh processes of one case differ by ~15% on a shared 2-core VM, which a
  single sweep cannot tell from a trend over durations. A case is skipped when the same
  model's previous duration, extrapolated (by the growth exponent of its last two durations), predicts more than
  --budget-s seconds or --max-gb GB; a case still running at 3x the budget is killed, and one that allocates more
  than --max-gb GB (an address-space limit set in the child) is reported out of memory. The 1-minute load average
  is recorded before every case: other processes on the machine slow it down.
"""

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import measure_in_child, proc_status_bytes, reset_peak_memory, run_header, write_results
from torch import nn

SAMPLE_RATE = 16000
NUM_CLASSES = 500
DEFAULT_MODELS = ("mamba_base_iter2", "conbimamba_base_iter2", "transformer_base_iter2")
DEFAULT_SECONDS = (10, 30, 60, 120, 300)
QUICK_SECONDS = (10, 60)
REPEAT_WALL_S = 20.0
SCAN_FLOPS_PER_ELEMENT = 7


def _cap_memory(max_gb: float) -> None:
    """Let this process map at most `max_gb` GB more than it has now: a case that needs more fails with an
    allocation error instead of pushing the machine (shared with other work) into the kernel's OOM killer."""
    limit = proc_status_bytes("VmSize") + round(max_gb * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def build_model(name: str) -> nn.Module:
    from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config

    return build_from_config(DEFAULT_CONFIG_DIR, name, NUM_CLASSES)


def is_mamba(model: nn.Module) -> bool:
    from mamba_hubert.modules import Mamba

    return any(isinstance(m, Mamba) for m in model.modules())


def gemm_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product rate at `threads` threads (best of `repeats`)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def model_flops(model: nn.Module, num_samples: int) -> dict[str, float]:
    """Analytic FLOPs of `extract_features` on one utterance of `num_samples`, by part."""
    from fairseq.modules import MultiheadAttention

    from mamba_hubert.frames import conv_output_length
    from mamba_hubert.modules import InnBiMamba, Mamba

    conv_layers = model.conv_layers
    flops = {"cnn": 0.0, "projections": 0.0, "convolutions": 0.0, "scan": 0.0, "attention": 0.0}
    for index, (channels, kernel, _) in enumerate(conv_layers):
        in_channels = 1 if index == 0 else conv_layers[index - 1][0]
        flops["cnn"] += 2 * conv_output_length(num_samples, conv_layers[: index + 1]) * channels * in_channels * kernel
    frames = conv_output_length(num_samples, conv_layers)
    per_frame = [model.post_extract_proj] if model.post_extract_proj is not None else []
    for module in per_frame + list(model.encoder.modules()):
        if isinstance(module, nn.Linear):
            flops["projections"] += 2 * frames * module.in_features * module.out_features
        elif isinstance(module, nn.Conv1d):
            flops["convolutions"] += (2 * frames * module.out_channels * module.in_channels // module.groups
                                      * module.kernel_size[0])
        elif isinstance(module, Mamba):
            directions = 2 if isinstance(module, InnBiMamba) else 1
            flops["scan"] += SCAN_FLOPS_PER_ELEMENT * directions * frames * module.d_inner * module.d_state
        elif isinstance(module, MultiheadAttention):
            flops["attention"] += 4 * frames * frames * module.embed_dim
    flops["total"] = sum(flops.values())
    return flops


def _best_time(call, min_calls: int = 1) -> tuple[float, float, int, int]:
    """Fastest wall time of `call` over at least `min_calls` and up to max(3, min_calls) calls (the extra ones while
    their total stays under REPEAT_WALL_S; other processes only ever add time, so the fastest is the least
    disturbed), the process CPU time (all threads) of that call, calls made, and the resident-set growth of the
    first call in bytes."""
    base = reset_peak_memory()
    times: list[tuple[float, float]] = []
    growth = 0
    while len(times) < min_calls or (sum(wall for wall, _ in times) < REPEAT_WALL_S and len(times) < 3):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
        if len(times) == 1:
            growth = proc_status_bytes("VmHWM") - base
    wall, cpu = min(times)
    return wall, cpu, len(times), growth


def run_inference(name: str, seconds: float, path: str, threads: int, chunk_seconds: float, max_gb: float,
                  min_calls: int = 1) -> dict:
    """One inference case in this process (meant to be a fresh one)."""
    from mamba_hubert.inference.long_form import extract_features_long

    torch.set_num_threads(threads)
    model = build_model(name).eval()

    def infer(audio: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if path == "long":
                return extract_features_long(model, audio, chunk_seconds=chunk_seconds)
            return model.extract_features(audio[None])[0][0]

    infer(torch.randn(2 * SAMPLE_RATE) * 0.1)  # warm-up: libraries, the scan kernel, thread pool
    audio = torch.randn(round(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(0)) * 0.1
    _cap_memory(max_gb)
    time_s, cpu_s, calls, growth = _best_time(lambda: infer(audio), min_calls)
    return {"status": "ok", "time_s": time_s, "cpu_s": cpu_s, "rtf": time_s / seconds, "calls": calls,
            "peak_mb": growth / 1e6,
            "rss_peak_mb": proc_status_bytes("VmHWM") / 1e6}


def pretraining_loss(model: nn.Module, source: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HuBERT's pretraining loss on a batch without padding: cross-entropy on the masked and unmasked logits plus the
    features penalty (weight 10, as the configs)."""
    no_padding = torch.zeros_like(source, dtype=torch.bool)  # HubertModel.forward needs a mask to train
    output = model(source, target_list=[labels], padding_mask=no_padding, mask=True)
    loss = output["features_pen"] * 10
    for masked in (True, False):
        for logits, targets in zip(model.get_logits(output, masked), model.get_targets(output, masked)):
            loss = loss + F.cross_entropy(logits, targets, reduction="sum")
    return loss


def run_train_step(name: str, seconds: float, threads: int, max_gb: float) -> dict:
    """Time one pretraining step (HuBERT masked prediction loss, backward, Adam) in this process."""
    torch.set_num_threads(threads)
    model = build_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)

    def step(num_samples: int) -> None:
        from mamba_hubert.frames import conv_output_length

        source = torch.randn(1, num_samples, generator=generator) * 0.1
        labels = torch.randint(0, NUM_CLASSES, (1, conv_output_length(num_samples)), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        pretraining_loss(model, source, labels).backward()
        optimizer.step()

    step(2 * SAMPLE_RATE)  # warm-up, and Adam's state exists from here on
    _cap_memory(max_gb)
    time_s, cpu_s, calls, growth = _best_time(lambda: step(round(seconds * SAMPLE_RATE)))
    return {"status": "ok", "time_s": time_s, "cpu_s": cpu_s, "calls": calls, "peak_mb": growth / 1e6,
            "rss_peak_mb": proc_status_bytes("VmHWM") / 1e6}


def measure_case(case: dict, budget_s: float) -> dict:
    """One case in a fresh process with its thread settings, killed after 3x the budget."""
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"]), "OMP_WAIT_POLICY": case["omp_wait_policy"]}
    result = measure_in_child(__file__, case, budget_s * 3, env)
    if result.get("status") == "out of memory":
        result["status"] = f"out of memory (> {case['max_gb']:g} GB cap)"
    return result


def predicted_skip(seconds: float, earlier: list[dict], budget_s: float, max_gb: float) -> str | None:
    """Why to skip a case given the same model and path at shorter durations, or None to run it."""
    if not earlier:
        return None
    last = earlier[-1]
    if last["status"] != "ok":
        return "skipped (a shorter duration already was)"
    done = [r for r in earlier if r["status"] == "ok"]

    def scale(field: str) -> float:
        """How `field` grows to `seconds`: by the exponent of the last two durations (~1 for Mamba, towards 2
        for attention), at least linearly."""
        exponent = 1.0
        if len(done) >= 2 and done[-2][field] > 0 and last[field] > 0:
            prev = done[-2]
            exponent = max(1.0, math.log(last[field] / prev[field]) / math.log(last["seconds"] / prev["seconds"]))
        return (seconds / last["seconds"]) ** exponent

    predicted_s = last["time_s"] * scale("time_s")
    if predicted_s > budget_s:
        return f"skipped (predicted {predicted_s:.0f} s > {budget_s:.0f} s budget)"
    # the call's own memory grows with length; the loaded model does not
    memory_gb = (last["rss_peak_mb"] + last["peak_mb"] * (scale("peak_mb") - 1)) / 1e3
    if memory_gb > max_gb:
        return f"skipped (predicted {memory_gb:.1f} GB > {max_gb:.0f} GB cap)"
    return None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares y = slope x + intercept, and the largest |y - line| / y over the points."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    intercept = mean_y - slope * mean_x
    return slope, intercept, max(abs(y - slope * x - intercept) / y for x, y in zip(xs, ys))


def median_over_rounds(cases: list[dict]) -> list[dict]:
    """One case per (kind, model, path, seconds): the median of each measured field over the rounds that ran it
    (status ok), with `rounds` (how many) and `rtf_range` (min, max); a case that never ran keeps its first
    status."""
    groups: dict[tuple, list[dict]] = {}
    for case in cases:
        groups.setdefault((case["kind"], case["model"], case.get("path"), case["seconds"]), []).append(case)
    merged = []
    for group in groups.values():
        ok = [c for c in group if c["status"] == "ok"]
        if not ok:
            merged.append({**group[0], "rounds": 0})
            continue
        case = {**ok[0], "rounds": len(ok)}
        for field in ("time_s", "cpu_s", "rtf", "peak_mb", "rss_peak_mb"):
            if ok[0].get(field) is not None:
                case[field] = statistics.median(c[field] for c in ok)
        if case.get("rtf") is not None:
            case["rtf_range"] = (min(c["rtf"] for c in ok), max(c["rtf"] for c in ok))
        merged.append(case)
    return merged


def summarize(cases: list[dict], models: dict[str, dict], seconds: list[float]) -> dict:
    """The acceptance numbers: RTF flatness of each Mamba model over `seconds` (max / min RTF), RTF ratios against
    the Transformer (both also by process CPU time per audio second, `cpu_rtf`, which other processes on the cores
    disturb less than wall time), and how each model's peak memory grows with duration: a least-squares line (MB
    per audio second and MB at 0 s) and the largest deviation of a measured point from it, relative to that
    point."""
    inference = {(c["model"], c["path"], c["seconds"]): c for c in cases if c["kind"] == "inference"}
    summary: dict[str, float | None] = {}
    transformer = next((m for m, info in models.items() if not info["mamba"]), None)
    for model, info in models.items():
        path = "long" if info["mamba"] else "plain"
        done = sorted((s, c) for (m, p, s), c in inference.items() if m == model and p == path and c["status"] == "ok")
        if len(done) >= 3:
            slope, intercept, deviation = _line_fit([s for s, _ in done], [c["peak_mb"] for _, c in done])
            summary[f"{model}_memory_mb_per_audio_s"] = slope
            summary[f"{model}_memory_mb_at_0s"] = intercept
            summary[f"{model}_memory_max_deviation_from_line"] = deviation
        if not info["mamba"]:
            continue
        for kind, rtf_of in (("rtf", lambda c: c["rtf"]), ("cpu_rtf", lambda c: c["cpu_s"] / c["seconds"])):
            rtfs = {s: rtf_of(c) for s, c in done if s in seconds}
            if len(rtfs) >= 2:
                summary[f"{model}_{kind}_max_over_min_{min(rtfs):g}_to_{max(rtfs):g}s"] = (
                    max(rtfs.values()) / min(rtfs.values()))
            for duration, rtf in sorted(rtfs.items()):
                other = inference.get((transformer, "plain", duration))
                if other and other["status"] == "ok":
                    summary[f"transformer_{kind}_over_{model}_at_{duration:g}s"] = rtf_of(other) / rtf
    return summary


def _cpu_per_audio_s(case: dict | None) -> str:
    return "-" if case is None or case.get("cpu_s") is None else _fmt(case["cpu_s"] / case["seconds"])


def markdown(cases: list[dict], models: dict[str, dict], meta: dict, summary: dict) -> str:
    seconds = sorted({c["seconds"] for c in cases if c["kind"] == "inference"})
    inference = {(c["model"], c["path"], c["seconds"]): c for c in cases if c["kind"] == "inference"}
    rows = sorted({(c["model"], c["path"]) for c in cases if c["kind"] == "inference"})

    def cell(case: dict | None, field: str) -> str:
        if case is None:
            return "-"
        return _fmt(case[field]) if case["status"] == "ok" else case["status"]

    def rtf_cell(case: dict | None) -> str:
        if case is None or case["status"] != "ok" or case.get("rounds", 1) < 2:
            return cell(case, "rtf")
        low, high = case["rtf_range"]
        return f"{_fmt(case['rtf'])} ({_fmt(low)}-{_fmt(high)})"

    header = " | ".join(f"{s:g} s" for s in seconds)
    rule = "|---|---|" + "---|" * len(seconds)
    lines = [
        "# Encoder inference and training on CPU: Mamba-HuBERT vs Transformer HuBERT Base",
        "",
        f"Command: `{meta['command']}`",
        "",
        (
            f"Machine: {meta['cpu']}, {meta['threads']} torch threads (OMP_WAIT_POLICY={meta['omp_wait_policy']}), "
            f"torch {meta['torch']}, scan backend "
            f"`{meta['scan_backend']}`; fp32 GEMM rate {meta['gemm_gflops_start']:.0f} GFLOP/s at the start, "
            f"{meta['gemm_gflops_end']:.0f} at the end; load average (1 min) {meta['loadavg_start'][0]:.2f} at the "
            f"start, {meta['loadavg_end'][0]:.2f} at the end (other processes share these cores). Batch 1, float32, "
            f"random weights and audio. Path `long`: `extract_features_long` (chunks of {meta['chunk_seconds']:g} s); "
            "`plain`: `model.extract_features`."
        ),
        "",
        "## Real-time factor (wall seconds per second of audio; lower is faster)",
        "",
        (f"Median over {meta['rounds']} rounds (each a fresh process), range in brackets." if meta.get("rounds", 1) > 1
         else "One round: each case measured in one fresh process."),
        "",
        f"| model | path | {header} |",
        rule,
    ]
    lines += [f"| {m} | {p} | " + " | ".join(rtf_cell(inference.get((m, p, s))) for s in seconds) + " |"
              for m, p in rows]
    lines += ["", "## Process CPU time per second of audio (all threads; at most threads x RTF, less when waiting)", "",
              f"| model | path | {header} |", rule]
    lines += [f"| {m} | {p} | " + " | ".join(_cpu_per_audio_s(inference.get((m, p, s))) for s in seconds) + " |"
              for m, p in rows]
    lines += ["", "## Peak memory growth during the call (MB, above the loaded model and audio)", "",
              f"| model | path | {header} |", rule]
    lines += [f"| {m} | {p} | " + " | ".join(cell(inference.get((m, p, s)), "peak_mb") for s in seconds) + " |"
              for m, p in rows]
    lines += ["", "## Models, training step and compute floor", "",
              ("| model | params (M) | GFLOP per audio second (10 s / longest) | floor RTF at the GEMM rate | "
               "measured RTF | floor / measured | train step s | train step GFLOP | floor / measured (train) |"),
              "|---|---|---|---|---|---|---|---|---|"]
    gemm = max(meta["gemm_gflops_start"], meta["gemm_gflops_end"])  # the less disturbed measurement
    for model, info in models.items():
        path = "long" if info["mamba"] else "plain"
        ok = [s for (m, p, s), c in inference.items() if m == model and p == path and c["status"] == "ok"]
        longest = f"{max(ok):g}" if ok else max(info["flops"], key=float)
        measured = inference.get((model, path, float(longest)))
        floor_rtf = info["flops"][longest]["total"] / 1e9 / gemm / float(longest)
        train = next((c for c in cases if c["kind"] == "train" and c["model"] == model), None)
        train_flops = 3 * info["train_flops"]["total"] / 1e9
        train_ok = train is not None and train["status"] == "ok"
        lines.append(" | ".join([
            f"| {model}", f"{info['params'] / 1e6:.1f}",
            f"{info['flops']['10']['total'] / 1e9 / 10:.1f} / {info['flops'][longest]['total'] / 1e9 / float(longest):.1f}"
            if "10" in info["flops"] else "-",
            f"{floor_rtf:.3f}",
            cell(measured, "rtf"),
            _fmt(floor_rtf / measured["rtf"]) if measured and measured["status"] == "ok" else "-",
            cell(train, "time_s") if train else "-",
            f"{train_flops:.0f}",
            _fmt(train_flops / gemm / train["time_s"]) if train_ok else "-",
        ]) + " |")
    lines += ["", "FLOPs of the longest input by part (GFLOP):", ""]
    for model, info in models.items():
        longest = max(info["flops"], key=float)
        parts = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in info["flops"][longest].items() if k != "total")
        lines.append(f"- {model} at {longest} s: {parts}")
    lines += ["", "Summary (ratios):", ""]
    lines += [f"- {name}: {_fmt(value)}" for name, value in summary.items()]
    return "\n".join(lines) + "\n"


def plot(cases: list[dict], path: Path) -> None:
    """Wall-time RTF and process CPU time per audio second against duration (log x), and peak memory growth
    (linear x: linear growth is a straight line), one line per model and path; durations that did not run are
    named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    inference = [c for c in cases if c["kind"] == "inference"]
    for model, run_path in sorted({(c["model"], c["path"]) for c in inference}):
        mine = [c for c in inference if c["model"] == model and c["path"] == run_path]
        done = sorted((c for c in mine if c["status"] == "ok"), key=lambda c: c["seconds"])
        if not done:
            continue
        missing = [f"{c['seconds']:g} s {c['status'].split(' (')[0]}" for c in mine if c["status"] != "ok"]
        label = f"{model} ({run_path})" + (f"; {', '.join(missing)}" if missing else "")
        xs = [c["seconds"] for c in done]
        axes[0].plot(xs, [c["rtf"] for c in done], marker="o", label=label)
        axes[1].plot(xs, [c["cpu_s"] / c["seconds"] for c in done], marker="o", label=label)
        axes[2].plot(xs, [c["peak_mb"] / 1e3 for c in done], marker="o", label=label)
    durations = sorted({c["seconds"] for c in inference})
    for ax, ylabel in zip(axes[:2], ["real-time factor (wall s per audio s)", "process CPU s per audio s"]):
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(durations, [f"{d:g}" for d in durations])
        ax.set_xlabel("audio duration (s, log scale)")
        ax.set_ylabel(ylabel)
    axes[2].set_xlabel("audio duration (s)")
    axes[2].set_ylabel("peak memory growth during the call (GB)")
    axes[2].set_xlim(left=0)
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def describe_models(names: list[str], seconds: list[float], train_seconds: float) -> dict[str, dict]:
    """Parameter count and analytic FLOPs per model (built once here, in the parent)."""
    models = {}
    for name in names:
        model = build_model(name)
        models[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "mamba": is_mamba(model),
            "flops": {f"{s:g}": model_flops(model, round(s * SAMPLE_RATE)) for s in seconds},
            "train_flops": model_flops(model, round(train_seconds * SAMPLE_RATE)),
        }
        del model
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_encoder"))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="pretraining config names")
    parser.add_argument("--seconds", type=float, nargs="+", help=f"audio durations (default {DEFAULT_SECONDS})")
    parser.add_argument("--mamba-plain-seconds", type=float, nargs="*",
                        help="durations at which Mamba models also run plain extract_features (default 10 60)")
    parser.add_argument("--long-form-seconds", type=float, nargs="*",
                        help="extra durations for Mamba models' long-form path only (default 600; none with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", choices=["PASSIVE", "ACTIVE"], default="PASSIVE",
                        help="OpenMP's idle threads sleep (PASSIVE) or spin (ACTIVE, libgomp's default): spinning made "
                        "2-thread runs up to 6x slower while other processes used the cores")
    parser.add_argument("--min-calls", type=int, default=1, help="time every inference case at least this many "
                        "times and keep the fastest (short cases get up to 3 anyway)")
    parser.add_argument("--rounds", type=int, default=1, help="run the inference sweep this many times, each case "
                        "in a fresh process every round, and report medians over the rounds")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="extract_features_long chunk")
    parser.add_argument("--train-seconds", type=float, help="utterance length of the training step (default 10)")
    parser.add_argument("--budget-s", type=float, default=900.0, help="time budget of one case")
    parser.add_argument("--max-gb", type=float, default=16.0, help="skip cases predicted to need more memory")
    parser.add_argument("--quick", action="store_true",
                        help=f"reduced run: {QUICK_SECONDS} s, no plain Mamba runs, a 4 s training step")
    parser.add_argument("--png", action="store_true", help="also draw encoder_rtf.png")
    parser.add_argument("--redraw", action="store_true", help="measure nothing: rewrite results.md (and with --png "
                        "the plot) from --out's results.json, e.g. after a change to the report")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        if case["kind"] == "gemm":
            result = {"gflops": gemm_gflops(case["threads"])}
        elif case["kind"] == "train":
            result = run_train_step(case["model"], case["seconds"], case["threads"], case["max_gb"])
        else:
            result = run_inference(case["model"], case["seconds"], case["path"], case["threads"],
                                   case["chunk_seconds"], case["max_gb"], case["min_calls"])
        print(json.dumps(result))
        return 0

    seconds = sorted(args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS))
    plain_seconds = args.mamba_plain_seconds if args.mamba_plain_seconds is not None else (
        [] if args.quick else [10, 60])
    long_form_seconds = args.long_form_seconds if args.long_form_seconds is not None else (
        [] if args.quick else [600])
    train_seconds = args.train_seconds or (4.0 if args.quick else 10.0)
    if args.redraw:
        saved = json.loads((args.out / "results.json").read_text())
        write_reports(args.out, saved["meta"], saved["models"], saved["cases"], seconds, args.png)
        return 0
    started = time.time()
    meta = {
        **run_header(__file__, argv),
        "threads": args.threads,
        "chunk_seconds": args.chunk_seconds, "train_seconds": train_seconds, "budget_s": args.budget_s,
        "max_gb": args.max_gb, "omp_wait_policy": args.omp_wait_policy, "rounds": args.rounds,
        "loadavg_start": os.getloadavg(),
    }
    gemm_case = {"kind": "gemm", "threads": args.threads, "omp_wait_policy": args.omp_wait_policy}
    meta["gemm_gflops_start"] = measure_case(gemm_case, args.budget_s)["gflops"]
    from mamba_hubert.ops import resolve_scan_impl

    meta["scan_backend"] = resolve_scan_impl("auto", torch.device("cpu"))
    models = describe_models(args.models, sorted({*seconds, *long_form_seconds}), train_seconds)

    cases: list[dict] = []

    def run(case: dict, earlier: list[dict] | None) -> dict:
        reason = predicted_skip(case["seconds"], earlier, args.budget_s, args.max_gb) if earlier is not None else None
        load = os.getloadavg()[0]
        outcome = {"status": reason} if reason else measure_case(case, args.budget_s)
        result = {**case, "time_s": None, "cpu_s": None, "rtf": None, "peak_mb": None, "rss_peak_mb": None, "loadavg": load,
                  **outcome}
        cases.append(result)
        print(f"{case['kind']:9s} {case['model']:24s} {case.get('path', ''):5s} {case['seconds']:6g} s  "
              f"time {_fmt(result['time_s'])} s  rtf {_fmt(result['rtf'])}  +{_fmt(result['peak_mb'])} MB  "
              f"load {load:.2f}  {result['status']}", flush=True)
        return result

    common = {"threads": args.threads, "chunk_seconds": args.chunk_seconds, "max_gb": args.max_gb,
              "omp_wait_policy": args.omp_wait_policy, "min_calls": args.min_calls}
    # Duration by duration, every model in turn: models compared at one duration run minutes apart, under
    # much the same load from other processes.
    plan: dict[tuple[str, str], list[float]] = {}
    for name in args.models:
        if models[name]["mamba"]:
            plan[name, "long"] = seconds + long_form_seconds
            plan[name, "plain"] = plain_seconds
        else:
            plan[name, "plain"] = seconds
    for round_index in range(args.rounds):
        earlier: dict[tuple[str, str], list[dict]] = {key: [] for key in plan}
        for duration in sorted({d for durations in plan.values() for d in durations}):
            for (name, path), durations in plan.items():
                if duration in durations:
                    case = {"kind": "inference", "model": name, "path": path, "seconds": float(duration),
                            "round": round_index, **common}
                    earlier[name, path].append(run(case, earlier[name, path]))
    for name in args.models:
        run({"kind": "train", "model": name, "seconds": train_seconds, **common}, None)

    meta.update(loadavg_end=os.getloadavg(), gemm_gflops_end=measure_case(gemm_case, args.budget_s)["gflops"],
                wall_s=round(time.time() - started, 1))
    write_reports(args.out, meta, models, cases, seconds, args.png)
    return 0


def write_reports(out: Path, meta: dict, models: dict, cases: list[dict], seconds: list[float], png: bool) -> None:
    """results.json, results.md and (with `png`) encoder_rtf.png in `out`; `seconds`: the durations that the
    flatness summary spans."""
    medians = median_over_rounds(cases)
    summary = summarize(medians, models, seconds)
    write_results(out, {"meta": meta, "summary": summary, "models": models, "cases": cases},
                  markdown(medians, models, meta, summary), (lambda path: plot(medians, path)) if png else None,
                  "encoder_rtf.png")


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
