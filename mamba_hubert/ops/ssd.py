"""The Mamba-2 scan (SSD, Dao & Gu 2024) with mamba-ssm's `mamba_chunk_scan_combined` signature.

x, z: (batch, L, nheads, headdim); dt: (batch, L, nheads); A, dt_bias: (nheads,); B, C: (batch, L, ngroups, d_state);
D: (nheads,) or (nheads, headdim); initial_states and the final state: (batch, nheads, headdim, d_state). Per head
the state h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T and y_t = h_t C_t + D x_t (times silu(z_t) when z is given).
Backends: mamba-ssm's Triton kernel for CUDA tensors, the chunked PyTorch form (the SSD algorithm), or the
sequential recurrence (one step at a time; the ground truth of the tests).
"""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mamba_hubert.ops.selective_scan import INSTALL_CUDA, SCAN_IMPLS

SsdOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# The device types whose tensors go to mamba-ssm's Triton kernel: CUDA. The tests add "cpu" while Triton's
# interpreter runs the kernel on CPU tensors (tests/triton_interpreter.py).
TRITON_DEVICE_TYPES = frozenset({"cuda"})


@functools.cache
def _mamba_ssm_chunk_scan() -> Callable | None:
    """mamba-ssm's Triton `mamba_chunk_scan_combined`, or None where it does not import; tried once per process."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def _prepare(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    dt_bias: torch.Tensor | None, dt_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """Checks shapes; returns x, dt (bias and softplus applied), A, and B, C repeated per head, in the compute dtype
    (float32, or float64 for float64 inputs), and that dtype."""
    batch, length, nheads, _ = x.shape
    ngroups = B.shape[2]
    if dt.shape != (batch, length, nheads) or A.shape != (nheads,):
        raise ValueError(f"dt must be (batch, L, nheads) and A (nheads,); got {tuple(dt.shape)}, {tuple(A.shape)}")
    if B.shape != C.shape or B.shape[:2] != (batch, length) or nheads % ngroups:
        raise ValueError(f"B and C must be (batch, L, ngroups dividing nheads={nheads}, d_state); got "
                         f"{tuple(B.shape)}, {tuple(C.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    heads_per_group = nheads // ngroups  # head h reads group h // heads_per_group, as mamba-ssm's layout
    B, C = (t.to(dtype).repeat_interleave(heads_per_group, dim=2) for t in (B, C))
    return x.to(dtype), dt, A.to(dtype), B, C, dtype


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
            out_dtype: torch.dtype) -> torch.Tensor:
    """y + D x, gated by silu(z), in the input's dtype."""
    if D is not None:
        y = y + x * (D.to(y.dtype) if D.dim() == 2 else D.to(y.dtype)[:, None])
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def ssd_scan_reference(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
    z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False, return_final_states: bool = False,
) -> SsdOutput:
    """The recurrence one time step at a time: slow, and the definition the chunked form is tested against."""
    xs, dt, A, B, C, dtype = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    batch, length, nheads, headdim = x.shape
    state = xs.new_zeros(batch, nheads, headdim, B.shape[-1]) if initial_states is None else initial_states.to(dtype)
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, h, 1, 1)
        state = decay * state + (dt[:, t, :, None] * xs[:, t]).unsqueeze(-1) * B[:, t].unsqueeze(-2)
        outputs.append((state * C[:, t].unsqueeze(-2)).sum(-1))
    y = _finish(torch.stack(outputs, dim=1), xs, D, z, x.dtype)
    return (y, state) if return_final_states else y


def ssd_scan_chunked(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None, dt_softplus: bool = False, return_final_states: bool = False,
) -> SsdOutput:
    """The SSD algorithm: within each chunk of `chunk_size` steps the output is a masked (attention-like) quadratic
    form, across chunks a recurrence on the state at chunk boundaries; O(L chunk_size) work, parallel in time."""
    xs, dt, A, B, C, dtype = _prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    batch, length, nheads, headdim = x.shape
    chunk_size = max(1, min(chunk_size, length))  # a shorter input (a streamed chunk) would be padded for nothing
    chunks = -(-length // chunk_size)
    pad = chunks * chunk_size - length
    # Zero dt on the padded tail: decay 1 and no input, so the final state is the state after the last real step.
    xs, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, B, C))
    dt = F.pad(dt, (0, 0, 0, pad))

    def chunked(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, chunks, chunk_size, *t.shape[2:])

    xs, B, C, dt = chunked(xs), chunked(B), chunked(C), chunked(dt)  # (b, c, q, h, ...)
    log_decay = torch.cumsum(dt * A, dim=2)  # (b, c, q, h): log of the decay from the chunk's start to step q
    drive = dt.unsqueeze(-1) * xs  # (b, c, q, h, p)

    # Within a chunk: y_l = sum_{s <= l} exp(log_decay_l - log_decay_s) (C_l . B_s) dt_s x_s.
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    segment = log_decay.unsqueeze(3) - log_decay.unsqueeze(2)  # (b, c, l, s, h)
    # Masked before exp: above the diagonal the difference is positive and could overflow.
    weights = torch.exp(segment.masked_fill(~causal[:, :, None], float("-inf")))
    scores = torch.einsum("bclhn,bcshn->bclsh", C, B) * weights
    y = torch.einsum("bclsh,bcshp->bclhp", scores, drive)

    # Each chunk's own contribution to the state at its end, then the recurrence across chunk boundaries.
    to_end = torch.exp(log_decay[:, :, -1:] - log_decay)  # (b, c, q, h)
    chunk_states = torch.einsum("bcqh,bcqhp,bcqhn->bchpn", to_end, drive, B)
    chunk_decay = torch.exp(log_decay[:, :, -1])  # (b, c, h)
    state = xs.new_zeros(batch, nheads, headdim, B.shape[-1]) if initial_states is None else initial_states.to(dtype)
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = chunk_decay[:, c, :, None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n): the state before each chunk's first step
    y = y + torch.einsum("bclhn,bchpn->bclhp", C, entering) * torch.exp(log_decay).unsqueeze(-1)

    y = y.reshape(batch, chunks * chunk_size, nheads, headdim)[:, :length]
    y = _finish(y, xs.reshape(batch, chunks * chunk_size, nheads, headdim)[:, :length], D, z, x.dtype)
    return (y, state) if return_final_states else y


def ssd_scan_fn(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None = None, z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None, dt_softplus: bool = False, return_final_states: bool = False,
    impl: str = "auto",
) -> SsdOutput:
    """The SSD scan on the backend `impl` (SCAN_IMPLS) means: `reference` the sequential recurrence; `cuda` mamba-ssm's
    Triton kernel; `auto` that kernel for CUDA tensors when it imports, else the chunked form, as `cpu` is."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {impl!r}")
    kwargs = {"D": D, "z": z, "dt_bias": dt_bias, "initial_states": initial_states, "dt_softplus": dt_softplus,
              "return_final_states": return_final_states}
    if impl == "reference":
        return ssd_scan_reference(x, dt, A, B, C, **kwargs)
    on_triton = x.device.type in TRITON_DEVICE_TYPES and impl in ("auto", "cuda")
    triton_scan = _mamba_ssm_chunk_scan() if on_triton else None
    if impl == "cuda" and triton_scan is None:
        raise RuntimeError(f"scan_impl=cuda needs CUDA tensors and mamba-ssm's Triton SSD kernel: {INSTALL_CUDA}")
    if triton_scan is not None:
        return triton_scan(x, dt, A, B, C, chunk_size, **kwargs)
    return ssd_scan_chunked(x, dt, A, B, C, chunk_size, **kwargs)
