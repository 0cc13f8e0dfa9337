"""`mamba_hubert_asr`: fairseq's `hubert_ctc` with a downstream encoder between the SSL model and the CTC projection.

Zhang et al.'s "+ Conformer" runs the pretrained model as a front end feeding a Conformer encoder; this model is that
setup inside fairseq. Everything `hubert_ctc` does stays: the pretrained `mamba_hubert` or fairseq `hubert` checkpoint
is loaded from `model.w2v_path` by fairseq's own HubertEncoder, trained with the `ctc` criterion and decoded by the
task's CTC generator (`fairseq-generate`). Added:

- which upstream output feeds the head: the last layer, layer k (`upstream_layer`, the upstream stops there), or
  SUPERB's learned softmax-weighted sum over all hidden states (`upstream_weighted_sum`: the encoder input and every
  layer's output);
- `freeze_upstream`: a pure front end (no gradient, always in eval mode, no masking), as a frozen S3PRL upstream;
  fairseq's `freeze_finetune_updates` still works for a fine-tuned one;
- the head: `head_layers` layers of `head_layer_type` (fairseq's Conformer or Transformer layer, or any Mamba layer type
  of this plugin) in a wav2vec2-style encoder of width `head_embed_dim`, after a linear projection from the upstream's
  width. Exact under padding like the upstream: a valid frame's log-probs do not depend on its batch.
"""

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert_asr import HubertCtc, HubertCtcConfig, HubertEncoder, Linear
from torch import nn

from mamba_hubert.models.encoder_config import EncoderConfig, layer_config_fields
from mamba_hubert.modules.encoder import MambaEncoder
from mamba_hubert.modules.layer_interface import per_frames
from mamba_hubert.modules.layer_types import layer_type_names

HEAD_LAYER_TYPES = ("none", *layer_type_names())
HEAD = "head_"


def with_head_layer_fields(cls: type) -> type:
    """Adds `head_<field>` for every field of the layer config (`MambaLayerConfig`), with its type, default and
    help, to a class that @dataclass then reads: a setting added there reaches the head with no copy here. The layer
    type also has `none` (no head), its default."""
    for layer_field in layer_config_fields():
        kind, default, help_text = layer_field.type, layer_field.default, layer_field.metadata["help"]
        if layer_field.name == "layer_type":
            kind, default = ChoiceEnum(HEAD_LAYER_TYPES), "none"
            help_text = "downstream encoder's layer type before the CTC projection; none: a linear head (hubert_ctc)"
        cls.__annotations__[HEAD + layer_field.name] = kind
        setattr(cls, HEAD + layer_field.name, field(default=default, metadata={"help": f"head: {help_text}"}))
    return cls


@dataclass
@with_head_layer_fields
class MambaHubertAsrConfig(HubertCtcConfig):
    autoregressive: bool = field(default=False, metadata={"help": "read by fairseq's HubertEncoder; CTC is not"})
    upstream_layer: int = field(
        default=0, metadata={"help": "feed the head the output of upstream layer k (1-based; the upstream stops "
                                     "there); 0: the last layer"})
    upstream_weighted_sum: bool = field(
        default=False, metadata={"help": "feed the head a learned softmax-weighted sum of the upstream's hidden "
                                         "states (encoder input and every layer's output), as SUPERB does"})
    freeze_upstream: bool = field(
        default=False, metadata={"help": "train only the head and the CTC projection; the upstream runs in eval "
                                         "mode without gradient or masking"})
    # the head's shape; its layer settings are the generated head_<layer config field>s
    head_layers: int = field(default=2, metadata={"help": "layers of the downstream encoder"})
    head_embed_dim: int = field(default=256, metadata={"help": "width of the downstream encoder"})
    head_ffn_embed_dim: int = field(default=1024, metadata={"help": "FFN width of the downstream layers"})
    head_attention_heads: int = field(default=4, metadata={"help": "attention heads (conformer, transformer)"})
    head_dropout: float = field(default=0.1, metadata={"help": "dropout inside the downstream encoder"})
    head_conv_pos: int = field(
        default=0, metadata={"help": "width of the downstream encoder's positional conv (attention layers need "
                                     "positions); 0: none"})
    head_conv_pos_groups: int = field(default=16, metadata={"help": "groups of that positional conv"})


def head_encoder_config(cfg: MambaHubertAsrConfig) -> EncoderConfig:
    """The downstream encoder's settings, in the field names `MambaEncoder` reads."""
    return EncoderConfig(
        **{f.name: getattr(cfg, HEAD + f.name) for f in layer_config_fields()},
        encoder_layers=cfg.head_layers, encoder_embed_dim=cfg.head_embed_dim,
        encoder_ffn_embed_dim=cfg.head_ffn_embed_dim, encoder_attention_heads=cfg.head_attention_heads,
        dropout=cfg.head_dropout, attention_dropout=cfg.head_dropout, activation_dropout=cfg.head_dropout,
        conv_pos=cfg.head_conv_pos, conv_pos_groups=cfg.head_conv_pos_groups)


class UpstreamHeadEncoder(HubertEncoder):
    """fairseq's HubertEncoder (loads and holds the pretrained model as `w2v_model`) with the upstream choices and
    the downstream encoder of `MambaHubertAsrConfig`."""

    def __init__(self, cfg: MambaHubertAsrConfig, task) -> None:
        super().__init__(cfg, task)
        upstream_layers = len(self.w2v_model.encoder.layers)
        if not 0 <= cfg.upstream_layer <= upstream_layers:
            raise ValueError(f"model.upstream_layer={cfg.upstream_layer}: the upstream ({cfg.w2v_path}) has "
                             f"{upstream_layers} layers (0 = the last)")
        if cfg.upstream_layer and cfg.upstream_weighted_sum:
            raise ValueError("model.upstream_layer and model.upstream_weighted_sum exclude each other")
        self.upstream_layer = cfg.upstream_layer or None
        self.layer_weights = nn.Parameter(torch.zeros(upstream_layers + 1)) if cfg.upstream_weighted_sum else None
        self.freeze_upstream = cfg.freeze_upstream
        if self.freeze_upstream:
            self.w2v_model.requires_grad_(False)  # the optimizer then never sees these parameters
            self.w2v_model.eval()
        width = cfg.w2v_args.model.encoder_embed_dim
        self.head_proj, self.head = None, None
        if cfg.head_layer_type != "none":
            self.head_proj = nn.Linear(width, cfg.head_embed_dim)
            self.head = MambaEncoder(head_encoder_config(cfg), name="head", field_prefix="model.head_")
            width = cfg.head_embed_dim
        self.proj = Linear(width, len(task.target_dictionary))

    def train(self, mode: bool = True) -> "UpstreamHeadEncoder":
        super().train(mode)
        if self.freeze_upstream:
            self.w2v_model.eval()  # no dropout, and the conv modules' batch-norm statistics stay as pretrained
        return self

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None, tbc: bool = True, **kwargs) -> dict:
        x, padding_mask = self.upstream_features(source, padding_mask)
        if self.head is not None:
            x, _ = self.head(self.head_proj(x), padding_mask=padding_mask)
        x = self.proj(self.final_dropout(x))
        return {
            "encoder_out": x.transpose(0, 1) if tbc else x,
            "encoder_padding_mask": padding_mask,
            "padding_mask": padding_mask,
        }

    def head_logits_long(self, upstream: torch.Tensor, chunk: int) -> torch.Tensor:
        """proj(head(head_proj(upstream))) in eval mode on a whole sequence (b, T, C), in chunks of frames where the
        head's layers can (`MambaEncoder.forward_long`)."""
        x = per_frames(self.head_proj, chunk, upstream)
        return per_frames(self.proj, chunk, self.head.forward_long(x, chunk))

    def upstream_features(
        self, source: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the head reads, (B, T, C), and the frame padding mask."""
        train_upstream = not self.freeze_upstream and self.freeze_finetune_updates <= self.num_updates
        mask = self.apply_mask and self.training and not self.freeze_upstream
        with contextlib.nullcontext() if train_upstream else torch.no_grad():
            if self.layer_weights is None:
                return self.w2v_model.extract_features(
                    source, padding_mask=padding_mask, mask=mask, output_layer=self.upstream_layer)
            states, padding_mask = self.upstream_hidden_states(source, padding_mask, mask)
        # outside no_grad: the weights learn even when the upstream is frozen
        return self.weighted_sum(states), padding_mask

    def weighted_sum(self, states: list[torch.Tensor]) -> torch.Tensor:
        """The softmax-weighted sum of the hidden states (each (..., C), all the same shape)."""
        weights = F.softmax(self.layer_weights, 0).to(states[0].dtype)
        return torch.einsum("l,l...->...", weights, torch.stack(states))

    def upstream_hidden_states(
        self, source: torch.Tensor, padding_mask: torch.Tensor | None, mask: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """[encoder input, output of layer 1, ..., final output], each (B, T, C), read by hooks on the upstream's
        layers. A layer that LayerDrop skipped passes its input on, so the first layer that ran saw the encoder input;
        when LayerDrop skipped them all, every state is the encoder's output."""
        layers = self.w2v_model.encoder.layers
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        hooks = [layer.register_forward_pre_hook(lambda module, args, i=i: inputs.__setitem__(i, args[0]))
                 for i, layer in enumerate(layers)]
        hooks += [layer.register_forward_hook(lambda module, args, out, i=i: outputs.__setitem__(i, out[0]))
                  for i, layer in enumerate(layers[:-1])]
        try:
            x, padding_mask = self.w2v_model.extract_features(source, padding_mask=padding_mask, mask=mask)
        finally:
            for hook in hooks:
                hook.remove()
        if not inputs:
            return [x] * (len(layers) + 1), padding_mask
        frames = x.shape[1]  # the encoder pads to a multiple of required_seq_len_multiple inside
        states = [inputs[min(inputs)].transpose(0, 1)[:, :frames]]
        for i in range(1, len(layers)):
            states.append(outputs[i - 1].transpose(0, 1)[:, :frames] if i - 1 in outputs else states[-1])
        return [*states, x], padding_mask


@register_model("mamba_hubert_asr", dataclass=MambaHubertAsrConfig)
class MambaHubertAsr(HubertCtc):
    @classmethod
    def build_model(cls, cfg: MambaHubertAsrConfig, task) -> "MambaHubertAsr":
        return cls(cfg, UpstreamHeadEncoder(cfg, task))
