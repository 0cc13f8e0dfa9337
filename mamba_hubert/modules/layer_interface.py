"""The interface every encoder layer type has beside fairseq's `forward(x, self_attn_padding_mask)`, for inference
past one batch forward (eval mode, one unpadded sequence per row, (batch, time, channels) in and out):

- `initial_state(batch)`: the state before a sequence's first frame;
- `forward_chunk(x, state) -> (y, state)`: the next frames of a sequence, continuing from `state` (streaming);
- `forward_long(x, chunk) -> y`: a whole sequence with one chunk's working set (long-form).

A causal layer implements the first two and inherits `forward_long` (chunks with state). A layer that looks ahead
keeps the refusing `initial_state` / `forward_chunk` and says how it runs long-form: a bidirectional one its backward
direction as a second pass over the chunks, an attention layer the whole sequence at once.
"""

from collections.abc import Callable
from typing import Any

import torch


class NotStreamableError(ValueError):
    """The model looks ahead or across the utterance somewhere, so chunked output would differ from offline."""


def per_frames(fn: Callable[..., torch.Tensor], chunk: int, *tensors: torch.Tensor) -> torch.Tensor:
    """fn applied to `chunk`-frame slices of (batch, T, ...) tensors, written into one output over time: for
    per-frame fn, fn(*tensors) with a working set of one chunk."""
    length = tensors[0].shape[1]
    out = None
    for start in range(0, length, chunk):
        piece = fn(*(t[:, start : start + chunk] for t in tensors))
        if out is None:
            out = piece.new_empty(piece.shape[0], length, *piece.shape[2:])
        out[:, start : start + chunk] = piece
    return out


def causal_over_chunks(block: torch.nn.Module, x: torch.Tensor, chunk: int, reverse: bool = False) -> torch.Tensor:
    """`block(x)` of a causal block with `allocate_state` and `forward(x, state=...)` (Mamba, Mamba2) for x (b, T, d),
    or with `reverse` R(block(R(x))) (R = time reversal: the backward direction of a bidirectional mixer), chunk by
    chunk with the state carried."""
    out = torch.empty_like(x)
    state = block.allocate_state(x.shape[0])
    starts = range(0, x.shape[1], chunk)
    for start in reversed(starts) if reverse else starts:
        piece = x[:, start : start + chunk]
        y = block(piece.flip(1) if reverse else piece, state=state)
        out[:, start : start + chunk] = y.flip(1) if reverse else y
    return out


class ChunkedLayer:
    """Mixin for an encoder layer (an nn.Module): the inference interface of the module docstring."""

    def initial_state(self, batch: int) -> Any:
        raise NotStreamableError(f"{type(self).__name__} looks ahead: it has no state to continue a stream from")

    def forward_chunk(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotStreamableError(f"{type(self).__name__} looks ahead: it cannot run chunk by chunk")

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """The layer on a whole sequence (b, T, d): here chunks with the state carried, each written over its input
        (exact for a causal layer, and no whole-sequence temporaries); may overwrite x."""
        state = self.initial_state(x.shape[0])
        for start in range(0, x.shape[1], chunk):
            piece = x[:, start : start + chunk]
            y, state = self.forward_chunk(piece, state)
            piece.copy_(y)
        return x


class WholeSequenceLayer(ChunkedLayer):
    """Mixin for a layer whose every frame reads the whole sequence (attention): it cannot stream, and long-form runs
    it on the whole sequence at once (exact, but O(T^2) in time and memory)."""

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        return self(x.transpose(0, 1), self_attn_padding_mask=None)[0].transpose(0, 1)
