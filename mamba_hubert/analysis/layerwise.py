"""Layer-wise mutual information of a model: the dependence between the encoder input X and each layer's output T_i
by two estimator families (MINE and SMILE, same critic), I(T_i;Y) where frame labels exist, and a verdict on the
shape of each I(X;T) curve."""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mamba_hubert.analysis.capture import capture_layer_frames
from mamba_hubert.analysis.estimators import Marginals, MIEstimate, discrete_mi, xt_mutual_information
from mamba_hubert.analysis.verdict import curve_verdict

# Frame labels an utterance may have beyond its model's frames (a model framing its steps differently, e.g. log-mel
# frames stacked in pairs, can end one frame before HuBERT's conv arithmetic does).
LABEL_FRAMES_TOLERANCE = 2
# row key of each I(X;T) estimator family
XT_KEYS = {"mine": "mi_xt", "smile": "mi_xt_smile"}
# What the I(X;T) value estimates under each choice of marginal (product) pairs, for reports.
XT_QUANTITIES = {
    "within_group": ("within-utterance dependence KL(p(x,t) || sum_u p(u) p(x|u) p(t|u)): marginal pairs drawn within "
                     "an utterance, as the paper does; a lower bound on I(X;T|utterance), not I(X;T) over the corpus"),
    "pooled": "I(X;T) over the pooled frames: marginal pairs drawn across utterances",
}


def _as_dict(estimate: MIEstimate) -> dict:
    return {"mean": estimate.mean, "std": estimate.std, "values": list(estimate.values)}


def layerwise_mi(
    model: torch.nn.Module,
    waves: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    mine_iterations: int | None = None,
    max_frames: int | None = None,
    marginals: Marginals = "within_group",
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Per layer on the model's depth axis (upstream then head layers for a model with a downstream encoder):
    {"layer" (1-based), "stage", "mi_xt" (MINE, nats), "mi_xt_smile" (SMILE, nats), "mi_ty" (linear-probe bound,
    nats, if labels)}, each estimate with its mean, spread and per-seed values.

    Frames of all utterances are pooled; held-out frames are whole utterances, and `marginals` chooses where the
    marginal pairs come from (see `XT_QUANTITIES`). `max_frames` keeps every k-th frame to bound the cost.
    """
    frames = capture_layer_frames(model, waves, batch_size=batch_size)
    groups = np.concatenate([np.full(len(x), u) for u, x in enumerate(frames.inputs)])
    x = np.concatenate(frames.inputs)
    y = None
    if labels is not None:
        for u, (inputs, label) in enumerate(zip(frames.inputs, labels)):
            if not len(inputs) <= len(label) <= len(inputs) + LABEL_FRAMES_TOLERANCE:
                raise ValueError(f"utterance {u}: {len(label)} frame labels for {len(inputs)} frames")
        # frame labels at the same rate and start, longer by the tolerance at most: trimmed at the end, as fairseq's
        # HuBERT trims its targets
        y = np.concatenate([label[: len(inputs)] for inputs, label in zip(frames.inputs, labels)])
    keep = slice(None)
    if max_frames is not None and len(x) > max_frames:
        keep = slice(None, None, -(-len(x) // max_frames))
    xt_kwargs = {} if mine_iterations is None else {"iterations": mine_iterations}
    results = []
    for index, (stage, layer_frames) in enumerate(zip(frames.stages, frames.layers)):
        if progress is not None:
            progress(f"layer {index + 1}/{len(frames.layers)} ({stage})")
        t = np.concatenate(layer_frames)
        estimates = xt_mutual_information(x[keep], t[keep], estimators=tuple(XT_KEYS), seeds=seeds,
                                          groups=groups[keep], marginals=marginals, **xt_kwargs)
        row = {"layer": index + 1, "stage": stage, **{XT_KEYS[name]: _as_dict(e) for name, e in estimates.items()}}
        if y is not None:
            row["mi_ty"] = _as_dict(discrete_mi(t[keep], y[keep], method="probe", seeds=seeds, groups=groups[keep]))
        results.append(row)
    return results


def xt_verdicts(rows: list[dict]) -> dict[str, dict]:
    """{estimator: the curve verdict of its I(X;T) values over the rows (per-seed, paired), as a dict with a
    one-line "description"}; empty when there are fewer than 2 layers or 2 seeds."""
    verdicts = {}
    for name, key in XT_KEYS.items():
        per_seed = [row[key]["values"] for row in rows if key in row]
        if len(per_seed) < 2 or len(per_seed[0]) < 2:
            continue
        verdict = curve_verdict(per_seed)
        verdicts[name] = {**dataclasses.asdict(verdict), "description": verdict.describe()}
    return verdicts
