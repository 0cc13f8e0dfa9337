"""mamba-ssm's own pure-PyTorch code, loaded so that it runs on CPU without mamba-ssm's CUDA build.

The tests and `benchmarks/bench_scan.py` compare this package against it. mamba-ssm's package import needs triton
and its compiled `selective_scan_cuda`, which the reference code never calls, so its modules are imported as
private copies: under a bare `mamba_ssm` package (its `__init__`, which imports Mamba2/3 and triton kernels, is not
run), with `selective_scan_cuda` and the triton layer-norm module stubbed, and causal-conv1d and the triton
state-update kernel hidden so that mamba-ssm takes its own PyTorch fallbacks for them. sys.modules is put back
afterwards, so a genuinely installed mamba-ssm (a GPU machine) imports as before and never sees the copies.

In the copies, and only there, the names that would call CUDA kernels are rebound:
- `mamba_simple.selective_scan_fn` (the CUDA scan, which `Mamba.forward` calls with `use_fast_path=False`) is
  mamba-ssm's `selective_scan_ref`;
- in `selective_scan_interface`, `selective_scan_fn` is `selective_scan_ref` too, and `causal_conv1d_fn` (which
  `mamba_inner_ref` asserts on) is the depthwise causal conv + SiLU that `Mamba.forward` itself computes when
  causal-conv1d is missing.

Mamba-2 (`modules/mamba2.py`, `modules/ssd_minimal.py`) imports Triton kernels and huggingface_hub at module level.
Triton is an inert stand-in while they load (it only decorates kernels that are never launched); `ssd_combined`, whose
kernel tables cannot be built without the real Triton, is a stub module; huggingface_hub's mixin is an empty class.
In the copies: the gated RMSNorm's `rmsnorm_fn` is mamba-ssm's `rms_norm_ref`, and `Mamba2`'s
`mamba_chunk_scan_combined` is mamba-ssm's `ssd_minimal_discrete` called as mamba-ssm's own test of it calls it
(x dt, A dt), with the dt bias, softplus, D and the padding to whole chunks around it (`_ssd_minimal_chunk_scan`).
"""

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

MAMBA_SSM_VERSION = "2.3.2.post1"
INSTALL_REFERENCE = (f"MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps "
                     f"mamba-ssm=={MAMBA_SSM_VERSION} einops==0.8.2 (scripts/setup_venv.sh does it)")


class MambaSsmReference(NamedTuple):
    """mamba-ssm's reference functions and its blocks, runnable on CPU (`Mamba(..., use_fast_path=False)`,
    `Mamba2(..., use_mem_eff_path=False)`)."""

    selective_scan_ref: Callable
    mamba_inner_ref: Callable
    Mamba: type[nn.Module]
    ssd_minimal_discrete: Callable
    Mamba2: type[nn.Module]


class _Inert:
    """Any attribute, call or decoration of it gives itself: enough for Triton's decorators at import time."""

    def __call__(self, *args, **kwargs) -> "_Inert":
        return self

    def __getattr__(self, name: str) -> "_Inert":
        return self


class _InertModule(types.ModuleType):
    def __getattr__(self, name: str) -> _Inert:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()


def _ssd_minimal_chunk_scan(ssd_minimal_discrete: Callable) -> Callable:
    """`mamba_chunk_scan_combined` for the calls `Mamba2.forward` makes outside inference, on `ssd_minimal_discrete`."""

    def chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   dt_bias: torch.Tensor | None = None, dt_softplus: bool = False, seq_idx: None = None,
                   cu_seqlens: None = None, return_final_states: bool = False,
                   return_varlen_states: bool = False) -> torch.Tensor:
        if seq_idx is not None or cu_seqlens is not None or return_final_states or return_varlen_states:
            raise NotImplementedError("only Mamba2's plain forward is mapped onto ssd_minimal_discrete")
        dt = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
        dt = F.softplus(dt) if dt_softplus else dt
        length, heads_per_group = x.shape[1], x.shape[2] // B.shape[2]
        B, C = (t.repeat_interleave(heads_per_group, dim=2) for t in (B, C))
        pad = -length % chunk_size  # ssd_minimal_discrete takes whole chunks; the padded tail comes after the outputs
        args = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x * dt.unsqueeze(-1), A * dt, B, C)]
        y, _ = ssd_minimal_discrete(*args, chunk_size)
        y = y[:, :length]
        if D is not None:
            y = y + x * (D if D.dim() == 2 else D.unsqueeze(-1))
        return y if z is None else y * F.silu(z)

    return chunk_scan


def _causal_conv1d_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """causal_conv1d_fn's contract for (b, d, L) input and (d, w) weights, as mamba_simple's fallback computes it."""
    if activation not in ("silu", "swish"):
        raise ValueError(f"mamba_inner_ref asks for silu, got activation={activation!r}")
    width = weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(out)


@functools.cache
def load_mamba_ssm_reference() -> MambaSsmReference:
    """The private copies described in the module docstring; ImportError naming the install command when mamba-ssm's
    Python part (or einops) is not installed."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"mamba-ssm is not installed; install its Python part: {INSTALL_REFERENCE}")
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    layer_norm = types.ModuleType("mamba_ssm.ops.triton.layer_norm")
    layer_norm._layer_norm_fwd = None  # only the fused RMSNorm path, never taken here, calls it
    ssd_combined = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    ssd_combined.mamba_chunk_scan_combined = None  # rebound below in the Mamba2 copy
    ssd_combined.mamba_split_conv1d_scan_combined = None  # use_mem_eff_path only, never taken here
    hub = types.ModuleType("huggingface_hub")
    hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
    triton = _InertModule("triton")
    triton.language = _InertModule("triton.language")
    stubs = {
        "mamba_ssm": package,
        "selective_scan_cuda": types.ModuleType("selective_scan_cuda"),
        "mamba_ssm.ops.triton.layer_norm": layer_norm,
        "mamba_ssm.ops.triton.ssd_combined": ssd_combined,
        "huggingface_hub": hub,
        "triton": triton,
        "triton.language": triton.language,
        # None makes an import raise ImportError, on which mamba-ssm falls back to its PyTorch code.
        "causal_conv1d": None,
        "mamba_ssm.ops.triton.selective_state_update": None,
    }

    # Only the copies and stubs come and go; real modules first imported here (einops, torch internals) stay,
    # since a second instance of a torch module would register its operators twice.
    def swapped(name: str) -> bool:
        return name in stubs or name.startswith("mamba_ssm.")

    saved = {name: module for name, module in sys.modules.items() if swapped(name)}
    try:
        for name in saved:
            del sys.modules[name]
        sys.modules.update(stubs)
        try:
            interface = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
            mamba_simple = importlib.import_module("mamba_ssm.modules.mamba_simple")
            layernorm_gated = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
            ssd_minimal = importlib.import_module("mamba_ssm.modules.ssd_minimal")
            mamba2 = importlib.import_module("mamba_ssm.modules.mamba2")
        except ImportError as error:
            raise ImportError(f"mamba-ssm's reference code cannot be imported ({type(error).__name__}: {error}); "
                              f"install: {INSTALL_REFERENCE}") from error
    finally:
        for name in [name for name in sys.modules if swapped(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    interface.selective_scan_fn = interface.selective_scan_ref
    interface.causal_conv1d_fn = _causal_conv1d_silu
    mamba_simple.selective_scan_fn = interface.selective_scan_ref
    layernorm_gated.rmsnorm_fn = layernorm_gated.rms_norm_ref
    mamba2.mamba_chunk_scan_combined = _ssd_minimal_chunk_scan(ssd_minimal.ssd_minimal_discrete)
    return MambaSsmReference(interface.selective_scan_ref, interface.mamba_inner_ref, mamba_simple.Mamba,
                             ssd_minimal.ssd_minimal_discrete, mamba2.Mamba2)
