"""The fused C++ selective scan for CPU tensors, compiled on first use.

`csrc/selective_scan_cpu.cpp` is built with torch's extension tools (needs a C++ compiler and ninja) into
torch's extension cache (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), so the build cost (~1 min)
is paid once per machine. Importing this module never builds or raises; `is_available()` triggers the build
and reports failure as False, with `unavailable_reason()` saying why, so callers can fall back to PyTorch.
"""

import hashlib
import logging
import os
import subprocess
import threading
import time
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
# Portable flags only: the kernel picks AVX2+FMA or baseline code at run time, so the cached build is valid
# on any x86-64 CPU (-march=native would break a cache shared between machines).
_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]
# A build takes about a minute; a lock this old was left by a process killed while building, and torch would wait
# on it forever.
_STALE_LOCK_SECONDS = 600

_lock = threading.Lock()
_module: ModuleType | None = None
_reason: str | None = None

ScanOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _build_name() -> str:
    """Extension name keyed by the source, its path, the flags and torch's version: torch's cache decides staleness by
    file times only, so an edited or reinstalled source with an older time stamp would otherwise load an old build,
    and two checkouts sharing one build directory would rebuild it in turn, each run of one invalidating the other's."""
    with open(_SOURCE, "rb") as source:
        key = source.read() + "\n".join([_SOURCE, *_CFLAGS, torch.__version__]).encode()
    return f"mamba_hubert_selective_scan_cpu_{hashlib.sha256(key).hexdigest()[:12]}"


def remove_stale_lock(build_directory: str) -> None:
    """Removes torch's build lock in `build_directory` when it is older than any build could be."""
    lock = os.path.join(build_directory, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except FileNotFoundError:
        return
    if age > _STALE_LOCK_SECONDS:
        logger.warning("removing a stale build lock %s (%.0f s old, left by a process killed while building)",
                       lock, age)
        try:
            os.remove(lock)
        except FileNotFoundError:  # another process removed it first
            pass


def _load() -> ModuleType | None:
    global _module, _reason
    with _lock:
        if _module is None and _reason is None:
            try:
                from torch.utils.cpp_extension import _get_build_directory, load

                name = _build_name()
                remove_stale_lock(_get_build_directory(name, verbose=False))
                _module = load(
                    name=name,
                    sources=[_SOURCE],
                    extra_cflags=_CFLAGS,
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            # No compiler or ninja, a failed compile or a failed dlopen: each surfaces as one of these.
            except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as err:
                _reason = f"building {os.path.basename(_SOURCE)} failed: {type(err).__name__}: {err}"
    return _module


def is_available() -> bool:
    """Whether the compiled kernel can be used (builds it on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why `is_available()` is False; None when the kernel is available or was not tried yet."""
    return _reason


def checkpoint_interval() -> int:
    """Time steps between the hidden states that the forward keeps for the backward."""
    return int(_extension().checkpoint_interval)


def set_avx2(enabled: bool) -> bool:
    """Allow (default) or forbid the AVX2+FMA code path, e.g. to test the baseline one; returns whether it runs."""
    return bool(_extension().set_avx2(enabled))


def _extension() -> ModuleType:
    module = _load()
    if module is None:
        raise RuntimeError(f"the CPU selective-scan kernel is unavailable: {_reason}")
    return module


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state):
        keep = any(ctx.needs_input_grad[:9])
        out, last, checkpoints = _extension().forward(
            u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state, keep
        )
        if keep:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        ctx.delta_softplus = delta_softplus
        ctx.return_last_state = return_last_state
        ctx.has_initial_state = initial_state is not None
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *dlast):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        dlast_state = dlast[0].contiguous() if ctx.return_last_state else None
        *grads, dinitial = _extension().backward(
            dout.contiguous(), dlast_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, checkpoints,
            ctx.has_initial_state,
        )
        # Gradients of absent optional inputs come back from C++ as None (undefined tensors).
        return *grads, dinitial, None, None


def selective_scan_cpu(
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
    """Selective scan on CPU with mamba-ssm's `selective_scan_fn` signature; differentiable in every tensor.

    u, delta, z: (batch, d_inner, L); A: (d_inner, N) real; B, C: (batch, N, L); D, delta_bias: (d_inner,);
    initial_state: (batch, d_inner, N), the state before the first step (zero when None).
    Computes in float64 when u is float64, else float32; y is returned in u's dtype and the last state
    (batch, d_inner, N) in the compute dtype, as mamba-ssm does.
    """
    if A.is_complex() or B.dim() != 3 or C.dim() != 3:
        raise ValueError("the CPU kernel supports real A and input-dependent B, C of shape (batch, d_state, L)")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32

    def prep(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    result = _SelectiveScan.apply(
        prep(u), prep(delta), prep(A), prep(B), prep(C), prep(D), prep(z), prep(delta_bias), prep(initial_state),
        bool(delta_softplus), bool(return_last_state),
    )
    if return_last_state:
        return result[0].to(u.dtype), result[1]
    return result.to(u.dtype)
