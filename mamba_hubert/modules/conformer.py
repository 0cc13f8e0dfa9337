"""fairseq's Conformer layer (the one wav2vec2's encoder builds for `layer_type=conformer`), exact under padding.

fairseq's convolution module runs its depthwise conv and batch norm over the whole padded batch, so a valid frame
near the end of a short utterance sees the padding through the conv, and every frame's normalisation depends on
its batch. Here padded frames are zeroed before the depthwise conv and left out of the batch statistics; the
parameters and their names are fairseq's, so checkpoints load either way.
"""

import torch
from fairseq.modules.conformer_layer import ConformerWav2Vec2EncoderLayer, ConvolutionModule

from mamba_hubert.modules.layer_interface import WholeSequenceLayer
from mamba_hubert.modules.layers import batch_norm_valid
from mamba_hubert.modules.side_channel import attribute_during


class _PaddingExactConvolution(ConvolutionModule):
    """fairseq's ConvolutionModule; the layer sets `padding_mask` (b, T) for the duration of its forward."""

    padding_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, T, C)."""
        x = self.glu(self.pointwise_conv1(self.layer_norm(x).transpose(1, 2)))  # (b, C, T)
        if self.padding_mask is not None:
            x = x.masked_fill(self.padding_mask.unsqueeze(1), 0.0)
        x = self.depthwise_conv(x).transpose(1, 2)
        x = self.activation(batch_norm_valid(self.batch_norm, x, self.padding_mask)).transpose(1, 2)
        return self.dropout(self.pointwise_conv2(x)).transpose(1, 2)


class PaddingExactConformerLayer(WholeSequenceLayer, ConformerWav2Vec2EncoderLayer):
    """Conformer block (macaron FFNs, self-attention, convolution module) as fairseq builds it, with a
    convolution module that keeps padded frames out."""

    def __init__(self, embed_dim: int, ffn_embed_dim: int, attention_heads: int, dropout: float,
                 depthwise_conv_kernel_size: int, attn_type: str = "", use_fp16: bool = False) -> None:
        super().__init__(embed_dim=embed_dim, ffn_embed_dim=ffn_embed_dim, attention_heads=attention_heads,
                         dropout=dropout, use_fp16=use_fp16, depthwise_conv_kernel_size=depthwise_conv_kernel_size,
                         activation_fn="swish", attn_type=attn_type, pos_enc_type="abs")
        self.conv_module = _PaddingExactConvolution(embed_dim, embed_dim, depthwise_conv_kernel_size, dropout,
                                                    activation_fn="swish")

    @classmethod
    def from_args(cls, args) -> "PaddingExactConformerLayer":
        return cls(args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads, args.dropout,
                   args.depthwise_conv_kernel_size, getattr(args, "attn_type", ""), getattr(args, "fp16", False))

    def forward(self, x: torch.Tensor, self_attn_mask: torch.Tensor | None = None,
                self_attn_padding_mask: torch.Tensor | None = None, **kwargs):
        with attribute_during([self.conv_module], "padding_mask", self_attn_padding_mask):
            return super().forward(x, self_attn_mask, self_attn_padding_mask, **kwargs)
