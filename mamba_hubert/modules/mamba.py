"""Mamba-1 block whose parameters mirror `mamba_ssm.modules.mamba_simple.Mamba`, with a padding mask."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mamba_hubert.ops import selective_scan_fn
from mamba_hubert.ops.selective_scan import fused_mamba_inner


def reset_projections_as_mamba_ssm(inputs: list[nn.Linear], out_proj: nn.Linear, residual_branches: int) -> None:
    """PyTorch's nn.Linear default for every projection, out_proj's weight then divided by sqrt(residual_branches);
    zero biases, as mamba-ssm's MixerModel leaves them (shared by the Mamba-1 and Mamba-2 blocks)."""
    for linear in (*inputs, out_proj):
        linear.reset_parameters()
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
    with torch.no_grad():
        out_proj.weight /= math.sqrt(residual_branches)


@dataclass
class MambaState:
    """Where a Mamba block's sequence stopped: what its next input continues from (mamba-ssm's inference cache, the
    conv part one frame shorter since the newest frame always comes with the input)."""

    conv: torch.Tensor  # (batch, conv channels, d_conv - 1) in the block's dtype: the last conv inputs, oldest first
    ssm: torch.Tensor  # float32, the scan's state after the last frame: Mamba (batch, d_inner, d_state), Mamba2
    # (batch, nheads, headdim, d_state)


def conv_silu(conv1d: nn.Conv1d, x: torch.Tensor, state: MambaState | None) -> torch.Tensor:
    """silu(causal depthwise conv) of x (b, channels, L): zero history without a state, else the state's conv tail,
    which is then advanced in place to x's last frames (the conv part shared by Mamba and Mamba2)."""
    if state is None:
        return F.silu(conv1d(x)[..., : x.shape[-1]])
    history = torch.cat([state.conv, x], dim=-1)
    state.conv.copy_(history[..., history.shape[-1] - state.conv.shape[-1] :])
    return F.silu(F.conv1d(history, conv1d.weight, conv1d.bias, groups=conv1d.groups))


def zero_padding(x: torch.Tensor, padding_mask: torch.Tensor | None, state: MambaState | None) -> torch.Tensor:
    """x with padded frames zeroed; a block continuing a state takes no padding (each row continues its own
    sequence, so only valid frames may be fed)."""
    if padding_mask is None:
        return x
    if state is not None:
        raise ValueError("a Mamba block with a state takes no padding_mask: each row continues its own sequence, "
                         "so feed only valid frames")
    return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


class Mamba(nn.Module):
    """Selective state space block (Gu & Dao 2023).

    Parameter names and shapes equal mamba-ssm's `Mamba` for the same arguments, so state dicts load
    either way. Input and output are (batch, length, d_model). A right-padded batch gives each valid
    frame the output it has alone: the conv and scan are causal and padded inputs are zeroed. Given a `MambaState`
    (`allocate_state`), the block continues the sequence that state ended and updates it in place.
    """

    causal = True  # reads its input front to back only: a state carried between chunks continues it exactly

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_impl = scan_impl

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        if dt_init not in ("constant", "random"):
            raise ValueError(f"dt_init must be 'constant' or 'random', got {dt_init!r}")
        self._dt_init = (dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    def reset_projections(self, residual_branches: int = 1) -> None:
        """mamba-ssm's initialisation of the projections, to undo a generic re-init (fairseq's init_bert_params gives
        every Linear N(0, 0.02)): in_proj and x_proj get PyTorch's nn.Linear default, out_proj the same divided by
        sqrt(residual_branches), the number of residual branches in the whole model, as mamba-ssm's MixerModel
        rescales it (GPT-2's scheme). Biases (only with bias=True) are zero, as MixerModel leaves them."""
        reset_projections_as_mamba_ssm([self.in_proj, *self._x_projections()], self.out_proj, residual_branches)

    def _x_projections(self) -> list[nn.Linear]:
        return [self.x_proj]

    def reset_ssm_parameters(self) -> None:
        """(Re)initialise dt_proj, A_log and D as mamba-ssm does; call it after a generic re-init
        (e.g. fairseq's init_bert_params) that would otherwise zero the dt bias."""
        for dt_proj, A_log, D in self._ssm_parameter_sets():
            self._init_ssm(dt_proj, A_log, D)

    def _ssm_parameter_sets(self) -> list[tuple[nn.Linear, nn.Parameter, nn.Parameter]]:
        return [(self.dt_proj, self.A_log, self.D)]

    def _init_ssm(self, dt_proj: nn.Linear, A_log: nn.Parameter, D: nn.Parameter) -> None:
        dt_init, dt_scale, dt_min, dt_max, dt_init_floor = self._dt_init
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                dt_proj.weight.fill_(std)
            else:
                dt_proj.weight.uniform_(-std, std)
            # dt log-uniform in [dt_min, dt_max]; the bias holds softplus^-1(dt) so softplus(bias) = dt at init.
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_init_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
            D.fill_(1.0)
        # Read by optimisers and initialisers that skip these, as mamba-ssm marks them.
        dt_proj.bias._no_reinit = True
        A_log._no_weight_decay = True
        D._no_weight_decay = True

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, state: MambaState | None = None
    ) -> torch.Tensor:
        """x: (batch, length, d_model); padding_mask: (batch, length) bool, True = padded (right padding).

        With `state`, x continues the sequence the state ended (its conv reads the carried tail instead of zero
        padding, its scan starts from the carried state) and the state is advanced in place to x's last frame."""
        x = zero_padding(x, padding_mask, state)
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2 d_inner, L): hidden, then gate
        # mamba_inner_fn has no initial state, so a stateful call runs the conv and scan separately
        fused = fused_mamba_inner(self.scan_impl, x.device) if state is None else None
        if fused is not None:
            out = self._fused_branch(fused, xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        else:
            y = self.scan_branch(*xz.chunk(2, dim=1), self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D,
                                 state)
            out = self.out_proj(y.transpose(1, 2))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        return out

    def scan_branch(
        self,
        hidden: torch.Tensor,
        gate: torch.Tensor,
        conv1d: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: nn.Parameter,
        D: nn.Parameter,
        state: MambaState | None = None,
    ) -> torch.Tensor:
        """Causal conv + selective scan of one direction (the block's parameters, or InnBiMamba's backward set):
        (b, d_inner, L) -> gated y (b, d_inner, L); continues from `state` and advances it in place, if given."""
        hidden = conv_silu(conv1d, hidden, state)
        dt, B, C = self._project(hidden.transpose(1, 2), x_proj, dt_proj)
        result = selective_scan_fn(
            hidden,
            dt,
            -torch.exp(A_log.float()),
            B,
            C,
            D.float(),
            z=gate,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=state is not None,
            initial_state=None if state is None else state.ssm,
            impl=self.scan_impl,
        )
        if state is None:
            return result
        y, last_state = result
        state.ssm.copy_(last_state)
        return y

    def _fused_branch(
        self,
        fused: Callable,
        xz: torch.Tensor,
        conv1d: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: nn.Parameter,
        D: nn.Parameter,
    ) -> torch.Tensor:
        """`scan_branch` and out_proj of one direction in mamba-ssm's fused block (`mamba_inner_fn`'s signature):
        xz (b, 2 d_inner, L) -> (b, L, d_model)."""
        return fused(xz, conv1d.weight, conv1d.bias, x_proj.weight, dt_proj.weight, self.out_proj.weight,
                     self.out_proj.bias, -torch.exp(A_log.float()), None, None, D.float(),
                     delta_bias=dt_proj.bias.float(), delta_softplus=True)

    def _project(
        self, hidden: torch.Tensor, x_proj: nn.Linear, dt_proj: nn.Linear
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden: (b, L, d_inner) -> dt (b, d_inner, L) without bias, B and C (b, d_state, L)."""
        dt, B, C = x_proj(hidden).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, dt_proj.weight)  # the bias is added (in float32) inside the scan
        return dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def allocate_state(self, batch_size: int) -> MambaState:
        """The state before a sequence's first frame: the offline conv's zero padding and a zero scan state."""
        weight = self.conv1d.weight
        return MambaState(weight.new_zeros(batch_size, self.d_inner, self.d_conv - 1),
                          weight.new_zeros(batch_size, self.d_inner, self.d_state, dtype=torch.float32))
