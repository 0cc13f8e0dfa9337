"""Config fields of the plugin's encoders, shared by every model that builds one (fairseq reads these dataclasses to
make command-line flags and hydra config groups)."""

from dataclasses import Field, dataclass, field, fields

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from mamba_hubert.modules.bimamba import BIMAMBA_FUSIONS
from mamba_hubert.modules.encoder import MAMBA_INITS
from mamba_hubert.modules.layer_types import layer_type_names
from mamba_hubert.ops import SCAN_IMPLS


@dataclass
class MambaLayerConfig(FairseqDataclass):
    """What one layer is: its type (the registry's names) and every setting of the layer types. mamba_hubert_asr's
    head has each field again as `head_<field>`, generated from this class (`layer_config_fields`)."""

    layer_type: ChoiceEnum(layer_type_names()) = field(
        default="conbimamba", metadata={"help": "encoder layer type; `transformer` is fairseq's HuBERT layer, "
                                                "`conformer` fairseq's Conformer layer (exact under padding)"}
    )
    mamba_d_state: int = field(default=16, metadata={"help": "SSM state size N"})
    mamba_d_conv: int = field(default=4, metadata={"help": "Mamba's causal depthwise conv width"})
    mamba_expand: float = field(default=2, metadata={"help": "d_inner = mamba_expand * encoder_embed_dim"})
    mamba_headdim: int = field(default=64, metadata={"help": "mamba2/ext_bimamba2: channels per SSD head"})
    mamba_ngroups: int = field(default=1, metadata={"help": "mamba2/ext_bimamba2: groups of heads sharing B and C"})
    mamba_chunk_size: int = field(default=256, metadata={"help": "mamba2/ext_bimamba2: chunk length of the SSD scan"})
    bimamba_fusion: ChoiceEnum(BIMAMBA_FUSIONS) = field(
        default="concat", metadata={"help": "ext_bimamba/conbimamba: concat + Linear (Zhang) or sum (Lin)"}
    )
    scan_impl: ChoiceEnum(SCAN_IMPLS) = field(
        default="auto", metadata={"help": "selective scan backend: auto | cuda (mamba-ssm) | cpu (fused) | reference"}
    )
    mamba_init: ChoiceEnum(MAMBA_INITS) = field(
        default="mamba_ssm", metadata={"help": "init of the Mamba blocks' in_proj, x_proj, out_proj: mamba_ssm "
                                               "(PyTorch's Linear default, out_proj divided by sqrt(residual branches "
                                               "per layer x layers), as mamba-ssm) or bert (fairseq's N(0, 0.02)); "
                                               "dt_proj, A_log and D are mamba-ssm's either way"}
    )
    depthwise_conv_kernel_size: int = field(default=31, metadata={"help": "conv module kernel (conformer, conbimamba)"})


def layer_config_fields() -> list[Field]:
    """The fields of `MambaLayerConfig` (without FairseqDataclass's `_name`)."""
    return [f for f in fields(MambaLayerConfig) if not f.name.startswith("_")]


@dataclass
class EncoderConfig(MambaLayerConfig):
    """A wav2vec2-style encoder (positional conv, layer norm, layers) for models that are not HuBERT: the fields
    `MambaEncoder` reads, with HuBERT Base's defaults."""

    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "encoder width"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "FFN width (0: no FFN where optional)"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads (transformer, conformer)"})
    activation_fn: str = field(default="gelu", metadata={"help": "FFN activation of transformer/mamba layers"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the encoder"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout of attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.0, metadata={"help": "probability of dropping a layer"})
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN layers (and a final layer norm)"})
    conv_pos: int = field(default=128, metadata={"help": "positional conv width; 0: none (no look-ahead)"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the positional conv"})
    required_seq_len_multiple: int = field(default=1, metadata={"help": "pad sequences to a multiple of this"})
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute each layer's activations in the backward instead of keeping them"})
