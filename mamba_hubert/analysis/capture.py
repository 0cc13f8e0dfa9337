"""Collects, per utterance, the encoder input X (the local features before masking) and every layer's output T_i, with
padded frames trimmed by the exact frame arithmetic, for each kind of model the analysis reads:

- `mamba_hubert`, fairseq `hubert`, and `hubert_ctc` (its pretrained model): X = the projected CNN features, then
  the encoder layers;
- `mamba_hubert_asr`: the upstream's X, then the upstream layers that feed the head (up to `upstream_layer`), then the
  head's layers: one depth axis through the whole stack, each layer tagged with its stage;
- `mamba_spectrum_reconstruction`: X = the projected log-mel steps, then the encoder layers.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mamba_hubert.frames import conv_output_lengths
from mamba_hubert.models.mamba_hubert import MambaHubertModel
from mamba_hubert.models.mamba_hubert_asr import UpstreamHeadEncoder
from mamba_hubert.models.spectrum_reconstruction import SpectrumReconstructionModel


@dataclass
class LayerFrames:
    """`inputs[u]`: (frames, dim) X of utterance u; `layers[i][u]`: (frames, dim) output of layer i + 1 on the depth
    axis; `stages[i]`: which part of the model that layer belongs to ("encoder", "upstream" or "head")."""

    inputs: list[np.ndarray]
    layers: list[list[np.ndarray]]
    stages: list[str]


@dataclass
class _Taps:
    """Where a model's X and layer outputs are read, how many valid frames a waveform gives, and how to run it."""

    input_module: torch.nn.Module
    layers: list[tuple[str, torch.nn.Module]]
    frame_lengths: Callable[[torch.Tensor], torch.Tensor]
    run: Callable[[torch.Tensor, torch.Tensor], object]


def pretrained_encoder_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HuBERT-style model inside `model` (itself, or a fine-tuned model's `w2v_encoder.w2v_model`)."""
    inner = getattr(getattr(model, "w2v_encoder", None), "w2v_model", None)
    return inner if inner is not None else model


def _hubert_frame_lengths(hubert: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(hubert, MambaHubertModel):  # its own arithmetic: any extractor mode, fbank's included
        return hubert.frame_lengths
    conv_layers = [(block[0].out_channels, block[0].kernel_size[0], block[0].stride[0])
                   for block in hubert.feature_extractor.conv_layers]
    return lambda num_samples: conv_output_lengths(num_samples, conv_layers)


def _taps(model: torch.nn.Module) -> _Taps:
    if isinstance(model, SpectrumReconstructionModel):
        return _Taps(model.input_proj, [("encoder", layer) for layer in model.encoder.layers], model.output_lengths,
                     lambda source, padding: model.extract_features(source, padding))
    hubert = pretrained_encoder_model(model)
    input_module = hubert.post_extract_proj or hubert.layer_norm
    encoder = getattr(model, "w2v_encoder", None)
    if isinstance(encoder, UpstreamHeadEncoder):
        upstream = list(hubert.encoder.layers)[: encoder.upstream_layer]  # the layers that feed the head
        head = list(encoder.head.layers) if encoder.head is not None else []
        return _Taps(input_module, [("upstream", layer) for layer in upstream] + [("head", layer) for layer in head],
                     _hubert_frame_lengths(hubert), lambda source, padding: encoder(source, padding))
    return _Taps(input_module, [("encoder", layer) for layer in hubert.encoder.layers], _hubert_frame_lengths(hubert),
                 lambda source, padding: hubert.extract_features(source, padding_mask=padding, mask=False))


def _unwrap(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def capture_layer_frames(model: torch.nn.Module, waves: Sequence[np.ndarray], batch_size: int = 8) -> LayerFrames:
    """Runs `waves` (1-D float arrays at the model's rate) through the model in right-padded batches, in eval mode, on
    the model's device and in its dtype; frames come back as float32 arrays."""
    model.eval()
    taps = _taps(model)
    parameter = next(model.parameters())
    captured: dict[object, torch.Tensor] = {}
    hooks = [taps.input_module.register_forward_hook(lambda m, i, o: captured.__setitem__("x", _unwrap(o)))]
    for index, (_, layer) in enumerate(taps.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, index=index: captured.__setitem__(index, _unwrap(o).transpose(0, 1))))  # (B, T, C)
    frames = LayerFrames([], [[] for _ in taps.layers], [stage for stage, _ in taps.layers])
    try:
        for start in range(0, len(waves), batch_size):
            batch = waves[start:start + batch_size]
            lengths = torch.tensor([len(w) for w in batch])
            source = torch.zeros(len(batch), int(lengths.max()))
            for row, wave in enumerate(batch):
                source[row, : len(wave)] = torch.as_tensor(wave, dtype=torch.float32)
            padding_mask = torch.arange(source.shape[1])[None, :] >= lengths[:, None]
            captured.clear()
            taps.run(source.to(parameter.device, parameter.dtype), padding_mask.to(parameter.device))
            valid = taps.frame_lengths(lengths).tolist()
            for row, count in enumerate(valid):
                frames.inputs.append(captured["x"][row, :count].float().cpu().numpy())
                for index in range(len(frames.layers)):
                    frames.layers[index].append(captured[index][row, :count].float().cpu().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return frames
