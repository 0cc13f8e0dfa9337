"""`mamba_spectrum_reconstruction`: a Mamba (or any plugin layer type) encoder that rebuilds masked log-mel frames,
the "reconstruction" task the paper contrasts with ASR (SSAMBA-like masked spectrogram modelling, self-supervised).

Waveform -> log-mel (80 bins, 25 ms / 10 ms, `LogMelFilterbank`, in the model) -> normalised per utterance over its
valid frames -> `frames_per_token` frames stacked into one encoder step -> a linear projection (the local features
X of the MI analysis) -> masking -> encoder -> a linear prediction of the stacked frames. Masks: `time` (HuBERT's
spans of whole steps, replaced by a learned embedding) or `patch` (a grid of `mask_length` steps x `mask_bins` mel
bins; a masked patch's bins are zeroed in the input). Both are drawn from (seed, update, utterance ids) inside the
task's steps. The criterion scores the prediction on the masked bins of valid steps only.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data.data_utils import compute_mask_indices
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model
from torch import nn

from mamba_hubert.models.encoder_config import EncoderConfig
from mamba_hubert.models.seeded_masks import SeededMasking
from mamba_hubert.modules.encoder import MambaEncoder
from mamba_hubert.modules.fbank import LogMelFilterbank

MASK_TYPES = ("time", "patch")


@dataclass
class SpectrumReconstructionConfig(EncoderConfig):
    n_mels: int = field(default=80, metadata={"help": "mel bins of the log-mel input and target"})
    frames_per_token: int = field(
        default=2, metadata={"help": "log-mel frames (10 ms) stacked into one encoder step; 2: 50 Hz"})
    mask_type: ChoiceEnum(MASK_TYPES) = field(
        default="time", metadata={"help": "time: spans of whole steps; patch: steps x mel-bin patches on a grid"})
    mask_prob: float = field(
        default=0.4, metadata={"help": "time: share of steps that start a span (as HuBERT); patch: share of "
                                       "patches masked"})
    mask_length: int = field(default=5, metadata={"help": "steps per masked span (time) or per patch (patch)"})
    mask_bins: int = field(default=16, metadata={"help": "mel bins per patch (patch masks)"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the projected input"})


@register_model("mamba_spectrum_reconstruction", dataclass=SpectrumReconstructionConfig)
class SpectrumReconstructionModel(SeededMasking, BaseFairseqModel):
    def __init__(self, cfg: SpectrumReconstructionConfig) -> None:
        super().__init__()
        if cfg.mask_type == "patch" and cfg.n_mels % cfg.mask_bins:
            raise ValueError(f"model.mask_bins={cfg.mask_bins} must divide model.n_mels={cfg.n_mels}")
        self.cfg = cfg
        self.fbank = LogMelFilterbank(cfg.n_mels)
        step_dim = cfg.n_mels * cfg.frames_per_token
        self.input_proj = nn.Linear(step_dim, cfg.encoder_embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = MambaEncoder(cfg)
        self.prediction = nn.Linear(cfg.encoder_embed_dim, step_dim)

    @classmethod
    def build_model(cls, cfg: SpectrumReconstructionConfig, task) -> "SpectrumReconstructionModel":
        return cls(cfg)

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Encoder steps of utterances of `num_samples` samples."""
        return torch.div(self.fbank.output_lengths(num_samples), self.cfg.frames_per_token, rounding_mode="floor")

    def spectrogram(self, source: torch.Tensor, padding_mask: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(target (B, T, frames_per_token * n_mels): log-mel normalised per utterance and bin over its valid frames,
        zero on padded steps; step padding mask (B, T))."""
        k, n_mels = self.cfg.frames_per_token, self.cfg.n_mels
        mel = self.fbank(source)
        steps = mel.shape[1] // k
        mel = mel[:, : steps * k].reshape(len(mel), steps, k, n_mels)
        num_samples = torch.full((len(source),), source.shape[-1], device=source.device) if padding_mask is None \
            else (~padding_mask).sum(-1)
        step_padding = torch.arange(steps, device=source.device)[None, :] >= self.output_lengths(num_samples)[:, None]
        valid = (~step_padding)[..., None, None].to(mel.dtype)
        count = (valid.sum((1, 2)) * k).clamp_min(1.0)
        mean = (mel * valid).sum((1, 2), keepdim=True) / count[:, None, None]
        var = (((mel - mean) * valid) ** 2).sum((1, 2), keepdim=True) / count[:, None, None]
        target = ((mel - mean) / (var + 1e-5).sqrt()) * valid
        return target.reshape(len(mel), steps, k * n_mels), step_padding

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None, mask: bool = True,
                output_layer: int | None = None) -> dict[str, torch.Tensor]:
        """{"prediction", "target": (B, T, frames_per_token * n_mels), "loss_mask": the masked bins of valid steps,
        "padding_mask": (B, T), "x": the encoder output}."""
        target, step_padding = self.spectrogram(source, padding_mask)
        loss_mask = torch.zeros_like(target, dtype=torch.bool)
        inputs = target
        if mask and self.cfg.mask_type == "patch":
            loss_mask = self._patch_mask(step_padding)
            inputs = target.masked_fill(loss_mask, 0.0)
        x = self.dropout_input(self.input_proj(inputs))
        if mask and self.cfg.mask_type == "time":
            steps = self._time_mask(step_padding)
            x = torch.where(steps[..., None], self.mask_emb.to(x.dtype), x)
            loss_mask = steps[..., None].expand_as(target)
        x, _ = self.encoder(x, padding_mask=step_padding, layer=None if output_layer is None else output_layer - 1)
        return {"prediction": self.prediction(x), "target": target, "loss_mask": loss_mask & ~step_padding[..., None],
                "padding_mask": step_padding, "x": x}

    def extract_features(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None, mask: bool = False,
                         output_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder output (B, T, C), step padding mask), as HuBERT's extract_features."""
        out = self.forward(source, padding_mask, mask=mask, output_layer=output_layer)
        return out["x"], out["padding_mask"]

    def _row_keys(self, batch: int) -> tuple[int | None, torch.Tensor | None]:
        seed, ids = self.mask_key if self.mask_key is not None else (None, None)
        if ids is not None and len(ids) != batch:
            raise ValueError(f"seeded_draws was given {len(ids)} utterance ids for a batch of {batch}")
        return seed, ids

    def _time_mask(self, step_padding: torch.Tensor) -> torch.Tensor:
        seed, ids = self._row_keys(len(step_padding))
        spans = compute_mask_indices(
            tuple(step_padding.shape), step_padding, self.cfg.mask_prob, self.cfg.mask_length, min_masks=1,
            seed=seed, epoch=self.num_updates, indices=ids)
        return torch.from_numpy(spans).to(step_padding.device)

    def _patch_mask(self, step_padding: torch.Tensor) -> torch.Tensor:
        """(B, T, frames_per_token * n_mels): each patch of the grid masked with probability mask_prob."""
        batch, steps = step_padding.shape
        seed, ids = self._row_keys(batch)
        rows, bands = -(-steps // self.cfg.mask_length), self.cfg.n_mels // self.cfg.mask_bins
        grids = []
        for row in range(batch):
            rng = np.random.default_rng(None if seed is None else [seed, self.num_updates, int(ids[row])])
            grids.append(rng.random((rows, bands)) < self.cfg.mask_prob)
        grid = torch.from_numpy(np.stack(grids)).to(step_padding.device)
        bins = grid.repeat_interleave(self.cfg.mask_length, 1)[:, :steps].repeat_interleave(self.cfg.mask_bins, 2)
        return bins.repeat(1, 1, self.cfg.frames_per_token)


def reconstruction_baselines(target: torch.Tensor, loss_mask: torch.Tensor, padding_mask: torch.Tensor
                             ) -> dict[str, torch.Tensor]:
    """Predictions of the masked bins that need no training, from each utterance's visible bins only:
    "mean": the mean of the bin over the utterance's unmasked valid steps; "nearest": the bin's value at the
    nearest unmasked valid step (the earlier one on a tie). Shapes as `target` (B, T, D)."""
    known = ~loss_mask & ~padding_mask[..., None]
    weight = known.to(target.dtype)
    mean = (target * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1.0)
    steps = target.shape[1]
    position = torch.arange(steps, device=target.device)[None, :, None].expand_as(target)
    before = torch.where(known, position, -1).cummax(1).values
    after = torch.where(known, position, steps).flip(1).cummin(1).values.flip(1)
    use_after = (after < steps) & ((before < 0) | (after - position < position - before))
    nearest_step = torch.where(use_after, after, before)
    nearest = torch.where(nearest_step >= 0, target.gather(1, nearest_step.clamp_min(0)), mean.expand_as(target))
    return {"mean": mean.expand_as(target), "nearest": nearest}
