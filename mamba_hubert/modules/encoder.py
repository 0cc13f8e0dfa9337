"""fairseq's wav2vec2/HuBERT TransformerEncoder with Mamba layer types.

fairseq keeps the positional conv, layer norm, LayerDrop, `layer=` early exit and padding to a
multiple; only the layers differ. Layer type `transformer` is fairseq's own layer, unchanged.

LayerDrop draws from numpy's global generator, which no checkpoint holds, so a resumed run dropped other layers than
the run it continued. Given `layerdrop_seed` (set around the tasks' steps by `models.seeded_masks.seeded_draws`),
a training forward draws from that generator seeded with (seed, update, forward within the update) instead: the
same layers on every rank, as fairseq's identically seeded generators gave (sharded layers need every rank).
"""

import torch
from fairseq import utils
from fairseq.data.data_utils import numpy_seed
from fairseq.distributed import fsdp_wrap
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from torch import nn

from mamba_hubert.modules.bimamba import check_right_padded
from mamba_hubert.modules.conformer import PaddingExactConformerLayer
from mamba_hubert.modules.layers import (
    ConBiMambaEncoderLayer,
    MambaEncoderLayer,
    build_mixer,
    statistics_kept_once,
)
from mamba_hubert.modules.mamba import Mamba
from mamba_hubert.modules.mamba2 import Mamba2

MAMBA_LAYER_TYPES = ("mamba", "ext_bimamba", "inn_bimamba", "conbimamba", "transbimamba", "mamba2", "ext_bimamba2")
LAYER_TYPES = (*MAMBA_LAYER_TYPES, "transformer", "conformer")
MAMBA_INITS = ("mamba_ssm", "bert")


def mamba_kwargs_from(args) -> dict:
    return {
        "d_state": args.mamba_d_state,
        "d_conv": args.mamba_d_conv,
        "expand": args.mamba_expand,
        "scan_impl": args.scan_impl,
        "headdim": args.mamba_headdim,
        "ngroups": args.mamba_ngroups,
        "chunk_size": args.mamba_chunk_size,
    }


class ZeroPositionalConv(nn.Module):
    """Stands in for the positional conv when `conv_pos=0` (no look-ahead, e.g. for a streaming model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class ArgsOverride:
    """Reads through to `args` except for the given fields."""

    def __init__(self, args, **overrides) -> None:
        self._args = args
        self._overrides = overrides

    def __getattr__(self, name: str):
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._args, name)

    def __repr__(self) -> str:
        return f"{self._args} with {self._overrides}"


def fairseq_buildable(args, **overrides) -> ArgsOverride:
    """`args` with `overrides`, in a form fairseq's wav2vec2 TransformerEncoder can build: its positional conv divides
    by the conv width, so `conv_pos=0` (no positional conv, no look-ahead) becomes a 2-wide conv that the caller
    replaces (MambaEncoder) or discards."""
    if args.conv_pos == 0:
        overrides.setdefault("conv_pos", 2)
    return ArgsOverride(args, **overrides)


class MambaEncoder(TransformerEncoder):
    layerdrop_seed: int | None = None
    num_updates: int = 0
    forwards_in_update: int = 0  # training forwards that drew LayerDrop since the update count changed

    def __init__(self, args) -> None:
        if args.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {LAYER_TYPES}, got {args.layer_type!r}")
        super().__init__(fairseq_buildable(args))
        if args.conv_pos == 0:
            self.pos_conv = ZeroPositionalConv()
        if args.mamba_init not in MAMBA_INITS:
            raise ValueError(f"mamba_init must be one of {MAMBA_INITS}, got {args.mamba_init!r}")
        # fairseq's init_bert_params (run by the parent) gave every Linear N(0, 0.02) and a zero bias, the dt bias
        # included: the projections go back to mamba-ssm's init unless `bert` keeps fairseq's, the SSM parameters always.
        for layer in self.layers:
            for module in layer.modules():
                if isinstance(module, (Mamba, Mamba2)):
                    if args.mamba_init == "mamba_ssm":
                        module.reset_projections(layer.residual_branches * len(self.layers))
                    module.reset_ssm_parameters()

    def set_num_updates(self, num_updates: int) -> None:
        # fairseq calls this before each micro-batch of an update: the count of forwards restarts only with a new one
        if num_updates != self.num_updates:
            self.num_updates, self.forwards_in_update = num_updates, 0

    def extract_features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, tgt_layer: int | None = None,
                         min_layer: int = 0, corpus_key: str | None = None) -> tuple[torch.Tensor, list]:
        """fairseq's, with LayerDrop drawn from (layerdrop_seed, update, forward) when a seed is set, and the padding
        checked to be right-padding once here rather than by every bidirectional mixer."""
        if padding_mask is not None:
            check_right_padded(padding_mask)
        if not (self.training and self.layerdrop > 0 and self.layerdrop_seed is not None):
            return super().extract_features(x, padding_mask, tgt_layer, min_layer, corpus_key)
        with numpy_seed(self.layerdrop_seed, self.num_updates, self.forwards_in_update):
            self.forwards_in_update += 1
            return super().extract_features(x, padding_mask, tgt_layer, min_layer, corpus_key)

    def build_encoder_layer(self, args, **kwargs) -> nn.Module:
        """A layer of `args.layer_type`, wrapped as fairseq wraps its own: for FSDP, and for activation checkpointing
        when `checkpoint_activations` is set (recomputed in the backward instead of kept)."""
        if args.layer_type == "transformer":
            return super().build_encoder_layer(args, **kwargs)
        layer = fsdp_wrap(self._build_layer(args))
        if not args.checkpoint_activations:
            return layer
        layer.forward = statistics_kept_once(layer.forward)
        return checkpoint_wrapper(layer)

    def _build_layer(self, args) -> nn.Module:
        if args.layer_type == "conformer":
            return PaddingExactConformerLayer(
                args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads, args.dropout,
                args.depthwise_conv_kernel_size, getattr(args, "attn_type", ""), getattr(args, "fp16", False))
        d_model = args.encoder_embed_dim
        mamba_kwargs = mamba_kwargs_from(args)
        if args.layer_type == "conbimamba":
            return ConBiMambaEncoderLayer(
                d_model,
                args.encoder_ffn_embed_dim,
                args.dropout,
                args.activation_dropout,
                args.depthwise_conv_kernel_size,
                args.bimamba_fusion,
                mamba_kwargs,
            )
        if args.layer_type == "transbimamba":
            if args.encoder_ffn_embed_dim <= 0:
                raise ValueError("transbimamba needs encoder_ffn_embed_dim > 0")
            mixer = build_mixer("ext_bimamba", d_model, "concat", mamba_kwargs)
        else:
            mixer = build_mixer(args.layer_type, d_model, args.bimamba_fusion, mamba_kwargs)
        return MambaEncoderLayer(
            mixer,
            d_model,
            args.encoder_ffn_embed_dim,
            args.dropout,
            utils.get_activation_fn(args.activation_fn),
            args.activation_dropout,
            args.layer_norm_first,
        )
