"""Bidirectional Mamba mixers whose backward direction reverses each sequence within its own length."""

import copy

import torch
from torch import nn

from mamba_hubert.modules.layer_interface import causal_over_chunks, per_frames
from mamba_hubert.modules.mamba import Mamba, MambaState
from mamba_hubert.ops.selective_scan import fused_mamba_inner

BIMAMBA_FUSIONS = ("concat", "sum")


def check_right_padded(padding_mask: torch.Tensor) -> None:
    """Raise ValueError unless every row of `padding_mask` (batch, length) is True only after its last valid frame.
    It reads the mask on the host, so the encoder calls it once per forward, not every mixer on every layer."""
    lengths = (~padding_mask).sum(1, keepdim=True)
    positions = torch.arange(padding_mask.shape[1], device=padding_mask.device).unsqueeze(0)
    if not torch.equal(padding_mask, positions >= lengths):
        raise ValueError("padding_mask must be right-padded (True only after each sequence's last valid frame)")


def reverse_padded(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Reverse (batch, length, ...) in time, each sequence within its valid prefix; padding stays at the end.
    `padding_mask` must be right-padded (`check_right_padded`).

    Flipping the whole padded tensor would put the padding first and let it enter the backward scan.
    The operation is its own inverse.
    """
    if padding_mask is None:
        return x.flip(1)
    length = x.shape[1]
    lengths = (~padding_mask).sum(1, keepdim=True)  # (b, 1)
    positions = torch.arange(length, device=x.device).unsqueeze(0)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def refuse_state(mixer: nn.Module, state: MambaState | None) -> None:
    """A bidirectional mixer reads its whole input back to front, so there is no state to continue from."""
    if state is not None:
        raise ValueError(f"{type(mixer).__name__} is bidirectional: it runs on whole sequences and takes no state "
                         f"(its forward_long runs each direction chunk by chunk)")


class ExtBiMamba(nn.Module):
    """Two independent Mamba blocks (`block`: Mamba, or Mamba2 for `ext_bimamba2`), one reading the sequence
    backwards, fused by `concat` (a Linear over [forward; backward], Zhang et al.) or `sum` (Lin et al.)."""

    causal = False

    def __init__(self, d_model: int, fusion: str = "concat", block: type[nn.Module] = Mamba, **mamba_kwargs) -> None:
        super().__init__()
        if fusion not in BIMAMBA_FUSIONS:
            raise ValueError(f"bimamba_fusion must be one of {BIMAMBA_FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        self.forward_mamba = block(d_model, **mamba_kwargs)
        self.backward_mamba = block(d_model, **mamba_kwargs)
        self.fuse = nn.Linear(2 * d_model, d_model) if fusion == "concat" else None

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: MambaState | None = None
    ) -> torch.Tensor:
        refuse_state(self, state)
        forward_out = self.forward_mamba(x, padding_mask)
        backward_out = reverse_padded(self.backward_mamba(reverse_padded(x, padding_mask), padding_mask), padding_mask)
        if self.fuse is None:
            return forward_out + backward_out
        out = self.fuse(torch.cat([forward_out, backward_out], dim=-1))
        return out if padding_mask is None else out.masked_fill(padding_mask.unsqueeze(-1), 0.0)

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """`forward(x)` of a whole unpadded sequence (b, T, d) with one chunk's working set: each block over the
        chunks with its state carried, the backward one back to front over time-reversed chunks."""
        forward = causal_over_chunks(self.forward_mamba, x, chunk)
        backward = causal_over_chunks(self.backward_mamba, x, chunk, reverse=True)
        if self.fuse is None:
            return forward + backward
        return per_frames(lambda f, b: self.fuse(torch.cat([f, b], dim=-1)), chunk, forward, backward)


class InnBiMamba(Mamba):
    """Internal bidirectional Mamba ("Mamba in Speech", Vision Mamba v2): in_proj and out_proj are shared,
    the backward direction has its own conv1d, x_proj, dt_proj, A_log and D; the two gated outputs are
    averaged before out_proj."""

    causal = False

    def __init__(self, d_model: int, **mamba_kwargs) -> None:
        super().__init__(d_model, **mamba_kwargs)
        self.conv1d_b = copy.deepcopy(self.conv1d)
        self.x_proj_b = copy.deepcopy(self.x_proj)
        self.dt_proj_b = copy.deepcopy(self.dt_proj)
        self.A_b_log = nn.Parameter(torch.empty_like(self.A_log))
        self.D_b = nn.Parameter(torch.empty_like(self.D))
        nn.init.kaiming_uniform_(self.x_proj_b.weight, a=5**0.5)  # independent of the forward copy
        self.conv1d_b.reset_parameters()
        self.reset_ssm_parameters()

    def _ssm_parameter_sets(self) -> list[tuple[nn.Linear, nn.Parameter, nn.Parameter]]:
        sets = super()._ssm_parameter_sets()
        if hasattr(self, "D_b"):  # Mamba.__init__ resets before the backward set exists
            sets.append((self.dt_proj_b, self.A_b_log, self.D_b))
        return sets

    def _x_projections(self) -> list[nn.Linear]:
        return [*super()._x_projections(), self.x_proj_b]

    def direction_parameters(self, backward: bool) -> tuple[nn.Module, ...]:
        """The conv1d, x_proj, dt_proj, A_log and D of one direction, in `scan_branch`'s argument order."""
        if backward:
            return self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
        return self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: MambaState | None = None
    ) -> torch.Tensor:
        refuse_state(self, state)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2 d_inner, L): hidden, then gate

        def reverse(t: torch.Tensor) -> torch.Tensor:  # (b, channels, L) reversed per sequence
            return reverse_padded(t.transpose(1, 2), padding_mask).transpose(1, 2)

        forward_set, backward_set = self.direction_parameters(False), self.direction_parameters(True)
        fused = fused_mamba_inner(self.scan_impl, x.device)
        if fused is not None:  # out_proj is affine, so averaging after it equals averaging before it
            out_forward = self._fused_branch(fused, xz, *forward_set)
            out_backward = reverse_padded(self._fused_branch(fused, reverse(xz), *backward_set), padding_mask)
            out = (out_forward + out_backward) / 2
        else:
            hidden, gate = xz.chunk(2, dim=1)
            y_forward = self.scan_branch(hidden, gate, *forward_set)
            y_backward = self.scan_branch(reverse(hidden), reverse(gate), *backward_set)
            out = self.out_proj(((y_forward + reverse(y_backward)) / 2).transpose(1, 2))
        return out if padding_mask is None else out.masked_fill(padding_mask.unsqueeze(-1), 0.0)

    def forward_long(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """`forward(x)` of a whole unpadded sequence (b, T, d) with one chunk's working set: the forward branch front
        to back, then the backward branch back to front, averaged and projected per chunk."""
        batch, length, _ = x.shape
        starts = range(0, length, chunk)
        forward_y = x.new_empty(batch, self.d_inner, length)
        state = self.allocate_state(batch)
        for start in starts:
            hidden, gate = self.in_proj(x[:, start : start + chunk]).transpose(1, 2).chunk(2, dim=1)
            forward_y[..., start : start + chunk] = self.scan_branch(hidden, gate, *self.direction_parameters(False),
                                                                     state)
        out = torch.empty_like(x)
        state = self.allocate_state(batch)
        for start in reversed(starts):
            hidden, gate = self.in_proj(x[:, start : start + chunk].flip(1)).transpose(1, 2).chunk(2, dim=1)
            backward_y = self.scan_branch(hidden, gate, *self.direction_parameters(True), state)
            y = (forward_y[..., start : start + chunk] + backward_y.flip(-1)) / 2
            out[:, start : start + chunk] = self.out_proj(y.transpose(1, 2))
        return out
