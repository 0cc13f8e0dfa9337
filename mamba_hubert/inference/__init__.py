"""Inference beyond fairseq's batch forward: streaming features from a causal model chunk by chunk
(`streaming.StreamingEncoder`) and features of recordings of any length in bounded memory
(`long_form.extract_features_long`), both drivers over the layers' interface (`initial_state`, `forward_chunk`,
`forward_long`); the CTC decoders (`ctc_decoding`) and `mamba-hubert-transcribe` on top."""
