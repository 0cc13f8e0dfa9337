"""Encoder layers built on Mamba mixers. All take and return (time, batch, channels) like fairseq's
TransformerSentenceEncoderLayer and return `x, (None, layer_result)` so fairseq's TransformerEncoder
can stack them; each also has the inference interface of `layer_interface` and a `from_args` builder that the
layer-type registry (`layer_types`) calls."""

import functools
from collections.abc import Callable
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from fairseq import utils
from torch import nn

from mamba_hubert.modules.bimamba import ExtBiMamba, InnBiMamba
from mamba_hubert.modules.layer_interface import ChunkedLayer, per_frames
from mamba_hubert.modules.mamba import Mamba, MambaState
from mamba_hubert.modules.mamba2 import Mamba2

LayerOutput = tuple[torch.Tensor, tuple[None, torch.Tensor]]
MAMBA2_ONLY_KWARGS = ("headdim", "ngroups", "chunk_size")  # what mamba_kwargs may hold for Mamba-2 mixers alone


def mamba_kwargs_from(args) -> dict:
    """The Mamba block settings of an encoder config (`MambaLayerConfig`'s fields)."""
    return {
        "d_state": args.mamba_d_state,
        "d_conv": args.mamba_d_conv,
        "expand": args.mamba_expand,
        "scan_impl": args.scan_impl,
        "headdim": args.mamba_headdim,
        "ngroups": args.mamba_ngroups,
        "chunk_size": args.mamba_chunk_size,
    }


def build_mixer(kind: str, d_model: int, fusion: str, mamba_kwargs: dict) -> nn.Module:
    """`mamba` (causal), `ext_bimamba` (two blocks, `fusion`), `inn_bimamba` (shared projections), or their Mamba-2
    counterparts `mamba2` and `ext_bimamba2`."""
    if kind == "mamba2":
        return Mamba2(d_model, **mamba_kwargs)
    if kind == "ext_bimamba2":
        return ExtBiMamba(d_model, fusion=fusion, block=Mamba2, **mamba_kwargs)
    mamba_kwargs = {k: v for k, v in mamba_kwargs.items() if k not in MAMBA2_ONLY_KWARGS}
    if kind == "mamba":
        return Mamba(d_model, **mamba_kwargs)
    if kind == "ext_bimamba":
        return ExtBiMamba(d_model, fusion=fusion, **mamba_kwargs)
    if kind == "inn_bimamba":
        return InnBiMamba(d_model, **mamba_kwargs)
    raise ValueError(f"unknown mixer {kind!r}")


_recomputing: ContextVar[bool] = ContextVar("recomputing", default=False)


def statistics_kept_once(forward: Callable) -> Callable:
    """`forward` for fairseq's `checkpoint_wrapper`, which runs it twice: under no_grad in the forward pass, then
    again with grad in the backward to recompute activations. The second run must not update batch-norm running
    statistics a second time, so it runs with `_recomputing` set."""

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        token = _recomputing.set(True)
        try:
            return forward(*args, **kwargs)
        finally:
            _recomputing.reset(token)

    return run


def batch_norm_valid(norm: nn.BatchNorm1d, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """`norm` over the channels of x: (b, T, C), its batch statistics taken over valid frames only (padded frames
    pass through unchanged and never reach the running statistics). Masked sums, not `x[valid]`: selecting the valid
    frames would sync the host on every layer of a GPU forward."""
    if padding_mask is None:
        return norm(x.reshape(-1, x.shape[-1])).view_as(x)
    valid = (~padding_mask).unsqueeze(-1)  # (b, T, 1)
    if not norm.training and norm.track_running_stats:
        return torch.where(valid, norm(x.reshape(-1, x.shape[-1])).view_as(x), x)  # running statistics: per frame
    frames = x.float()  # float32 statistics, as BatchNorm under autocast: a half-precision frame count overflows
    weight = valid.float()
    count = weight.sum()
    mean = (frames * weight).sum((0, 1)) / count.clamp(min=1)
    variance = ((frames - mean) * weight).square().sum((0, 1)) / count.clamp(min=1)  # biased, as BatchNorm normalises
    if norm.track_running_stats and not _recomputing.get():
        _update_running_statistics(norm, mean.detach(), variance.detach() * count / (count - 1).clamp(min=1))
    out = (frames - mean) * torch.rsqrt(variance + norm.eps)
    if norm.affine:
        out = out * norm.weight.float() + norm.bias.float()
    return torch.where(valid, out.to(x.dtype), x)


@torch.no_grad()
def _update_running_statistics(norm: nn.BatchNorm1d, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
    """BatchNorm's training-mode update: an exponential average with `momentum`, a cumulative one when it is None."""
    norm.num_batches_tracked.add_(1)
    dtype = norm.running_mean.dtype
    momentum = (1.0 / norm.num_batches_tracked).to(dtype) if norm.momentum is None else norm.momentum
    norm.running_mean.lerp_(mean.to(dtype), momentum)
    norm.running_var.lerp_(unbiased_variance.to(dtype), momentum)


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear."""

    def __init__(self, d_model: int, d_ffn: int, activation: Callable, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ffn)
        self.fc2 = nn.Linear(d_ffn, d_model)
        self.activation = activation
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(x))))


class MambaEncoderLayer(ChunkedLayer, nn.Module):
    """Residual mixer, then an optional residual FFN (`d_ffn > 0`); post-LN like HuBERT Base, or pre-LN.

    With the `mamba` mixer this is Lin et al.'s mambaformer (`mamba2`: their mamba2former); with ExtBiMamba(concat)
    and an FFN it is
    Zhang et al.'s TransBiMamba (a Transformer layer whose self-attention is ExtBiMamba).
    """

    def __init__(
        self,
        mixer: nn.Module,
        d_model: int,
        d_ffn: int,
        dropout: float,
        activation: Callable,
        activation_dropout: float,
        layer_norm_first: bool,
    ) -> None:
        super().__init__()
        self.mixer = mixer
        self.layer_norm_first = layer_norm_first
        self.mixer_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, d_ffn, activation, activation_dropout) if d_ffn > 0 else None
        self.final_layer_norm = nn.LayerNorm(d_model) if d_ffn > 0 else None
        self.residual_branches = 2 if d_ffn > 0 else 1  # the mixer, the FFN: what mamba-ssm's init scales by

    @classmethod
    def from_args(cls, args) -> "MambaEncoderLayer":
        """`mamba`, `ext_bimamba`, `inn_bimamba`, `mamba2`, `ext_bimamba2` (the mixer of that name) or `transbimamba`
        (ExtBiMamba fused by concat, with an FFN)."""
        mamba_kwargs = mamba_kwargs_from(args)
        if args.layer_type == "transbimamba":
            if args.encoder_ffn_embed_dim <= 0:
                raise ValueError("transbimamba needs encoder_ffn_embed_dim > 0")
            mixer = build_mixer("ext_bimamba", args.encoder_embed_dim, "concat", mamba_kwargs)
        else:
            mixer = build_mixer(args.layer_type, args.encoder_embed_dim, args.bimamba_fusion, mamba_kwargs)
        return cls(mixer, args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.dropout,
                   utils.get_activation_fn(args.activation_fn), args.activation_dropout, args.layer_norm_first)

    def forward(
        self, x: torch.Tensor, self_attn_padding_mask: torch.Tensor | None = None, **_unused
    ) -> LayerOutput:
        x = x.transpose(0, 1)  # (b, T, C) for the mixer
        mask = self_attn_padding_mask
        if self.layer_norm_first:
            x = x + self.dropout(self.mixer(self.mixer_layer_norm(x), mask))
            layer_result = x
            if self.ffn is not None:
                layer_result = self.ffn(self.final_layer_norm(x))
                x = x + self.dropout(layer_result)
        else:
            x = self.mixer_layer_norm(x + self.dropout(self.mixer(x, mask)))
            layer_result = x
            if self.ffn is not None:
                layer_result = self.ffn(x)
                x = self.final_layer_norm(x + self.dropout(layer_result))
        return x.transpose(0, 1), (None, layer_result.transpose(0, 1))

    def _mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the mixer reads in eval mode: LN(x) for a pre-LN layer, x itself for a post-LN one."""
        return self.mixer_layer_norm(x) if self.layer_norm_first else x

    def _after_mixer(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The rest of `forward` in eval mode, given the mixer's output: residuals, layer norms and the optional FFN,
        all per frame. (b, T, d) in and out."""
        if self.layer_norm_first:
            x = x + mixed
            return x if self.ffn is None else x + self.ffn(self.final_layer_norm(x))
        x = self.mixer_layer_norm(x + mixed)
        return x if self.ffn is None else self.final_layer_norm(x + self.ffn(x))

    def initial_state(self, batch: int) -> MambaState:
        if not self.mixer.causal:
            return super().initial_state(batch)
        return self.mixer.allocate_state(batch)

    def forward_chunk(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """The next chunk (b, t, d) of a sequence, the causal mixer's state advanced in place."""
        if not self.mixer.causal:
            return super().forward_chunk(x, state)
        return self._after_mixer(x, self.mixer(self._mixer_input(x), state=state)), state

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Causal: chunk by chunk over x (`ChunkedLayer`); bidirectional: the mixer's own long-form (its backward
        direction a second pass), then the per-frame rest."""
        if self.mixer.causal:
            return super().forward_long(x, chunk)
        mixed = self.mixer.forward_long(self._mixer_input(x), chunk)
        return per_frames(self._after_mixer, chunk, x, mixed)


class ConBiMambaConvolution(nn.Module):
    """Conformer convolution module: LN -> pointwise (2C) -> GLU -> depthwise -> BatchNorm -> swish ->
    pointwise -> dropout. Padded frames are zeroed before the depthwise conv and excluded from the
    batch-norm statistics, so they cannot reach valid frames."""

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"depthwise_conv_kernel_size must be odd, got {kernel_size}")
        self.layer_norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.batch_norm = nn.BatchNorm1d(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (b, T, C)."""
        x = F.glu(self.pointwise_in(self.layer_norm(x)), dim=-1)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(batch_norm_valid(self.batch_norm, x, padding_mask))))

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """`forward(x, None)` in eval mode (batch norm with running statistics is per frame) with one chunk's working
        set around the depthwise conv, which runs over the whole sequence at once (it looks both ways)."""
        glu = per_frames(lambda c: F.glu(self.pointwise_in(self.layer_norm(c)), dim=-1), chunk, x)
        mixed = self.depthwise(glu.transpose(1, 2)).transpose(1, 2)
        del glu
        return per_frames(lambda c: self.pointwise_out(F.silu(self.batch_norm(c.transpose(1, 2)).transpose(1, 2))),
                          chunk, mixed)


class ConBiMambaEncoderLayer(ChunkedLayer, nn.Module):
    """Conformer macaron block with ExtBiMamba in place of self-attention (Zhang et al.'s Mamba-HuBERT):
    x + FFN/2; x + ExtBiMamba(LN x); x + Conv; x + FFN/2; LN."""

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        activation_dropout: float,
        kernel_size: int,
        fusion: str,
        mamba_kwargs: dict,
    ) -> None:
        super().__init__()
        if d_ffn <= 0:
            raise ValueError("conbimamba needs encoder_ffn_embed_dim > 0")
        self.ffn1_layer_norm = nn.LayerNorm(d_model)
        self.ffn1 = FeedForward(d_model, d_ffn, F.silu, activation_dropout)
        self.mixer_layer_norm = nn.LayerNorm(d_model)
        self.mixer = build_mixer("ext_bimamba", d_model, fusion, mamba_kwargs)
        self.conv = ConBiMambaConvolution(d_model, kernel_size, dropout)
        self.ffn2_layer_norm = nn.LayerNorm(d_model)
        self.ffn2 = FeedForward(d_model, d_ffn, F.silu, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.residual_branches = 4  # FFN/2, mixer, conv module, FFN/2: what mamba-ssm's init scales by

    @classmethod
    def from_args(cls, args) -> "ConBiMambaEncoderLayer":
        return cls(args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.dropout, args.activation_dropout,
                   args.depthwise_conv_kernel_size, args.bimamba_fusion, mamba_kwargs_from(args))

    def forward(
        self, x: torch.Tensor, self_attn_padding_mask: torch.Tensor | None = None, **_unused
    ) -> LayerOutput:
        x = x.transpose(0, 1)
        mask = self_attn_padding_mask
        x = x + 0.5 * self.dropout(self.ffn1(self.ffn1_layer_norm(x)))
        x = x + self.dropout(self.mixer(self.mixer_layer_norm(x), mask))
        x = x + self.conv(x, mask)
        layer_result = self.ffn2(self.ffn2_layer_norm(x))
        x = self.final_layer_norm(x + 0.5 * self.dropout(layer_result))
        return x.transpose(0, 1), (None, layer_result.transpose(0, 1))

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """`forward` in eval mode on a whole sequence (b, T, d): per-frame parts in chunks, the mixer's and the conv
        module's own long-form."""
        x = x + 0.5 * per_frames(lambda c: self.ffn1(self.ffn1_layer_norm(c)), chunk, x)
        x = x + self.mixer.forward_long(self.mixer_layer_norm(x), chunk)
        x = x + self.conv.forward_long(x, chunk)
        return per_frames(lambda c: self.final_layer_norm(c + 0.5 * self.ffn2(self.ffn2_layer_norm(c))), chunk, x)
