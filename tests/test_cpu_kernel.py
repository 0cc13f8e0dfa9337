"""The fused C++ CPU selective scan: values and gradients of every input against a sequential loop written here."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import _get_build_directory

from mamba_hubert.ops import cpu_kernel, selective_scan_reference
from tests.conftest import load_benchmark

pytestmark = pytest.mark.skipif(not cpu_kernel.is_available(), reason=f"{cpu_kernel.unavailable_reason()}")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Mamba-1 recurrence, one time step at a time, in float64 and differentiated by autograd; returns (y, h_last)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def make_inputs(batch, d_inner, d_state, length, seed=0, dtype=torch.float32, softplus=True):
    """Inputs in the ranges a Mamba layer produces: step sizes ~0.001-0.1, A = -(1..N)-like."""
    g = torch.Generator().manual_seed(seed)
    if softplus:  # raw delta and a bias that softplus maps to 0.001-0.1, as Mamba's dt_proj init does
        delta = torch.randn(batch, d_inner, length, generator=g) * 0.5
        bias = torch.log(torch.expm1(torch.rand(d_inner, generator=g) * 0.099 + 0.001))
    else:  # delta is the step size itself
        delta = torch.rand(batch, d_inner, length, generator=g) * 0.1
        bias = torch.rand(d_inner, generator=g) * 0.01
    inputs = {
        "u": torch.randn(batch, d_inner, length, generator=g),
        "delta": delta,
        "A": -torch.exp(torch.rand(d_inner, d_state, generator=g) * math.log(d_state + 1)),
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.randn(d_inner, generator=g),
        "z": torch.randn(batch, d_inner, length, generator=g),
        "delta_bias": bias,
    }
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


def assert_close_rel(actual, expected, rtol, name):
    """Relative error measured against the tensor's scale, so entries that cancel to ~0 do not dominate."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def run_both(inputs, use, softplus, last, rtol):
    """Forward and backward of the kernel and of the loop on the same inputs and output gradients; compares all."""
    names = [k for k in NAMES if k in ("u", "delta", "A", "B", "C") or k in use]
    kwargs = {k: inputs[k] for k in names}
    ours = cpu_kernel.selective_scan_cpu(**kwargs, delta_softplus=softplus, return_last_state=last)
    ref = loop_scan(**kwargs, delta_softplus=softplus)
    ours = ours if last else (ours,)
    ref = ref if last else ref[:1]
    assert ours[0].dtype == inputs["u"].dtype
    for name, o, r in zip(("y", "last_state"), ours, ref):
        assert_close_rel(o, r, rtol, name)
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in ref]
    loss_ours = sum((o * go.to(o.dtype)).sum() for o, go in zip(ours, grads_out))
    loss_ref = sum((r * go).sum() for r, go in zip(ref, grads_out))
    wrt = [inputs[k] for k in names]
    for name, a, b in zip(names, torch.autograd.grad(loss_ours, wrt), torch.autograd.grad(loss_ref, wrt)):
        assert a.shape == b.shape and a.dtype == inputs[name].dtype, name
        assert_close_rel(a, b, rtol, f"grad {name}")


# (batch, d_inner, d_state, L): L below / at / above the checkpoint interval (64) and not a multiple of it, L=1;
# d_state below 8 (padded lanes), 16, 24, and 40 (two lane groups: 32 + 8).
SHAPES = [(2, 3, 16, 150), (1, 4, 5, 64), (2, 2, 40, 70), (1, 3, 24, 1), (3, 2, 8, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_d{}_n{}_L{}".format(*s))
def test_matches_loop_all_options(shape):
    run_both(make_inputs(*shape), use={"D", "z", "delta_bias"}, softplus=True, last=True, rtol=1e-5)


@pytest.mark.parametrize(
    "use,softplus,last",
    [
        (set(), False, False),
        ({"D"}, True, False),
        ({"z"}, False, True),
        ({"delta_bias"}, True, True),
        ({"delta_bias"}, False, False),
        ({"D", "z"}, True, False),
    ],
    ids=lambda v: str(sorted(v)) if isinstance(v, set) else str(v),
)
def test_matches_loop_option_subsets(use, softplus, last):
    inputs = make_inputs(2, 3, 16, 130, seed=3, softplus=softplus)
    run_both(inputs, use=use, softplus=softplus, last=last, rtol=1e-5)


def test_baseline_code_path_matches_loop():
    """The x86-64 baseline build of the kernel (used on CPUs without AVX2) gives the same answers."""
    try:
        assert not cpu_kernel.set_avx2(False)
        run_both(make_inputs(2, 3, 40, 70, seed=2), use={"D", "z", "delta_bias"}, softplus=True, last=True, rtol=1e-5)
    finally:
        cpu_kernel.set_avx2(True)


def test_float64_matches_loop_tightly():
    run_both(make_inputs(2, 3, 12, 100, dtype=torch.float64), {"D", "z", "delta_bias"}, True, True, rtol=1e-10)


def test_gradcheck_float64():
    inputs = make_inputs(1, 2, 3, 70, seed=5, dtype=torch.float64)
    args = [inputs[k] for k in NAMES]

    def fn(*xs):
        y, last = cpu_kernel.selective_scan_cpu(*xs, delta_softplus=True, return_last_state=True)
        return y, last

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 16, 150), (2, 2, 40, 70), (3, 2, 5, 9)],
                         ids=lambda s: "b{}_d{}_n{}_L{}".format(*s))
def test_initial_state_matches_reference(shape):
    """A scan from a given state (checkpoints, padded lanes, two lane groups) against the reference from that state:
    y, the last state and the gradient of every input and of the initial state, to 1e-5."""
    batch, d_inner, d_state, _ = shape
    inputs = make_inputs(*shape, seed=13)
    initial = torch.randn(batch, d_inner, d_state, generator=torch.Generator().manual_seed(14)).requires_grad_()
    wrt = [*inputs.values(), initial]
    ours = cpu_kernel.selective_scan_cpu(**inputs, delta_softplus=True, return_last_state=True, initial_state=initial)
    ref = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True, initial_state=initial)
    for name, o, r in zip(("y", "last_state"), ours, ref):
        assert_close_rel(o, r, 1e-5, name)
    g = torch.Generator().manual_seed(15)
    grads_out = [torch.randn(r.shape, generator=g) for r in ref]
    grads = [torch.autograd.grad(sum((t * go).sum() for t, go in zip(out, grads_out)), wrt) for out in (ours, ref)]
    for name, a, b in zip([*inputs, "initial_state"], *grads, strict=True):
        assert_close_rel(a, b, 1e-5, f"grad {name}")


def test_initial_state_gradcheck_float64():
    inputs = make_inputs(1, 2, 3, 70, seed=5, dtype=torch.float64)
    initial = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(*xs):
        return cpu_kernel.selective_scan_cpu(*xs[:-1], delta_softplus=True, return_last_state=True,
                                             initial_state=xs[-1])

    assert torch.autograd.gradcheck(fn, [inputs[k] for k in NAMES] + [initial], eps=1e-6, atol=1e-7)


def test_last_state_is_final_hidden_state():
    inputs = make_inputs(2, 3, 16, 200, seed=7, softplus=False)
    core = [inputs[k].detach() for k in ("u", "delta", "A", "B", "C")]
    y, last = cpu_kernel.selective_scan_cpu(*core, return_last_state=True)
    y_alone = cpu_kernel.selective_scan_cpu(*core)
    assert last.shape == (2, 3, 16)
    torch.testing.assert_close(y, y_alone, rtol=0, atol=0)
    assert_close_rel(last, loop_scan(*core)[1], 1e-5, "last_state")


def test_thread_count_does_not_change_results():
    inputs = make_inputs(2, 8, 16, 100, seed=11)
    core = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y = cpu_kernel.selective_scan_cpu(*core, inputs["D"], inputs["z"], inputs["delta_bias"], True)
            results.append([y.detach()] + list(torch.autograd.grad(y.square().sum(), core)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_saved_memory_is_linear_in_length():
    """Saved for backward: the inputs plus one state every checkpoint interval, never (b, d, L, N)."""
    b, d, n, length = 1, 4, 16, 1000
    inputs = make_inputs(b, d, n, length)
    y = cpu_kernel.selective_scan_cpu(*[inputs[k] for k in NAMES], delta_softplus=True)
    interval = cpu_kernel.checkpoint_interval()
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    checkpoints = [t for t in saved if t.dim() == 4]
    assert [tuple(t.shape) for t in checkpoints] == [(b, d, math.ceil(length / interval), n)]
    assert sum(t.numel() for t in saved) - sum(v.numel() for v in inputs.values()) == checkpoints[0].numel()
    with torch.no_grad():
        y = cpu_kernel.selective_scan_cpu(*[inputs[k] for k in NAMES], delta_softplus=True)
    assert y.grad_fn is None


def test_low_precision_input_returns_its_dtype():
    inputs = make_inputs(1, 2, 4, 20)
    core = [inputs[k].detach() for k in ("u", "delta", "A", "B", "C")]
    y = cpu_kernel.selective_scan_cpu(core[0].bfloat16(), *core[1:])
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), loop_scan(core[0].bfloat16().float(), *core[1:])[0].float(),
                               rtol=1e-2, atol=1e-2)


def test_rejects_unsupported_shapes():
    inputs = {k: v.detach() for k, v in make_inputs(1, 2, 4, 10).items()}
    core = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="input-dependent"):
        cpu_kernel.selective_scan_cpu(*core[:3], core[3][:, None], core[4])
    with pytest.raises(RuntimeError, match="B and C"):
        cpu_kernel.selective_scan_cpu(*core[:3], core[3][:, :3], core[4])
    with pytest.raises(RuntimeError, match="A must be"):
        cpu_kernel.selective_scan_cpu(core[0], core[1], core[2][:1], core[3], core[4])


def test_benchmark_cli_writes_results(tmp_path):
    """The benchmark's own plumbing (one fresh process per case, table, JSON) on a tiny setting."""
    bench = load_benchmark("bench_scan")
    argv = ["--out", str(tmp_path), "--impls", "ours", "mambapy", "--lengths", "16", "40", "--d-states", "4",
            "--d-inner", "8", "--modes", "forward_backward", "--threads", "1"]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    ours = [c for c in report["cases"] if c["impl"] == "ours"]
    assert [c["length"] for c in ours] == [16, 40]
    assert all(c["status"] == "ok" and c["time_s"] > 0 and c["peak_mb"] >= 0 for c in ours)
    table = (tmp_path / "results.md").read_text()
    assert "| forward_backward | 4 | 40 |" in table


def test_a_lock_left_by_a_killed_build_does_not_hang_later_runs(tmp_path):
    """A process killed while building (e.g. a preempted training on first use) leaves torch's build lock behind;
    torch waits on it forever. A lock older than any build is removed, with a warning, and the kernel loads."""
    assert cpu_kernel.is_available()
    name = cpu_kernel._build_name()
    cached = _get_build_directory(name, verbose=False)
    shutil.copytree(cached, tmp_path / name)  # the finished build, so the child process need not compile
    lock = tmp_path / name / "lock"
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    child = subprocess.run(
        [sys.executable, "-c", "from mamba_hubert.ops import cpu_kernel; print(cpu_kernel.is_available())"],
        check=True, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "True", child.stderr
    assert "stale" in child.stderr and str(lock) in child.stderr and not lock.exists()
    young = tmp_path / "young"
    young.mkdir()
    (young / "lock").touch()  # a build running now keeps its lock
    cpu_kernel.remove_stale_lock(str(young))
    assert (young / "lock").exists()
