"""The selective scan, the SSD scan, the Mamba and Mamba2 blocks and ExtBiMamba against mamba-ssm's own code, on CPU.

mamba-ssm's Python part is installed by scripts/setup_venv.sh and loaded by mamba_hubert.ops.mamba_ssm_reference; its
`Mamba` runs its non-fused forward with the scan computed by its `selective_scan_ref`, its `Mamba2` its non-fused
forward with the scan computed by its `ssd_minimal_discrete` and the gated norm by its `rms_norm_ref`. Without it these tests fail
with the install command: they are the suite's only check against the code this package mirrors, so never skip.
"""

import importlib.util
import sys
import types

import pytest
import torch

from mamba_hubert.modules import Mamba
from mamba_hubert.modules.bimamba import BIMAMBA_FUSIONS, ExtBiMamba
from mamba_hubert.modules.layers import build_mixer
from mamba_hubert.modules.mamba2 import Mamba2
from mamba_hubert.ops import selective_scan_fn
from mamba_hubert.ops.mamba_ssm_reference import MambaSsmReference, load_mamba_ssm_reference
from mamba_hubert.ops.selective_scan import fused_mamba_inner
from mamba_hubert.ops.ssd import ssd_scan_chunked
from tests.test_scan import make_inputs

SCAN_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
ACTIVATIONS = ("u", "delta", "B", "C", "z")  # mamba-ssm keeps A, D and delta_bias in float32 (its A_log, D, dt bias)
# (d_model, d_state, d_conv, expand, dt_rank): mamba-ssm's default, a narrow odd one, a wide one with an explicit rank
BLOCK_CONFIGS = [(32, 16, 4, 2, "auto"), (24, 8, 3, 1.5, 5), (20, 4, 2, 3, 3)]
# Mamba2 options: mamba-ssm's defaults but narrow; groups, a per-channel D, the norm before the gate, a conv of 3;
# no norm (z gates inside the scan), biased projections, no conv bias, 6 heads of 10.
MAMBA2_CONFIGS = [
    {"d_model": 32, "d_state": 16, "headdim": 8},
    {"d_model": 24, "d_state": 8, "headdim": 12, "ngroups": 2, "d_conv": 3, "D_has_hdim": True,
     "norm_before_gate": True},
    {"d_model": 20, "d_state": 4, "headdim": 10, "expand": 3, "rmsnorm": False, "bias": True, "conv_bias": False},
]


def reference() -> MambaSsmReference:
    try:
        return load_mamba_ssm_reference()
    except ImportError as error:
        pytest.fail(str(error))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str, tol: float = 1e-5) -> None:
    """Within tol relative to each element and to the tensor's largest magnitude (float32 rounding accumulates)."""
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=tol,
                               atol=tol * max(expected.abs().max().item(), 1e-30), msg=lambda m: f"{name}: {m}")


def assert_same_forward_and_gradients(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> None:
    """Two blocks with the same parameter names on the same input: outputs, the input's and every parameter's
    gradient."""
    x_ours, x_theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert_close(out_ours, out_theirs, "output")
    grad_out = torch.randn_like(out_theirs)
    out_ours.backward(grad_out)
    out_theirs.backward(grad_out)
    assert_close(x_ours.grad, x_theirs.grad, "grad x")
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        assert_close(param.grad, their_params[name].grad, f"grad {name}")


def assert_same_scan_and_gradients(ours: tuple[torch.Tensor, torch.Tensor], theirs: tuple[torch.Tensor, torch.Tensor],
                                   inputs: dict[str, torch.Tensor], inputs_ref: dict[str, torch.Tensor]) -> None:
    """(y, final state) of two scans, and the gradients of both w.r.t. each one's inputs (same names, same order)."""
    (y, state), (y_ref, state_ref) = ours, theirs
    assert_close(y, y_ref, "y")
    assert_close(state, state_ref, "final state")
    grad_y, grad_state = torch.randn_like(y_ref), torch.randn_like(state_ref)
    grads = torch.autograd.grad((y, state), list(inputs.values()), (grad_y, grad_state))
    grads_ref = torch.autograd.grad((y_ref, state_ref), list(inputs_ref.values()), (grad_y, grad_state))
    for name, grad, grad_ref in zip(inputs, grads, grads_ref, strict=True):
        assert_close(grad, grad_ref, f"grad {name}")


@pytest.mark.parametrize("impl", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_D,with_z,with_bias,softplus,last_state", [
    (True, True, True, True, True), (False, False, False, False, False), (True, False, True, True, False),
    (False, True, False, False, True)])
def test_scan_matches_selective_scan_ref(impl, dtype, with_D, with_z, with_bias, softplus, last_state):
    """Values, last state and the gradient of every input. mamba-ssm's reference cannot take a float64 A (it
    computes in float32 and mixes dtypes), so float64 applies to the activations, as in its Mamba block."""
    inputs = make_inputs(4, with_z=with_z, with_bias=with_bias)
    if not with_D:
        inputs["D"] = None
    if not softplus:  # without softplus, delta must stay positive for a stable scan
        inputs["delta"] = inputs["delta"].abs() + 0.05
        if with_bias:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    inputs = {k: None if v is None else v.to(dtype if k in ACTIVATIONS else torch.float32).requires_grad_(True)
              for k, v in inputs.items()}
    leaves = {k: v for k, v in inputs.items() if v is not None}
    kwargs = {"delta_softplus": softplus, "return_last_state": last_state}
    ours = selective_scan_fn(**inputs, **kwargs, impl=impl)
    theirs = reference().selective_scan_ref(**inputs, **kwargs)
    if last_state:
        (ours, our_state), (theirs, their_state) = ours, theirs
        assert_close(our_state, their_state, "last state")
    assert ours.dtype == theirs.dtype == dtype
    assert_close(ours, theirs, "y")
    grad_out = torch.randn_like(theirs)
    our_grads = torch.autograd.grad(ours, list(leaves.values()), grad_out)
    their_grads = torch.autograd.grad(theirs, list(leaves.values()), grad_out)
    for name, o, t in zip(leaves, our_grads, their_grads):
        assert_close(o, t, f"grad {name}")


def block_pair(config: tuple, seed: int = 0) -> tuple[Mamba, torch.nn.Module]:
    """Our block and mamba-ssm's (non-fused path, layer 0 for its inference cache) holding the same weights."""
    d_model, d_state, d_conv, expand, dt_rank = config
    torch.manual_seed(seed)
    ours = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
    with torch.no_grad():  # off the init values (A = 1..N, D = 1) so a mix-up of those parameters shows
        ours.A_log.add_(torch.randn_like(ours.A_log) * 0.3)
        ours.D.normal_()
        ours.conv1d.bias.normal_(0, 0.3)
    theirs = reference().Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                               use_fast_path=False, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("config", BLOCK_CONFIGS)
def test_block_matches_mamba_ssm_forward_and_gradients(config):
    ours, theirs = block_pair(config)
    assert_same_forward_and_gradients(ours, theirs, torch.randn(3, 29, config[0]))


@pytest.mark.parametrize("config", [c for c in BLOCK_CONFIGS if float(c[3]).is_integer()])
def test_step_matches_mamba_ssm_inference_cache(config):
    """mamba-ssm fills its inference cache from a prompt (its forward with return_last_state), then decodes with
    its step(); ours runs forward one frame at a time from a zero state. Outputs agree frame by frame and the two
    caches at the end (ours keeps d_conv - 1 conv inputs: mamba-ssm's oldest one is never read again).
    (mamba-ssm sizes its cache as d_model * expand, which a fractional expand makes a float, hence integer ones.)"""
    ours, theirs = block_pair(config, seed=1)
    x = torch.randn(2, 13, config[0])
    prompt = 5
    # mamba-ssm reads only these two fields of its InferenceParams (mamba_ssm.utils.generation imports transformers).
    cache = types.SimpleNamespace(key_value_memory_dict={}, seqlen_offset=0)
    with torch.no_grad():
        expected = [theirs(x[:, :prompt], inference_params=cache)]
        for t in range(prompt, x.shape[1]):
            cache.seqlen_offset = t
            expected.append(theirs(x[:, t : t + 1], inference_params=cache))
        state = ours.allocate_state(x.shape[0])
        steps = [ours(x[:, t : t + 1], state=state) for t in range(x.shape[1])]
    assert_close(torch.cat(steps, 1), torch.cat(expected, 1), "step outputs")
    their_conv, their_ssm = cache.key_value_memory_dict[0]
    assert_close(state.conv, their_conv[..., 1:], "conv state")
    assert_close(state.ssm, their_ssm, "ssm state")


@pytest.mark.parametrize("config", BLOCK_CONFIGS)
def test_mamba_inner_ref_with_our_weights_equals_our_forward(config):
    ours, _ = block_pair(config, seed=2)
    x = torch.randn(2, 17, config[0])
    with torch.no_grad():
        xz = ours.in_proj(x).transpose(1, 2)  # (b, 2 * d_inner, L), mamba_inner_ref's layout
        theirs = reference().mamba_inner_ref(
            xz, ours.conv1d.weight, ours.conv1d.bias, ours.x_proj.weight, ours.dt_proj.weight, ours.out_proj.weight,
            ours.out_proj.bias, -torch.exp(ours.A_log.float()), None, None, ours.D.float(),
            delta_bias=ours.dt_proj.bias.float(), delta_softplus=True)
        assert_close(ours(x), theirs, "output")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [8, 5])
def test_ssd_scan_matches_ssd_minimal_discrete(dtype, chunk_size):
    """Our chunked SSD (groups of heads, an initial state) against mamba-ssm's `ssd_minimal_discrete` (per-head B and
    C, whole chunks of 8) called as mamba-ssm's own test calls it: values, final state, every input's gradient."""
    from tests.test_ssd import leaves, make_ssd_inputs

    inputs = make_ssd_inputs(4, length=24, dtype=dtype)
    for name in ("D", "z", "dt_bias"):
        del inputs[name]
    inputs["dt"] = torch.nn.functional.softplus(inputs["dt"])
    ours, theirs = leaves(inputs), leaves(inputs)
    y, state = ssd_scan_chunked(**ours, chunk_size=chunk_size, return_final_states=True)
    heads_per_group = inputs["x"].shape[2] // inputs["B"].shape[2]
    B, C = (theirs[k].repeat_interleave(heads_per_group, dim=2) for k in ("B", "C"))
    dt = theirs["dt"]
    y_ref, state_ref = reference().ssd_minimal_discrete(theirs["x"] * dt.unsqueeze(-1), theirs["A"] * dt, B, C, 8,
                                                        initial_states=theirs["initial_states"].unsqueeze(1))
    assert_same_scan_and_gradients((y, state), (y_ref, state_ref), ours, theirs)


def mamba2_pair(config: dict, seed: int = 0) -> tuple[Mamba2, torch.nn.Module]:
    """Our Mamba2 and mamba-ssm's (non-fused path) holding the same weights, off their init values."""
    torch.manual_seed(seed)
    ours = Mamba2(**config, chunk_size=8)
    with torch.no_grad():  # so that a mix-up of the per-head parameters, the norm or the conv bias shows
        for param in (ours.A_log, ours.D, ours.dt_bias):
            param.add_(torch.randn_like(param) * 0.3)
        if ours.norm is not None:
            ours.norm.weight.normal_(1, 0.3)
        for linear in (ours.in_proj, ours.out_proj, ours.conv1d):
            if linear.bias is not None:
                linear.bias.normal_(0, 0.3)
    theirs = reference().Mamba2(**config, chunk_size=8, use_mem_eff_path=False)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("config", MAMBA2_CONFIGS)
def test_mamba2_parameters_and_init_equal_mamba_ssm(config):
    """mamba-ssm's Mamba2 constructed on CPU: the same names and shapes in the same order, and from the same seed the
    same initial values (dt_bias, A_log, the projections, conv, norm), the same parameters kept from weight decay."""
    torch.manual_seed(5)
    theirs = reference().Mamba2(**config, use_mem_eff_path=False)
    torch.manual_seed(5)
    ours = Mamba2(**config)
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert [(k, v.shape) for k, v in ours_state.items()] == [(k, v.shape) for k, v in their_state.items()]
    for name, value in their_state.items():
        assert torch.equal(ours_state[name], value), name

    def no_decay(module: torch.nn.Module) -> set[str]:
        return {name for name, p in module.named_parameters() if getattr(p, "_no_weight_decay", False)}

    assert no_decay(ours) == no_decay(theirs) == {"dt_bias", "A_log", "D"}


@pytest.mark.parametrize("config", MAMBA2_CONFIGS)
def test_mamba2_matches_mamba_ssm_forward_and_gradients(config):
    """29 frames in chunks of 8 (the last one partial): outputs, the input's and every parameter's gradient."""
    ours, theirs = mamba2_pair(config)
    assert_same_forward_and_gradients(ours, theirs, torch.randn(3, 29, config["d_model"]))


@pytest.mark.parametrize("block", ["mamba", "mamba2"])
@pytest.mark.parametrize("fusion", BIMAMBA_FUSIONS)
def test_ext_bimamba_matches_two_mamba_ssm_blocks_per_sequence(fusion, block):
    """A padded batch through ExtBiMamba (`ext_bimamba`, `ext_bimamba2`) equals, on each sequence alone and unpadded,
    mamba-ssm's block with the forward weights plus (concat or sum) its block with the backward weights reading the
    sequence reversed."""
    d_model = 24
    torch.manual_seed(3)
    kwargs = {"d_state": 8, "d_conv": 4, "expand": 2}
    if block == "mamba":
        ours = ExtBiMamba(d_model, fusion=fusion, **kwargs)
    else:
        kwargs.update(headdim=12, chunk_size=8)
        ours = ExtBiMamba(d_model, fusion=fusion, block=Mamba2, **kwargs)
    theirs = {}
    for name in ("forward_mamba", "backward_mamba"):
        if block == "mamba":
            theirs[name] = reference().Mamba(d_model, **kwargs, use_fast_path=False)
        else:
            theirs[name] = reference().Mamba2(d_model, **kwargs, use_mem_eff_path=False)
        theirs[name].load_state_dict(getattr(ours, name).state_dict(), strict=True)
    lengths = [21, 14, 3]
    x = torch.randn(len(lengths), max(lengths), d_model)
    padding_mask = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        out = ours(x, padding_mask)
        for i, length in enumerate(lengths):
            alone = x[i : i + 1, :length]
            forward_out = theirs["forward_mamba"](alone)
            backward_out = theirs["backward_mamba"](alone.flip(1)).flip(1)
            if fusion == "sum":
                expected = forward_out + backward_out
            else:
                expected = ours.fuse(torch.cat([forward_out, backward_out], dim=-1))
            assert_close(out[i : i + 1, :length], expected, f"sequence {i} (length {length})")
    assert not out[padding_mask].any()


@pytest.mark.parametrize("mixer", ["mamba", "ext_bimamba", "inn_bimamba"])
def test_fused_path_equals_the_unfused_forward_under_padding(mixer, monkeypatch):
    """On CUDA with causal-conv1d the blocks call mamba-ssm's fused `mamba_inner_fn`. Here its reference
    `mamba_inner_ref` (same signature, mamba-ssm's own arithmetic) stands in for the CUDA kernel, so the arguments
    our blocks pass, the reversal per sequence and the padding are checked on CPU: a padded batch gives the unfused
    forward's outputs and gradients."""
    torch.manual_seed(0)
    block = build_mixer(mixer, 16, "concat", {"d_state": 8})
    x = torch.randn(3, 21, 16)
    padding = torch.arange(21)[None, :] >= torch.tensor([21, 14, 3])[:, None]
    expected = block(x, padding)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(block.parameters()))
    calls = []

    def inner(*args, **kwargs):
        calls.append(1)
        return reference().mamba_inner_ref(*args, **kwargs)

    for module in ("mamba_hubert.modules.mamba", "mamba_hubert.modules.bimamba"):
        monkeypatch.setattr(f"{module}.fused_mamba_inner", lambda impl, device: inner)
    fused = block(x, padding)
    assert len(calls) == (1 if mixer == "mamba" else 2)  # once per direction: the fused path is the one taken
    assert_close(fused, expected, "output")
    for (name, _), grad, expected_grad in zip(block.named_parameters(),
                                             torch.autograd.grad(fused.square().sum(), list(block.parameters())),
                                             expected_grads, strict=True):
        assert_close(grad, expected_grad, name)


def test_the_fused_path_is_for_cuda_tensors_only():
    assert fused_mamba_inner("auto", torch.device("cpu")) is None


def test_loader_leaves_sys_modules_and_an_imported_mamba_ssm_alone(monkeypatch):
    """Where mamba-ssm imports for real (a GPU machine), the modules everyone else gets stay the real ones, with their
    CUDA kernels; the loader's copies and stubs never show in sys.modules. Stand-ins play the real modules here."""
    reference()  # einops and torch modules a first load imports are meant to stay; this call has made them
    spec = importlib.util.find_spec("mamba_ssm")
    for name in ("mamba_ssm", "mamba_ssm.ops.selective_scan_interface", "mamba_ssm.modules.mamba_simple",
                 "selective_scan_cuda", "causal_conv1d"):
        stand_in = types.ModuleType(name)
        stand_in.__spec__ = spec if name == "mamba_ssm" else None
        monkeypatch.setitem(sys.modules, name, stand_in)
    before = dict(sys.modules)
    loaded = load_mamba_ssm_reference.__wrapped__()  # uncached: a fresh load under the stand-ins
    assert sys.modules.keys() == before.keys()
    assert all(sys.modules[name] is module for name, module in before.items())
    block = loaded.Mamba(8, d_state=4, use_fast_path=False)  # mamba-ssm's code, not the stand-ins, was loaded
    assert block(torch.randn(1, 3, 8)).shape == (1, 3, 8)
