"""Mamba-2 block whose parameters mirror `mamba_ssm.modules.mamba2.Mamba2`, with a padding mask."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mamba_hubert.modules.mamba import MambaState, conv_silu, reset_projections_as_mamba_ssm, zero_padding
from mamba_hubert.ops.ssd import ssd_scan_fn


class GatedRMSNorm(nn.Module):
    """mamba-ssm's gated RMSNorm (`RMSNormGated`): RMS-normalise x * silu(z) over groups of `group_size` channels
    (z gates before the norm, mamba-ssm's `norm_before_gate=False`), or x alone then gate; computed in float32."""

    def __init__(self, size: int, group_size: int, norm_before_gate: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x, gate = x.float(), F.silu(z.float())
        if not self.norm_before_gate:
            x = x * gate
        groups = x.unflatten(-1, (-1, self.group_size))
        x = (groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)).flatten(-2) * self.weight.float()
        if self.norm_before_gate:
            x = x * gate
        return x.to(dtype)


class Mamba2(nn.Module):
    """Mamba-2 block (Dao & Gu 2024): in_proj -> [z, x, B, C, dt]; causal depthwise conv over [x, B, C]; the SSD scan
    with one scalar decay per head; gated RMSNorm; out_proj.

    Parameter names and shapes equal mamba-ssm's `Mamba2` for the same arguments (without its d_ssm split and tensor
    parallelism), so state dicts load either way. Input and output are (batch, length, d_model). A right-padded batch
    gives each valid frame the output it has alone: the conv and scan are causal and padded inputs are zeroed.
    """

    causal = True  # reads its input front to back only: a state carried between chunks continues it exactly

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        scan_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        if self.d_inner != expand * d_model or self.d_inner % headdim or self.d_inner % ngroups:
            raise ValueError(f"expand * d_model = {expand * d_model} must be an integer that headdim ({headdim}) and "
                             f"ngroups ({ngroups}) divide")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"ngroups ({ngroups}) must divide the number of heads ({self.nheads})")
        self.ngroups = ngroups
        self.D_has_hdim = D_has_hdim
        self.chunk_size = chunk_size
        self.scan_impl = scan_impl
        conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=bias)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.d_inner if D_has_hdim else self.nheads))
        self._init_ranges = (A_init_range, dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()  # before out_proj: random draws in mamba-ssm's order, so a seed gives its values
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // ngroups, norm_before_gate) if rmsnorm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def reset_projections(self, residual_branches: int = 1) -> None:
        """mamba-ssm's initialisation of in_proj and out_proj (see `Mamba.reset_projections`)."""
        reset_projections_as_mamba_ssm([self.in_proj], self.out_proj, residual_branches)

    def reset_ssm_parameters(self) -> None:
        """(Re)initialise dt_bias, A_log and D as mamba-ssm's Mamba2 does."""
        (a_low, a_high), dt_min, dt_max, dt_init_floor = self._init_ranges
        with torch.no_grad():
            # dt log-uniform in [dt_min, dt_max]; the bias holds softplus^-1(dt) so softplus(bias) = dt at init.
            dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log.copy_(torch.empty(self.nheads).uniform_(a_low, a_high).log())
            self.D.fill_(1.0)
        # Read by the optimiser patch, as mamba-ssm marks them.
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: MambaState | None = None
    ) -> torch.Tensor:
        """x: (batch, length, d_model); padding_mask: (batch, length) bool, True = padded (right padding).

        With `state` (`allocate_state`), x continues the sequence the state ended and the state is advanced in place
        to x's last frame, as `Mamba.forward`."""
        x = zero_padding(x, padding_mask, state)
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv1d.in_channels, self.nheads], dim=-1)
        xBC = conv_silu(self.conv1d, xBC.transpose(1, 2), state).transpose(1, 2)
        hidden, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        result = ssd_scan_fn(
            hidden.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            -torch.exp(self.A_log.float()),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size,
            D=self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D,
            z=None if self.norm is not None else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=None if state is None else state.ssm,
            return_final_states=state is not None,
            impl=self.scan_impl,
        )
        if state is not None:
            result, final_state = result
            state.ssm.copy_(final_state)
        y = result.flatten(-2)
        out = self.out_proj(y if self.norm is None else self.norm(y, z))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return out

    def allocate_state(self, batch_size: int) -> MambaState:
        """The state before a sequence's first frame: the offline conv's zero padding and a zero SSD state."""
        weight = self.conv1d.weight
        return MambaState(weight.new_zeros(batch_size, self.conv1d.in_channels, self.d_conv - 1),
                          weight.new_zeros(batch_size, self.nheads, self.headdim, self.d_state, dtype=torch.float32))
