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
        frames = x.shape[-1]
        if self.valid_frames is None or bool((self.valid_frames >= frames).all()):
            return self._fused(x)
        # One fused norm per row over its valid frames (faster than one masked norm over the whole batch). Padded
        # frames come out as zeros: a valid frame further on never sees them, since a later conv frame counts as
        # valid only when its whole window is.
        rows = [F.pad(self._fused(x[row : row + 1, :, :valid]), (0, frames - valid)) if valid > 0
                else torch.zeros_like(x[row : row + 1])
                for row, valid in enumerate(self.valid_frames.tolist())]
        return torch.cat(rows)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """Fp32GroupNorm's arithmetic: float32, biased variance."""
        weight = self.weight.float() if self.affine else None
        bias = self.bias.float() if self.affine else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)
