"""Collects, per utterance, the encoder input X (projected CNN features before masking) and every encoder
layer's output T_i, for a `mamba_hubert`, a fairseq `hubert` or a fine-tuned `hubert_ctc` model, with padded
frames trimmed by the exact conv arithmetic."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mamba_hubert.frames import conv_output_lengths


@dataclass
class LayerFrames:
    """`inputs[u]`: (frames, dim) X of utterance u; `layers[i][u]`: (frames, dim) output of layer i + 1."""

    inputs: list[np.ndarray]
    layers: list[list[np.ndarray]]


def pretrained_encoder_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HuBERT-style model inside `model` (itself, or a hubert_ctc's `w2v_encoder.w2v_model`)."""
    inner = getattr(getattr(model, "w2v_encoder", None), "w2v_model", None)
    return inner if inner is not None else model


def _unwrap(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def capture_layer_frames(model: torch.nn.Module, waves: Sequence[np.ndarray], batch_size: int = 8) -> LayerFrames:
    """Runs `waves` (1-D float arrays at the model's rate) through the model in right-padded batches."""
    encoder_model = pretrained_encoder_model(model).eval()
    input_module = encoder_model.post_extract_proj or encoder_model.layer_norm
    conv_layers = [(block[0].out_channels, block[0].kernel_size[0], block[0].stride[0])
                   for block in encoder_model.feature_extractor.conv_layers]
    captured: dict[str, torch.Tensor] = {}
    hooks = [input_module.register_forward_hook(lambda m, i, o: captured.__setitem__("x", _unwrap(o)))]
    for index, layer in enumerate(encoder_model.encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, index=index: captured.__setitem__(index, _unwrap(o).transpose(0, 1))))  # (B, T, C)
    frames = LayerFrames([], [[] for _ in encoder_model.encoder.layers])
    try:
        for start in range(0, len(waves), batch_size):
            batch = waves[start:start + batch_size]
            lengths = torch.tensor([len(w) for w in batch])
            source = torch.zeros(len(batch), int(lengths.max()))
            for row, wave in enumerate(batch):
                source[row, : len(wave)] = torch.as_tensor(wave, dtype=torch.float32)
            padding_mask = torch.arange(source.shape[1])[None, :] >= lengths[:, None]
            encoder_model.extract_features(source, padding_mask=padding_mask, mask=False)
            valid = conv_output_lengths(lengths, conv_layers).tolist()
            for row, count in enumerate(valid):
                frames.inputs.append(captured["x"][row, :count].float().numpy())
                for index in range(len(frames.layers)):
                    frames.layers[index].append(captured[index][row, :count].float().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return frames
