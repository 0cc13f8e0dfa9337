"""Layer-wise mutual information of a model: I(X;T_i) with MINE and, where frame labels exist, I(T_i;Y)."""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mamba_hubert.analysis.capture import capture_layer_frames
from mamba_hubert.analysis.estimators import MIEstimate, discrete_mi, mine_mi


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
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Per encoder layer: {"layer", "mi_xt" (MINE, nats), "mi_ty" (linear-probe bound, nats, if labels)}.

    Frames of all utterances are pooled, and MINE's marginal pairs are drawn within an utterance (as the
    paper does) by passing utterance ids as groups; `max_frames` keeps every k-th frame to bound the cost.
    """
    frames = capture_layer_frames(model, waves, batch_size=batch_size)
    groups = np.concatenate([np.full(len(x), u) for u, x in enumerate(frames.inputs)])
    x = np.concatenate(frames.inputs)
    y = None
    if labels is not None:
        for u, (inputs, label) in enumerate(zip(frames.inputs, labels)):
            if len(label) != len(inputs):
                raise ValueError(f"utterance {u}: {len(label)} frame labels for {len(inputs)} frames")
        y = np.concatenate(labels)
    keep = slice(None)
    if max_frames is not None and len(x) > max_frames:
        keep = slice(None, None, -(-len(x) // max_frames))
    mine_kwargs = {} if mine_iterations is None else {"iterations": mine_iterations}
    results = []
    for index, layer_frames in enumerate(frames.layers):
        if progress is not None:
            progress(f"layer {index + 1}/{len(frames.layers)}")
        t = np.concatenate(layer_frames)
        row = {"layer": index + 1,
               "mi_xt": _as_dict(mine_mi(x[keep], t[keep], seeds=seeds, groups=groups[keep], **mine_kwargs))}
        if y is not None:
            row["mi_ty"] = _as_dict(discrete_mi(t[keep], y[keep], method="probe", seeds=seeds, groups=groups[keep]))
        results.append(row)
    return results
