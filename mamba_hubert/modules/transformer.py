"""Layer type `transformer`: fairseq's own HuBERT layer (TransformerSentenceEncoderLayer, the parameters and names
fairseq's wav2vec2 encoder builds), with the inference interface of `layer_interface`."""

from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer

from mamba_hubert.modules.layer_interface import WholeSequenceLayer


class TransformerLayer(WholeSequenceLayer, TransformerSentenceEncoderLayer):
    @classmethod
    def from_args(cls, args) -> "TransformerLayer":
        """As fairseq's `TransformerEncoder.build_encoder_layer` builds `layer_type=transformer`."""
        return cls(embedding_dim=args.encoder_embed_dim, ffn_embedding_dim=args.encoder_ffn_embed_dim,
                   num_attention_heads=args.encoder_attention_heads, dropout=args.dropout,
                   attention_dropout=args.attention_dropout, activation_dropout=args.activation_dropout,
                   activation_fn=args.activation_fn, layer_norm_first=args.layer_norm_first)
