"""Streaming inference for causal Mamba-HuBERT models: audio in chunks, frame features out, state carried.

A model streams exactly when nothing in it looks ahead or across the whole utterance: `layer_type=mamba` or
`mamba2`, `conv_pos=0` (fairseq's positional conv is non-causal) and `extractor_mode=layer_norm` or `fbank` (the default
extractor's first group norm averages over the whole utterance). Everything else in HuBERT's `extract_features` is
per frame. `StreamingEncoder` carries, between chunks, the samples of the next frame's front-end window (less than
one window: 400 samples for HuBERT's CNN, 1,360 for the fbank front end at 50 Hz), and for every Mamba layer its
conv tail (d_conv - 1 frames) and SSM state (the block's `MambaState`); each chunk runs through the front end and
every layer at once, each block continuing from its carried state (`Mamba.forward(x, state=...)`, `Mamba2`'s alike).

The eval-mode parts of a Mamba encoder layer here are shared with `mamba_hubert.inference.long_form`.
"""

import torch
from torch import nn

from mamba_hubert.models.frames import conv_output_length, receptive_field
from mamba_hubert.modules.encoder import ZeroPositionalConv
from mamba_hubert.modules.layers import MambaEncoderLayer
from mamba_hubert.modules.mamba import Mamba, MambaState
from mamba_hubert.modules.mamba2 import Mamba2

# the mixers that run a sequence front to back only, so continue it from a carried state
CAUSAL_MIXERS = (Mamba, Mamba2)


def mixer_input(layer: MambaEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """What `layer`'s mixer reads: LN(x) for a pre-LN layer, x itself for a post-LN one (eval mode)."""
    return layer.mixer_layer_norm(x) if layer.layer_norm_first else x


def after_mixer(layer: MambaEncoderLayer, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """The rest of `MambaEncoderLayer.forward` in eval mode, given the mixer's output: residuals, layer norms and
    the optional FFN, all per frame. (b, T, d) in and out."""
    if layer.layer_norm_first:
        x = x + mixed
        return x if layer.ffn is None else x + layer.ffn(layer.final_layer_norm(x))
    x = layer.mixer_layer_norm(x + mixed)
    return x if layer.ffn is None else layer.final_layer_norm(x + layer.ffn(x))


def causal_layer_chunk(layer: MambaEncoderLayer, x: torch.Tensor, state: MambaState) -> torch.Tensor:
    """A causal `MambaEncoderLayer` (eval mode) on the next chunk (b, t, d) of a sequence, its mixer's state carried
    (advanced in place): the chunks' outputs, concatenated, are the layer's output on the whole sequence."""
    return after_mixer(layer, x, layer.mixer(mixer_input(layer, x), state=state))


def is_causal_layer(layer: nn.Module) -> bool:
    """Whether `layer` is a `MambaEncoderLayer` whose mixer is causal (`layer_type=mamba` or `mamba2`; InnBiMamba
    subclasses Mamba but reads both ways)."""
    return isinstance(layer, MambaEncoderLayer) and type(layer.mixer) in CAUSAL_MIXERS


def has_group_norm(module: nn.Module) -> bool:
    """Whether a feature extractor normalises over time (fairseq's `extractor_mode=default`)."""
    return any(isinstance(m, nn.GroupNorm) for m in module.modules())


class NotStreamableError(ValueError):
    """The model looks ahead or across the utterance somewhere, so chunked output would differ from offline."""


def check_streamable(model: nn.Module) -> None:
    """Raise NotStreamableError saying why `model` (a MambaHubertModel) cannot stream exactly, if it cannot."""
    if model.training:
        raise NotStreamableError("call model.eval() first: dropout and layer drop make chunked and offline outputs differ")
    if has_group_norm(model.feature_extractor):
        raise NotStreamableError(
            "extractor_mode=default normalises over the whole utterance; use extractor_mode=layer_norm or fbank")
    check_causal_encoder(model.encoder)


def check_causal_encoder(encoder: nn.Module, name: str = "encoder", prefix: str = "") -> None:
    """Raise NotStreamableError unless `encoder` (a MambaEncoder; `prefix` before its field names in the message)
    has no positional conv and only causal layers."""
    if not isinstance(encoder.pos_conv, ZeroPositionalConv):
        raise NotStreamableError(f"the {name}'s positional conv looks ahead; streaming needs {prefix}conv_pos=0")
    for index, layer in enumerate(encoder.layers):
        if not is_causal_layer(layer):
            raise NotStreamableError(f"{name} layer {index} is not causal ({type(layer).__name__}); use "
                                     f"{prefix}layer_type=mamba or mamba2")


def encoder_chunk(encoder: nn.Module, layers: list[MambaEncoderLayer], x: torch.Tensor, states: list[MambaState],
                  final_layer_norm: bool) -> list[torch.Tensor]:
    """The next chunk (b, t, d) of a causal MambaEncoder's input through `layers` (eval mode, each mixer continuing
    from its state): the hidden states [layer 1's input, each layer's output], as fairseq's TransformerEncoder
    computes them (the zero positional conv and the padding to a multiple change nothing for a causal encoder); the
    last after the final layer norm when `final_layer_norm` and the layers are pre-LN."""
    if not encoder.layer_norm_first:
        x = encoder.layer_norm(x)
    hidden = [x]
    for layer, state in zip(layers, states):
        hidden.append(causal_layer_chunk(layer, hidden[-1], state))
    if encoder.layer_norm_first and final_layer_norm:
        hidden[-1] = encoder.layer_norm(hidden[-1])
    return hidden


class StreamingEncoder:
    """Runs a causal MambaHubertModel on audio that arrives in chunks.

    `push(chunk)` returns the feature frames completed by that chunk, in order; concatenated over a stream they
    equal `model.extract_features(whole_audio, output_layer=output_layer)[0][0]` to float rounding, whatever the
    chunk sizes. Carried memory is constant in stream length (`carried_tensors`).
    """

    def __init__(self, model: nn.Module, output_layer: int | None = None) -> None:
        check_streamable(model)
        layers = list(model.encoder.layers)
        if output_layer is not None and not 1 <= output_layer <= len(layers):
            raise ValueError(f"output_layer must be in 1..{len(layers)}, got {output_layer}")
        self.model = model
        self.output_layer = output_layer
        self.layers: list[MambaEncoderLayer] = layers if output_layer is None else layers[:output_layer]
        self.conv_layers = model.conv_layers
        self.window, self.hop = receptive_field(self.conv_layers)
        # The fbank front end's left padding is carried as samples before the stream, so the unpadded front end run
        # on the carried window computes what the model computes offline on the padded audio.
        self.left_padding = model.left_padding
        self.dim = model.encoder.embedding_dim
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next `push` starts a new one."""
        weight = self.model.encoder.layer_norm.weight
        # starts at sample hop * frames_emitted of the left-padded stream
        self._samples = weight.new_zeros(self.left_padding)
        self._num_samples = self.left_padding
        self._frames_emitted = 0
        self._states = [layer.mixer.allocate_state(1) for layer in self.layers]

    @property
    def frames_emitted(self) -> int:
        return self._frames_emitted

    def carried_tensors(self) -> dict[str, torch.Tensor]:
        """Everything carried between chunks, by name: its size is what a stream costs in memory."""
        tensors = {"samples": self._samples}
        for index, state in enumerate(self._states):
            tensors[f"layer{index}.conv"] = state.conv
            tensors[f"layer{index}.ssm"] = state.ssm
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
        self._samples = torch.cat([self._samples, audio_chunk.to(self._samples.dtype)])
        self._num_samples += audio_chunk.numel()
        new_frames = conv_output_length(self._num_samples, self.conv_layers) - self._frames_emitted
        if new_frames <= 0:
            return [self._samples.new_zeros(0, self.dim)] * (len(self.layers) + 1)
        # Frame k reads samples [hop k, hop k + window): exactly this segment gives the new frames.
        segment = self._samples[: (new_frames - 1) * self.hop + self.window]
        features = self.model.feature_extractor(segment.unsqueeze(0)).transpose(1, 2)
        x = self.model.layer_norm(features)
        if self.model.post_extract_proj is not None:
            x = self.model.post_extract_proj(x)
        hidden = encoder_chunk(self.model.encoder, self.layers, x, self._states, self.output_layer is None)
        self._samples = self._samples[new_frames * self.hop :].clone()
        self._frames_emitted += new_frames
        return [h[0] for h in hidden]

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the stream: returns the frames still pending and resets for the next stream. There are none, since
        the model has no look-ahead; trailing samples shorter than a window are dropped, as offline."""
        self.reset()
        return self._samples.new_zeros(0, self.dim)


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
        if self.head is not None:
            if self.head.training:
                raise NotStreamableError("call model.eval() first: dropout makes chunked and offline outputs differ")
            check_causal_encoder(self.head, "head", "model.head_")
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next `push` starts a new one."""
        self.upstream.reset()
        if self.head is not None:
            self._head_states = [layer.mixer.allocate_state(1) for layer in self.head.layers]

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
            x = encoder_chunk(self.head, list(self.head.layers), self.encoder.head_proj(x)[None], self._head_states,
                              True)[-1][0]
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

