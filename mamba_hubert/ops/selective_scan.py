"""Selective scan (Mamba-1 S6) with one signature for every backend.

`selective_scan_fn` follows `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`:
u, delta, z: (batch, d_inner, L); A: (d_inner, N); B, C: (batch, N, L); D, delta_bias: (d_inner,); and, beyond
mamba-ssm's signature, initial_state (batch, d_inner, N) float32: the state before the first step (zero when None).
Backends: mamba-ssm's CUDA kernel for CUDA tensors, the fused C++ CPU kernel, or the sequential
PyTorch reference (always available, differentiable by autograd, slow).
"""

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mamba_hubert.ops import cpu_kernel

SCAN_IMPLS = ("auto", "cuda", "cpu", "reference")
ScanOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# --force-reinstall: scripts/setup_venv.sh installs mamba-ssm's Python part, which satisfies the `[cuda]` extra's
# requirement without its kernels, so a plain `pip install .[cuda]` would change nothing
INSTALL_CUDA = ("MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps "
                "--force-reinstall mamba-ssm causal-conv1d (compiles their CUDA kernels for this torch)")


@functools.cache
def _mamba_ssm_import() -> tuple[object | None, str | None]:
    """(mamba-ssm's selective_scan_fn, None), or (None, why it cannot be imported); tried once per process, since a
    failed import of a compiled extension is slow and fails the same way every time."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as cuda_scan
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return cuda_scan, None


def _mamba_ssm_scan() -> Callable | None:
    return _mamba_ssm_import()[0]


@functools.cache
def _mamba_ssm_fused_import() -> tuple[Callable | None, str | None]:
    """(mamba-ssm's mamba_inner_fn, None), or (None, why not): the whole block after in_proj in one autograd function,
    its conv run by causal-conv1d's kernel, which mamba-ssm's `[cuda]` install brings."""
    try:
        # mamba-ssm sets its causal-conv1d entry points to None when these fail, and mamba_inner_fn asserts on them
        import causal_conv1d.cpp_functions  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return mamba_inner_fn, None


@functools.cache
def _warn_unfused_on_cuda() -> None:
    warnings.warn(f"mamba-ssm's scan runs, but not its fused block ({_mamba_ssm_fused_import()[1]}): the conv and the "
                  f"projections run as separate kernels; install causal-conv1d: {INSTALL_CUDA}", stacklevel=3)


def fused_mamba_inner(impl: str, device: torch.device) -> Callable | None:
    """mamba-ssm's `mamba_inner_fn` where `impl` runs the scan on mamba-ssm's CUDA kernel and causal-conv1d imports;
    None elsewhere (the block then runs its conv and scan separately)."""
    if device.type != "cuda" or resolve_scan_impl(impl, device) != "cuda":
        return None
    fused = _mamba_ssm_fused_import()[0]
    if fused is None:
        _warn_unfused_on_cuda()
    return fused


@functools.cache
def _warn_reference_on_cuda() -> None:
    warnings.warn(f"scan_impl=auto on CUDA without mamba-ssm ({_mamba_ssm_import()[1]}): the selective scan runs the "
                  f"sequential PyTorch reference, about 100x slower; install it: {INSTALL_CUDA}", stacklevel=3)


def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, d_inner, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner or A.is_complex():
        raise ValueError(f"A must be real (d_inner={d_inner}, d_state); got {tuple(A.shape)} {A.dtype}")
    expected = (batch, A.shape[1], length)
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{name} must be (batch, d_state, L) = {expected}; got {tuple(tensor.shape)}")


def _step_sizes(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """The scan's step sizes in float32: delta plus its bias, through softplus if asked."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> ScanOutput:
    """Plain recurrence over time, computed in float32; the ground truth the fast kernels are tested against."""
    _check_shapes(u, delta, A, B, C)
    dtype = u.dtype
    delta = _step_sizes(delta, delta_bias, delta_softplus)
    u, A, B, C = (t.float() for t in (u, A, B, C))
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (b, d, L, n)
    drive = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (b, d, L, n)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(outputs, dim=2)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, state) if return_last_state else y


def add_initial_state(
    scan: Callable[..., ScanOutput],
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
    initial_state: torch.Tensor,
) -> ScanOutput:
    """`scan` (a backend without an initial state: mamba-ssm's CUDA kernel) run from zero, plus what
    `initial_state` h0 adds, in closed form: the scan is linear in its state, so h0 contributes
    exp(A sum_{s<=t} delta_s) h0 to state t, C_t . that (gated by silu(z_t)) to y_t.

    Exact, and differentiable by autograd; it materialises (batch, d_inner, L, N), which streaming chunks afford.
    """
    out = scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    y, last = out if return_last_state else (out, None)
    carried = torch.exp(_step_sizes(delta, delta_bias, delta_softplus).cumsum(-1).unsqueeze(-1) * A.float()[:, None])
    carried = carried * initial_state.float().unsqueeze(2)  # (b, d, L, N): h0's part of every state
    y_extra = torch.einsum("bdln,bnl->bdl", carried, C.float())
    if z is not None:
        y_extra = y_extra * F.silu(z.float())
    y = (y.float() + y_extra).to(u.dtype)
    return (y, last + carried[:, :, -1]) if return_last_state else y


def resolve_scan_impl(impl: str, device: torch.device) -> str:
    """The backend `impl` ("auto" or a name from SCAN_IMPLS) means for tensors on `device`."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"scan_impl must be one of {SCAN_IMPLS}, got {impl!r}")
    if impl == "auto":
        if device.type == "cuda":
            if _mamba_ssm_scan() is not None:
                return "cuda"
            _warn_reference_on_cuda()
            return "reference"
        return "cpu" if device.type == "cpu" and cpu_kernel.is_available() else "reference"
    if impl == "cuda" and device.type != "cuda":
        raise RuntimeError(f"scan_impl=cuda needs CUDA tensors, got tensors on {device}")
    if impl == "cuda" and _mamba_ssm_scan() is None:
        raise RuntimeError(f"scan_impl=cuda needs mamba-ssm, which cannot be imported ({_mamba_ssm_import()[1]}): "
                           f"{INSTALL_CUDA}")
    if impl == "cpu" and (device.type != "cpu" or not cpu_kernel.is_available()):
        raise RuntimeError(f"scan_impl=cpu needs CPU tensors and the compiled kernel: {cpu_kernel.unavailable_reason()}")
    return impl


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    impl: str = "auto",
) -> ScanOutput:
    """Selective scan with mamba-ssm's signature and semantics, dispatched to the best available backend;
    `initial_state` (batch, d_inner, N) float32 starts the scan from that state instead of zero."""
    _check_shapes(u, delta, A, B, C)
    if initial_state is not None and tuple(initial_state.shape) != (u.shape[0], u.shape[1], A.shape[1]):
        raise ValueError(f"initial_state must be (batch, d_inner, d_state) = {(u.shape[0], u.shape[1], A.shape[1])}; "
                         f"got {tuple(initial_state.shape)}")
    backend = resolve_scan_impl(impl, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if backend == "cuda":
        if initial_state is None:
            return _mamba_ssm_scan()(*args)
        return add_initial_state(_mamba_ssm_scan(), *args, initial_state)
    if backend == "cpu":
        return cpu_kernel.selective_scan_cpu(*args, initial_state)
    return selective_scan_reference(*args, initial_state)
