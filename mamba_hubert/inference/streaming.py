"""Streaming inference for causal Mamba-HuBERT models: audio in chunks, frame features out, state carried.

A model streams exactly when nothing in it looks ahead or across the whole utterance: `layer_type=mamba`,
`conv_pos=0` (fairseq's positional conv is non-causal) and `extractor_mode=layer_norm` or `fbank` (the default
extractor's first group norm averages over the whole utterance). Everything else in HuBERT's `extract_features` is
per frame. `StreamingEncoder` carries, between chunks, the samples of the next frame's front-end window (less than
one window: 400 samples for HuBERT's CNN, 1,360 for the fbank front end at 50 Hz), and for every Mamba layer its
conv tail (d_conv - 1 frames) and SSM state; each chunk runs through the front end and every layer at once, the
scan resuming from the carried state in one call of the fused kernel.

The chunk-level building blocks here (a Mamba block on a chunk with carried state, the eval-mode parts of a
Mamba encoder layer) are shared with `mamba_hubert.inference.long_form`.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mamba_hubert.models.frames import conv_output_length, receptive_field
from mamba_hubert.modules.encoder import ZeroPositionalConv
from mamba_hubert.modules.layers import MambaEncoderLayer
from mamba_hubert.modules.mamba import Mamba
from mamba_hubert.ops import selective_scan_fn

# Step size of the steps that load a carried state (see `selective_scan_from_state`): a power of two, so that
# u / step * step is exact, and small enough that exp(step * A) rounds to exactly 1 in float32 for |A| < 2^35.
_LOAD_STEP = 2.0**-60


@dataclass
class MambaState:
    """What one Mamba scan direction carries from one chunk to the next."""

    conv: torch.Tensor  # (batch, d_inner, d_conv - 1): the last conv inputs, oldest first
    ssm: torch.Tensor  # (batch, d_inner, d_state) float32: the scan's hidden state after the last frame

    @classmethod
    def zeros(cls, block: Mamba, batch_size: int) -> "MambaState":
        """The state before the first frame: the offline conv's left zero padding and a zero scan state."""
        _, ssm_state = block.allocate_state(batch_size)
        return cls(block.conv1d.weight.new_zeros(batch_size, block.d_inner, block.d_conv - 1), ssm_state)


@functools.lru_cache(maxsize=16)
def _load_steps(
    batch: int, d_inner: int, d_state: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """delta, B, C and z (float32) of the d_state steps that load a state (see `selective_scan_from_state`): they
    depend only on shapes, so each chunk reuses them instead of building them (cheap ops, but each costs a thread
    hand-off)."""
    delta = torch.full((batch, d_inner, d_state), _LOAD_STEP, device=device)
    B = torch.eye(d_state, device=device).expand(batch, d_state, d_state)
    C = torch.zeros(batch, d_state, d_state, device=device)
    z = torch.zeros(batch, d_inner, d_state, device=device)
    return delta, B, C, z


def selective_scan_from_state(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    initial_state: torch.Tensor,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan_fn` (delta final, i.e. after bias and softplus) starting from `initial_state` instead of 0.

    u, delta, z: (b, d_inner, L); A: (d_inner, N); B, C: (b, N, L); initial_state: (b, d_inner, N).
    Returns (y (b, d_inner, L) in u's dtype, last state (b, d_inner, N) float32).

    The state is loaded by N extra steps in front of the chunk; step k has B = e_k, C = 0, z = 0, delta = 2^-60
    and u = initial_state[..., k] * 2^60, so it adds delta * u = initial_state[..., k] exactly to state k while
    exp(delta * A) rounds to exactly 1 (|A| < 2^35). The chunk then runs in the same kernel call. A closed form
    (h_t += exp(A cumsum(delta)) h_0) gives the same result but costs about 15x the fused scan on CPU, since it
    materialises (b, d_inner, L, N). The scan runs in float32 whatever the inputs' dtype: 2^60 overflows float16,
    bfloat16 would round the loaded state to 8 bits, and mamba-ssm's kernel wants delta in u's dtype. A state beyond
    2^67 in magnitude would overflow to inf when scaled; the outputs would then show inf rather than wrong values.
    """
    batch, d_inner, _ = u.shape
    d_state = A.shape[1]
    load_delta, load_B, load_C, load_z = _load_steps(batch, d_inner, d_state, u.device)
    y, last_state = selective_scan_fn(
        torch.cat([initial_state.float() * (1 / _LOAD_STEP), u.float()], dim=-1),  # step k loads column k
        torch.cat([load_delta, delta.float()], dim=-1),
        A,
        torch.cat([load_B, B.float()], dim=-1),
        torch.cat([load_C, C.float()], dim=-1),
        D,
        z=None if z is None else torch.cat([load_z, z.float()], dim=-1),
        return_last_state=True,
        impl=impl,
    )
    return y[..., d_state:].to(u.dtype), last_state


def scan_branch_chunk(
    block: Mamba,
    hidden: torch.Tensor,
    gate: torch.Tensor,
    conv1d: nn.Conv1d,
    x_proj: nn.Linear,
    dt_proj: nn.Linear,
    A_log: torch.Tensor,
    D: torch.Tensor,
    state: MambaState,
) -> tuple[torch.Tensor, MambaState]:
    """One scan direction of `block` (its own parameters or InnBiMamba's backward set) on a chunk that continues
    the sequence `state` ended: hidden, gate (b, d_inner, T) -> (gated y (b, d_inner, T), state after the chunk).
    Mirrors `Mamba._scan_branch`, whose conv pads with zeros on the left where this uses the carried tail."""
    width = conv1d.kernel_size[0]
    history = torch.cat([state.conv, hidden], dim=-1)
    hidden = F.silu(F.conv1d(history, conv1d.weight, conv1d.bias, groups=conv1d.groups))
    dt, B, C = x_proj(hidden.transpose(1, 2)).split([block.dt_rank, block.d_state, block.d_state], dim=-1)
    delta = F.softplus(F.linear(dt, dt_proj.weight).float().transpose(1, 2) + dt_proj.bias.float()[:, None])
    y, ssm = selective_scan_from_state(
        hidden,
        delta,
        -torch.exp(A_log.float()),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D.float(),
        gate,
        state.ssm,
        impl=block.scan_impl,
    )
    # clone: a slice would keep the whole chunk's storage alive in the carried state
    return y, MambaState(history[..., history.shape[-1] - (width - 1) :].clone(), ssm)


def mamba_chunk(block: Mamba, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
    """Causal Mamba block on a chunk: x (b, T, d_model) -> (out (b, T, d_model), state after the chunk).
    Feeding a sequence chunk by chunk gives `block(sequence)` to float rounding."""
    hidden, gate = block.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    y, state = scan_branch_chunk(
        block, hidden, gate, block.conv1d, block.x_proj, block.dt_proj, block.A_log, block.D, state
    )
    return block.out_proj(y.transpose(1, 2)), state


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


def causal_layer_chunk(layer: MambaEncoderLayer, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
    """A causal `MambaEncoderLayer` (eval mode) on the next chunk (b, t, d) of a sequence, its scan state carried:
    the chunks' outputs, concatenated, are the layer's output on the whole sequence."""
    mixed, state = mamba_chunk(layer.mixer, mixer_input(layer, x), state)
    return after_mixer(layer, x, mixed), state


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
    if not isinstance(model.encoder.pos_conv, ZeroPositionalConv):
        raise NotStreamableError("the positional conv looks ahead; a streaming model needs conv_pos=0")
    for index, layer in enumerate(model.encoder.layers):
        if not (isinstance(layer, MambaEncoderLayer) and type(layer.mixer) is Mamba):
            raise NotStreamableError(f"encoder layer {index} is not causal ({type(layer).__name__}); use layer_type=mamba")


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
        self._states = [MambaState.zeros(layer.mixer, 1) for layer in self.layers]

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

    @torch.no_grad()
    def push(self, audio_chunk: torch.Tensor) -> torch.Tensor:
        """audio_chunk: (num_samples,) float at the model's sample rate -> the new frames (new_frames, dim)."""
        if audio_chunk.dim() != 1:
            raise ValueError(f"push takes one channel of samples (num_samples,), got shape {tuple(audio_chunk.shape)}")
        self._samples = torch.cat([self._samples, audio_chunk.to(self._samples.dtype)])
        self._num_samples += audio_chunk.numel()
        new_frames = conv_output_length(self._num_samples, self.conv_layers) - self._frames_emitted
        if new_frames <= 0:
            return self._samples.new_zeros(0, self.dim)
        # Frame k reads samples [hop k, hop k + window): exactly this segment gives the new frames.
        segment = self._samples[: (new_frames - 1) * self.hop + self.window]
        features = self.model.feature_extractor(segment.unsqueeze(0)).transpose(1, 2)
        out = self._encode(features)
        self._samples = self._samples[new_frames * self.hop :].clone()
        self._frames_emitted += new_frames
        return out[0]

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the stream: returns the frames still pending and resets for the next stream. There are none, since
        the model has no look-ahead; trailing samples shorter than a window are dropped, as offline."""
        self.reset()
        return self._samples.new_zeros(0, self.dim)

    def _encode(self, features: torch.Tensor) -> torch.Tensor:
        """CNN frames (1, T, C) -> encoder output (1, T, dim), as HubertModel.forward and fairseq's
        TransformerEncoder compute it in eval mode (the zero positional conv and the padding to an even length
        change nothing for a causal model)."""
        model, encoder = self.model, self.model.encoder
        x = model.layer_norm(features)
        if model.post_extract_proj is not None:
            x = model.post_extract_proj(x)
        if not encoder.layer_norm_first:
            x = encoder.layer_norm(x)
        for index, layer in enumerate(self.layers):
            x, self._states[index] = causal_layer_chunk(layer, x, self._states[index])
        if encoder.layer_norm_first and self.output_layer is None:
            x = encoder.layer_norm(x)
        return x


def stream(
    model: nn.Module, audio: torch.Tensor, chunk_samples: int, output_layer: int | None = None
) -> torch.Tensor:
    """Convenience: run `audio` (num_samples,) through a StreamingEncoder in chunks of `chunk_samples`."""
    encoder = StreamingEncoder(model, output_layer)
    pieces: list[torch.Tensor] = [encoder.push(audio[s : s + chunk_samples]) for s in range(0, len(audio), chunk_samples)]
    pieces.append(encoder.flush())
    return torch.cat(pieces)

