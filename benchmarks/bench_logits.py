"""HuBERT's pretraining logits on CPU: fairseq's HubertModel.compute_nce vs ours (MambaHubertModel.compute_nce).

    python benchmarks/bench_logits.py --out benchmarks/results/logits [--threads 2] [--cases NAME ...]

Writes results.json and results.md (a table with ratios) into --out.

What is measured, per (case, implementation): the logits of S frames against C classes (cosine similarity to the
positive and to every class embedding, the positive's own class -inf, over the temperature), called as
HubertModel.forward calls it (positives gathered from the label embeddings, negatives their expanded view), then
cross-entropy towards the positive and backward, as the `hubert` criterion does. fairseq's version builds
[C + 1, S, D] tensors; ours is one [S, D] x [D, C] matmul (and torch.unique over the C + S rows for the
equality test). Time: median wall time of up to 5 calls after a
warm-up; peak memory: what the first timed call touched (fresh process per case; see machine.py).

Cases: the tiny demo config (a 200k-sample batch: 625 frames; 100 k-means clusters; final_dim 64) and
HuBERT Base per GPU (1.4 M samples: 4,375 frames; final_dim 256) with iteration-1 (100) and iteration-2 (500)
clusters. HubertModel.forward makes two calls per label set (masked and unmasked frames) whose frames add up to
S; one call on S frames costs the same.
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fairseq.models.hubert.hubert import HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from machine import measure_in_child, run_header, time_and_peak_memory, write_results

IMPLS = ("fairseq", "ours")
CASES = {  # name: (frames S, k-means clusters, final_dim D)
    "tiny demo, 100 clusters": (625, 100, 64),
    "Base, iteration 1 (100 clusters)": (4375, 100, 256),
    "Base, iteration 2 (500 clusters)": (4375, 500, 256),
}


def build_model(clusters: int, final_dim: int):
    from mamba_hubert.models import MambaHubertConfig, MambaHubertModel
    from mamba_hubert.models.param_count import kmeans_dictionary

    cfg = MambaHubertConfig(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=32, final_dim=final_dim,
                            conv_feature_layers="[(32,400,320)]", label_rate=50)
    return MambaHubertModel(cfg, HubertPretrainingConfig(data="unused", label_rate=50), [kmeans_dictionary(clusters)])


def run_case(impl: str, frames: int, clusters: int, final_dim: int, threads: int) -> dict:
    """Times one case in this process and measures its peak memory; meant to run in a fresh process."""
    torch.set_num_threads(threads)
    model = build_model(clusters, final_dim)
    compute_nce = HubertModel.compute_nce if impl == "fairseq" else type(model).compute_nce
    label_embs = model.label_embs_concat
    generator = torch.Generator().manual_seed(0)

    def call(x: torch.Tensor, targets: torch.Tensor) -> None:
        negs = label_embs.unsqueeze(1).expand(-1, x.size(0), -1)
        logits = compute_nce(model, x, torch.index_select(label_embs, 0, targets), negs)
        F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)).backward()
        x.grad = label_embs.grad = None

    def prepared(num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(num_frames, final_dim, generator=generator).requires_grad_(True)
        return x, torch.randint(0, len(label_embs), (num_frames,), generator=generator)

    call(*prepared(64))  # warm-up: libraries, thread pool
    x, targets = prepared(frames)
    return time_and_peak_memory(lambda: call(x, targets))


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# HuBERT logits: fairseq's compute_nce vs ours (forward + backward)", "",
        f"`{meta['command']}` on {meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}.", "",
        ("| case | frames | classes | dim | fairseq (ms) | ours (ms) | time fairseq / ours | fairseq (MB) | ours (MB) "
         "| memory fairseq / ours |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["case"] for r in results):
        frames, clusters, final_dim = CASES[name]
        by_impl = {r["impl"]: r for r in results if r["case"] == name}
        if any(by_impl[impl]["status"] != "ok" for impl in IMPLS):
            lines.append(f"| {name} | {frames} | {clusters} | {final_dim} | "
                         + " | ".join(by_impl[impl]["status"] for impl in IMPLS) + " | - | - | - | - |")
            continue
        fairseq, ours = by_impl["fairseq"], by_impl["ours"]
        lines.append(
            f"| {name} | {frames} | {clusters} | {final_dim} | {fairseq['time_s'] * 1e3:.1f} | "
            f"{ours['time_s'] * 1e3:.1f} | {fairseq['time_s'] / ours['time_s']:.1f}x | {fairseq['peak_mb']:.0f} | "
            f"{ours['peak_mb']:.0f} | {fairseq['peak_mb'] / max(ours['peak_mb'], 1.0):.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_logits"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--budget-s", type=float, default=120.0, help="wall-clock limit of one case's process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(run_case(case["impl"], *CASES[case["case"]], case["threads"])))
        return 0

    started = time.time()
    results = []
    for name in args.cases:
        for impl in IMPLS:
            outcome = measure_in_child(__file__, {"case": name, "impl": impl, "threads": args.threads}, args.budget_s)
            results.append({"case": name, "impl": impl, "time_s": None, "peak_mb": None, **outcome})
            print(f"{name:34s} {impl:8s} {outcome.get('time_s', 0) * 1e3:8.1f} ms "
                  f"{outcome.get('peak_mb', 0):7.0f} MB  {outcome['status']}", flush=True)
    meta = {
        **run_header(__file__, argv),
        "threads": args.threads,
        "wall_s": round(time.time() - started, 1),
    }
    write_results(args.out, {"meta": meta, "cases": results}, markdown(results, meta), None, "")
    return 0


if __name__ == "__main__":
    if importlib.util.find_spec("mamba_hubert") is None:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
