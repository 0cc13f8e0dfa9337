"""Streaming inference for causal Mamba-HuBERT models: audio in chunks, frame features out, state carried.

A model streams exactly when nothing in it looks ahead or across the whole utterance: a causal layer type (the
registry's `causal`: `mamba`, `mamba2`), `conv_pos=0` (fairseq's positional conv is non-causal) and
`extractor_mode=layer_norm` or `fbank` (the default extractor's first group norm averages over the whole utterance);
the model's `initial_state` refuses any other by name. This module is a driver over the model's and the encoder's
`initial_state` / `forward_chunk`: between chunks the model carries the samples of the next frame's front-end window
(less than one window: 400 samples for HuBERT's CNN, 1,360 for the fbank front end at 50 Hz) and each layer its own
state (a Mamba layer its block's conv tail and SSM state).
"""

from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import nn

from mamba_hubert.frames import receptive_field
from mamba_hubert.modules.layer_types import NotStreamableError

__all__ = ["NotStreamableError", "StreamingCtc", "StreamingEncoder", "stream"]


def named_tensors(prefix: str, state: Any) -> dict[str, torch.Tensor]:
    """The tensors of a layer's state by name: a tensor itself, a dataclass's tensor fields as `prefix.field`."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if is_dataclass(state):
        return {f"{prefix}.{f.name}": getattr(state, f.name) for f in fields(state)
                if isinstance(getattr(state, f.name), torch.Tensor)}
    return {}


class StreamingEncoder:
    """Runs a causal MambaHubertModel on audio that arrives in chunks.

    `push(chunk)` returns the feature frames completed by that chunk, in order; concatenated over a stream they
    equal `model.extract_features(whole_audio, output_layer=output_layer)[0][0]` to float rounding, whatever the
    chunk sizes. Carried memory is constant in stream length (`carried_tensors`).
    """

    def __init__(self, model: nn.Module, output_layer: int | None = None) -> None:
        model.check_streamable()
        layers = len(model.encoder.layers)
        if output_layer is not None and not 1 <= output_layer <= layers:
            raise ValueError(f"output_layer must be in 1..{layers}, got {output_layer}")
        self.model = model
        self.output_layer = output_layer
        self.window = receptive_field(model.conv_layers)[0]
        self.dim = model.encoder.embedding_dim
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next `push` starts a new one."""
        self._state = self.model.initial_state(1)

    @property
    def frames_emitted(self) -> int:
        return self._state.frames

    def carried_tensors(self) -> dict[str, torch.Tensor]:
        """Everything carried between chunks, by name: its size is what a stream costs in memory."""
        tensors = {"samples": self._state.samples}
        for index, state in enumerate(self._state.encoder[: self.output_layer]):
            tensors.update(named_tensors(f"layer{index}", state))
        return tensors

    def push(self, audio_chunk: torch.Tensor) -> torch.Tensor:
        """audio_chunk: (num_samples,) float at the model's sample rate -> the new frames (new_frames, dim)."""
        return self.push_hidden_states(audio_chunk)[-1]

    @torch.no_grad()
    def push_hidden_states(self, audio_chunk: torch.Tensor) -> list[torch.Tensor]:
        """`push`, returning the new frames of every hidden state: [encoder input, output of layer 1, ..., the
        output], each (new_frames, dim), the states `MambaHubertAsr`'s weighted sum reads."""
        if audio_chunk.dim() != 1:
            raise ValueError(f"push takes one channel of samples (num_samples,), got shape {tuple(audio_chunk.shape)}")
        hidden, self._state = self.model.forward_chunk(audio_chunk[None], self._state, self.output_layer)
        return [h[0] for h in hidden]

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the stream: returns the frames still pending and resets for the next stream. There are none, since
        the model has no look-ahead; trailing samples shorter than a window are dropped, as offline."""
        self.reset()
        return self._state.samples.new_zeros(0, self.dim)


class StreamingCtc:
    """A fine-tuned CTC model on audio that arrives in chunks: fairseq's `hubert_ctc` on a causal mamba_hubert, or a
    `mamba_hubert_asr` whose upstream layer or weighted sum feeds a causal head (`head_layer_type=mamba` or
    `mamba2`, `head_conv_pos=0`). `push(chunk)` returns the CTC logits (new_frames, vocabulary) of the frames that
    chunk completes: concatenated, the model's offline logits of the whole audio, to float rounding."""

    def __init__(self, model: nn.Module) -> None:
        encoder = model.w2v_encoder
        self.encoder = encoder
        self.upstream = StreamingEncoder(encoder.w2v_model, getattr(encoder, "upstream_layer", None))
        self.weighted = getattr(encoder, "layer_weights", None) is not None  # UpstreamHeadEncoder's weighted sum
        self.head = getattr(encoder, "head", None)
        if self.head is not None and self.head.training:
            raise NotStreamableError("call model.eval() first: dropout makes chunked and offline outputs differ")
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next `push` starts a new one."""
        self.upstream.reset()
        if self.head is not None:
            self._head_states = self.head.initial_state(1)

    @torch.no_grad()
    def push(self, audio_chunk: torch.Tensor) -> torch.Tensor:
        """audio_chunk: (num_samples,) -> the logits of the new frames (new_frames, vocabulary)."""
        if self.weighted:
            x = self.encoder.weighted_sum(self.upstream.push_hidden_states(audio_chunk))
        else:
            x = self.upstream.push(audio_chunk)
        if not len(x):  # the chunk completed no frame
            return self._no_frames()
        if self.head is not None:
            hidden, self._head_states = self.head.forward_chunk(self.encoder.head_proj(x)[None], self._head_states)
            x = hidden[-1][0]
        return self.encoder.proj(x)

    def flush(self) -> torch.Tensor:
        """End the stream (no frames are pending: nothing looks ahead) and reset for the next one."""
        self.reset()
        return self._no_frames()

    def _no_frames(self) -> torch.Tensor:
        """No frames: (0, vocabulary)."""
        return self.encoder.proj.weight.new_zeros(0, self.encoder.proj.out_features)


def stream(
    model: nn.Module, audio: torch.Tensor, chunk_samples: int, output_layer: int | None = None
) -> torch.Tensor:
    """Convenience: run `audio` (num_samples,) through a StreamingEncoder in chunks of `chunk_samples`."""
    encoder = StreamingEncoder(model, output_layer)
    pieces: list[torch.Tensor] = [encoder.push(audio[s : s + chunk_samples]) for s in range(0, len(audio), chunk_samples)]
    pieces.append(encoder.flush())
    return torch.cat(pieces)
