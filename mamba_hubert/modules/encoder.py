"""fairseq's wav2vec2/HuBERT TransformerEncoder with Mamba layer types.

fairseq keeps the positional conv, layer norm, LayerDrop, `layer=` early exit and padding to a
multiple; only the layers differ, built by the layer-type registry (`layer_types`). Layer type `transformer` is
fairseq's own layer, unchanged. Beside fairseq's forward the encoder has its layers' inference interface
(`initial_state`, `forward_chunk`, `forward_long`), refusing by name what cannot stream.

LayerDrop draws from numpy's global generator, which no checkpoint holds, so a resumed run dropped other layers than
the run it continued. Given `layerdrop_seed` (set around the tasks' steps by `models.seeded_masks.seeded_draws`),
a training forward draws from that generator seeded with (seed, update, forward within the update) instead: the
same layers on every rank, as fairseq's identically seeded generators gave (sharded layers need every rank).
"""

from typing import Any

import torch
from fairseq.data.data_utils import numpy_seed
from fairseq.distributed import fsdp_wrap
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from torch import nn

from mamba_hubert.modules.bimamba import check_right_padded
from mamba_hubert.modules.layer_interface import NotStreamableError
from mamba_hubert.modules.layer_types import layer_type, require_causal
from mamba_hubert.modules.layers import statistics_kept_once
from mamba_hubert.modules.mamba import Mamba
from mamba_hubert.modules.mamba2 import Mamba2

MAMBA_INITS = ("mamba_ssm", "bert")


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
    """`name` and `field_prefix` say in messages which encoder this is and how its config fields are spelled (a
    mamba_hubert_asr head: "head", "model.head_")."""

    layerdrop_seed: int | None = None
    num_updates: int = 0
    forwards_in_update: int = 0  # training forwards that drew LayerDrop since the update count changed

    def __init__(self, args, name: str = "encoder", field_prefix: str = "") -> None:
        layer_type(args.layer_type)  # an unknown type is refused by name before fairseq builds anything
        super().__init__(fairseq_buildable(args))
        self.layer_type = args.layer_type
        self.name, self.field_prefix = name, field_prefix
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
        """A layer of `args.layer_type` from the registry, wrapped as fairseq wraps its own: for FSDP, and for
        activation checkpointing when `checkpoint_activations` is set (recomputed in the backward instead of kept)."""
        layer = fsdp_wrap(layer_type(args.layer_type).build(args))
        if not args.checkpoint_activations:
            return layer
        layer.forward = statistics_kept_once(layer.forward)
        return checkpoint_wrapper(layer)

    def check_streamable(self) -> None:
        """NotStreamableError, naming the field to change, unless every frame's output reads no later frame."""
        if not isinstance(self.pos_conv, ZeroPositionalConv):
            raise NotStreamableError(f"the {self.name}'s positional conv looks ahead; streaming needs "
                                     f"{self.field_prefix}conv_pos=0")
        require_causal(self.layer_type, f"{self.name} layer 0", f"{self.field_prefix}layer_type")

    def initial_state(self, batch: int) -> list[Any]:
        """Each layer's state before a sequence's first frame; refuses an encoder that cannot stream."""
        self.check_streamable()
        return [layer.initial_state(batch) for layer in self.layers]

    def forward_chunk(self, x: torch.Tensor, state: list[Any], output_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], list[Any]]:
        """The next chunk (b, t, d) of the encoder's input (eval mode) through its layers, or the first
        `output_layer`, each continuing from its state: the hidden states [layer 1's input, each layer's output] as
        fairseq's forward computes them (the zero positional conv and the padding to a multiple change nothing for a
        causal encoder), the last after the final layer norm of a pre-LN encoder run to its end; and the state."""
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        hidden = [x]
        for index, layer in enumerate(self.layers[:output_layer]):
            y, state[index] = layer.forward_chunk(hidden[-1], state[index])
            hidden.append(y)
        if self.layer_norm_first and output_layer is None:
            hidden[-1] = self.layer_norm(hidden[-1])
        return hidden, state

    def forward_long(self, x: torch.Tensor, chunk: int, output_layer: int | None = None,
                     hidden_states: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """`forward(x, layer=output_layer)`'s output on a whole unpadded sequence (b, T, d) in eval mode, layer by
        layer, each as it declares (`forward_long`), with one chunk's working set where it can; with
        `hidden_states`, the list [layer 1's input, each layer's output] instead (the states `MambaHubertAsr`'s
        weighted sum reads; they cost a (T, d) tensor each). May overwrite x."""
        layer_type(self.layer_type)  # a type no longer registered is refused by name, not run another way
        if output_layer is not None and not 1 <= output_layer <= len(self.layers):
            raise ValueError(f"output_layer must be in 1..{len(self.layers)}, got {output_layer}")
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        states = [x]
        for layer in self.layers[:output_layer]:
            # a causal layer writes its output over its input, which a kept state must not see
            x = layer.forward_long(x.clone() if hidden_states else x, chunk)
            states.append(x)
        if self.layer_norm_first and output_layer is None:
            states[-1] = self.layer_norm(states[-1])
        return states if hidden_states else states[-1]
