"""selective_scan_fn against an independent sequential loop written here, for every backend on this machine."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mamba_hubert.ops import resolve_scan_impl, selective_scan_fn, selective_scan_reference
from mamba_hubert.ops.selective_scan import add_initial_state


def loop_scan(u, delta, A, B, C, D, z, delta_bias, softplus):
    """Written from the Mamba-1 equations, one time step and one state at a time; float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if softplus:
        delta = F.softplus(delta)
    batch, d_inner, length = u.shape
    h = torch.zeros(batch, d_inner, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def make_inputs(seed, batch=2, d_inner=6, d_state=5, length=37, with_z=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": torch.rand(batch, d_inner, length, generator=g) * 0.5 - 0.2,
        "A": -torch.rand(d_inner, d_state, generator=g) * 2 - 0.1,
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.randn(d_inner, generator=g),
        "z": torch.randn(batch, d_inner, length, generator=g) if with_z else None,
        "delta_bias": torch.randn(d_inner, generator=g) * 0.3 if with_bias else None,
    }


def impls():
    available = ["reference"]
    if resolve_scan_impl("auto", torch.device("cpu")) == "cpu":
        available.append("cpu")
    return available


def assert_close(actual, expected, name):
    assert torch.allclose(actual.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item()), name


@pytest.mark.parametrize("impl", impls())
@pytest.mark.parametrize("with_z,with_bias,softplus", [(True, True, True), (False, False, False), (True, False, True),
                                                        (False, True, False)])
def test_values_and_gradients_match_loop(impl, with_z, with_bias, softplus):
    inputs = make_inputs(0, with_z=with_z, with_bias=with_bias)
    if not softplus:  # without softplus, delta must stay positive for a stable scan
        inputs["delta"] = inputs["delta"].abs() + 0.05
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    full = {k: leaves.get(k) for k in inputs}
    y, last = selective_scan_fn(**full, delta_softplus=softplus, return_last_state=True, impl=impl)
    expected_leaves = {k: v.detach().double().requires_grad_(True) for k, v in leaves.items()}
    y_ref, last_ref = loop_scan(**{k: expected_leaves.get(k) for k in inputs}, softplus=softplus)
    assert y.dtype == torch.float32
    assert_close(y, y_ref, "y")
    assert_close(last, last_ref, "last state")
    grad_out = torch.randn_like(y_ref)
    (y.double() * grad_out).sum().backward()
    (y_ref * grad_out).sum().backward()
    for name, leaf in leaves.items():
        assert_close(leaf.grad, expected_leaves[name].grad, f"grad {name}")


@pytest.mark.parametrize("impl", impls())
def test_single_step_and_long_sequence(impl):
    for length in (1, 300):
        inputs = make_inputs(1, length=length)
        y = selective_scan_fn(**inputs, delta_softplus=True, impl=impl)
        y_ref, _ = loop_scan(**inputs, softplus=True)
        assert_close(y, y_ref, f"L={length}")


def scan_from(impl, u, delta, A, B, C, D, z, delta_bias=None, *, initial_state):
    """(y, last state) of a softplus scan from `initial_state`: a backend's own, or "closed_form", the CUDA path's
    closed form on top of the reference run from zero (mamba-ssm's kernel has no initial state)."""
    args = (u, delta, A, B, C, D, z, delta_bias, True, True)
    if impl == "closed_form":
        return add_initial_state(selective_scan_reference, *args, initial_state)
    return selective_scan_fn(*args, initial_state=initial_state, impl=impl)


@pytest.mark.parametrize("impl", [*impls(), "closed_form"])
def test_initial_state_continues_the_sequence(impl):
    """Scanning [0, 37) then [37, 90) from the first part's last state equals one scan of [0, 90)."""
    g = torch.Generator().manual_seed(0)
    batch, d_inner, d_state, length, split = 2, 6, 5, 90, 37
    u, z = torch.randn(2, batch, d_inner, length, generator=g)
    delta = torch.randn(batch, d_inner, length, generator=g) - 2
    A = -torch.exp(torch.randn(d_inner, d_state, generator=g) * 2)  # |A| from ~0.01 to ~50
    B, C = torch.randn(2, batch, d_state, length, generator=g)
    D = torch.randn(d_inner, generator=g)
    whole, whole_state = selective_scan_reference(u, delta, A, B, C, D, z, delta_softplus=True,
                                                  return_last_state=True)
    _, state = selective_scan_reference(*(t[..., :split] for t in (u, delta)), A, B[..., :split], C[..., :split], D,
                                        z[..., :split], delta_softplus=True, return_last_state=True)
    rest, rest_state = scan_from(impl, *(t[..., split:] for t in (u, delta)), A, B[..., split:], C[..., split:], D,
                                 z[..., split:], initial_state=state)
    torch.testing.assert_close(rest, whole[..., split:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rest_state, whole_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_z,with_bias", [(True, True), (False, False)])
def test_closed_form_initial_state_matches_reference(with_z, with_bias):
    """The closed form that adds an initial state to mamba-ssm's CUDA scan, against the reference's recurrence from
    that state: y, the last state and the gradient of every input and of the state, to 1e-5."""
    inputs = make_inputs(5, length=70, with_z=with_z, with_bias=with_bias)
    initial = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(6))
    outputs = {}
    for impl in ("closed_form", "reference"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
        state = initial.clone().requires_grad_(True)
        y, last = scan_from(impl, *(leaves.get(k) for k in inputs), initial_state=state)
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
        grads = torch.autograd.grad((y * grad_y).sum() + last.sum(), [*leaves.values(), state])
        outputs[impl] = dict(zip(["y", "last state", *leaves, "initial_state"], (y, last, *grads), strict=True))
    for name, expected in outputs["reference"].items():
        assert_close(outputs["closed_form"][name], expected.double(), name)


def test_bad_shapes_and_impls_are_rejected():
    inputs = make_inputs(3)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_fn(**{**inputs, "B": inputs["B"][:, :, :-1]})
    with pytest.raises(ValueError, match="scan_impl"):
        selective_scan_fn(**inputs, impl="fast")
    with pytest.raises(ValueError, match="initial_state must be"):
        selective_scan_fn(**inputs, initial_state=torch.zeros(2, 6, 4))
    with pytest.raises(RuntimeError, match="cuda"):
        selective_scan_fn(**inputs, impl="cuda")


@pytest.mark.skipif(importlib.util.find_spec("selective_scan_cuda") is not None, reason="mamba-ssm's CUDA build is here")
def test_cuda_without_mamba_ssm_warns_once_and_names_the_install(recwarn):
    """Where mamba-ssm cannot be imported (as on this CPU machine): `auto` for CUDA tensors falls back to the reference
    with one warning naming the install command, however often it is asked, the import being tried once;
    `cuda` refuses with the import's reason. Only the device's type is read, so no GPU is needed."""
    from mamba_hubert.ops import selective_scan

    selective_scan._mamba_ssm_import.cache_clear()
    selective_scan._warn_reference_on_cuda.cache_clear()
    cuda = torch.device("cuda")
    assert [resolve_scan_impl("auto", cuda) for _ in range(3)] == ["reference"] * 3
    messages = [str(w.message) for w in recwarn if "mamba-ssm" in str(w.message)]
    assert len(messages) == 1 and "100x slower" in messages[0] and "pip install" in messages[0]
    assert selective_scan._mamba_ssm_import.cache_info().misses == 1
    with pytest.raises(RuntimeError, match=r"cannot be imported \(ModuleNotFoundError.*pip install"):
        resolve_scan_impl("cuda", cuda)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_scan_impl("cuda", torch.device("cpu"))
