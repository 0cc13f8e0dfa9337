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
        weight = self.weight.float() if self.affine else None
        bias = self.bias.float() if self.affine else None
        if self.valid_frames is None:
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)
        batch, channels, frames = x.shape
        lengths = self.valid_frames.to(x.device)
        grouped = x.float().view(batch, self.num_groups, -1, frames)
        valid = (torch.arange(frames, device=x.device) < lengths.unsqueeze(1)).view(batch, 1, 1, frames)
        count = (lengths * (channels // self.num_groups)).clamp(min=1).view(batch, 1, 1, 1)
        mean = (grouped * valid).sum((2, 3), keepdim=True) / count
        var = ((grouped - mean).square() * valid).sum((2, 3), keepdim=True) / count
        normed = ((grouped - mean) * torch.rsqrt(var + self.eps)).view(batch, channels, frames)
        if self.affine:
            normed = normed * weight.view(1, -1, 1) + bias.view(1, -1, 1)
        return normed.type_as(x)
