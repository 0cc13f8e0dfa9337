"""Inference beyond fairseq's batch forward: streaming features from a causal model chunk by chunk
(`streaming.StreamingEncoder`) and features of recordings of any length in bounded memory
(`long_form.extract_features_long`), both built on the blocks' conv and SSM state."""
