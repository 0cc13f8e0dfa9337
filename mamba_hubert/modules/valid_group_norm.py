"""A GroupNorm over time that takes its statistics over each utterance's valid frames only.

fairseq's default feature extractor (`extractor_mode=default`, HuBERT Base's) normalises its first conv layer with
an Fp32GroupNorm over time. In a right-padded batch that norm's mean and variance include the padding, so an
utterance's features depend on what it was batched with. `ValidFramesGroupNorm` keeps Fp32GroupNorm's parameters
and arithmetic (float32, biased variance); the model sets `valid_frames` for the duration of a forward.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ValidFramesGroupNorm(nn.GroupNorm):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps, affine)
        self.valid_frames: torch.Tensor | None = None  # (batch,) valid frames per row; None: all frames are valid

    @classmethod
    def replacing(cls, norm: nn.GroupNorm) -> "ValidFramesGroupNorm":
        """A copy of `norm` (same settings and parameters)."""
        copy = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine).to(norm.weight.device)
        copy.load_state_dict(norm.state_dict())
        return copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.valid_frames is None:
            return self._fused(x)
        # Padded frames come out as zeros: a valid frame further on never sees them, since a later conv frame counts
        # as valid only when its whole window is. On CPU one fused norm per row is 2.5x faster than masked statistics;
        # elsewhere the per-row loop would sync the host for the lengths on every forward.
        return self._per_row(x) if x.device.type == "cpu" else self._masked(x)

    def _per_row(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        rows = [F.pad(self._fused(x[row : row + 1, :, :valid]), (0, frames - valid)) if valid > 0
                else torch.zeros_like(x[row : row + 1])
                for row, valid in enumerate(self.valid_frames.tolist())]
        return torch.cat(rows)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames = x.shape
        valid = torch.arange(frames, device=x.device) < self.valid_frames.unsqueeze(1)  # (b, T)
        grouped = x.float().view(batch, self.num_groups, channels // self.num_groups, frames)
        mask = valid.view(batch, 1, 1, frames).float()
        count = (mask.sum(-1, keepdim=True) * grouped.shape[2]).clamp(min=1)  # (b, 1, 1, 1)
        mean = (grouped * mask).sum((2, 3), keepdim=True) / count
        centred = (grouped - mean) * mask
        variance = centred.square().sum((2, 3), keepdim=True) / count  # biased, as GroupNorm
        out = (centred * torch.rsqrt(variance + self.eps)).view(batch, channels, frames)
        if self.affine:
            out = out * self.weight.float()[:, None] + self.bias.float()[:, None] * valid.unsqueeze(1)
        return out.type_as(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """Fp32GroupNorm's arithmetic: float32, biased variance."""
        weight = self.weight.float() if self.affine else None
        bias = self.bias.float() if self.affine else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)
