"""mamba-ssm's Mamba-2 Triton kernels on CPU tensors, under Triton's interpreter (`TRITON_INTERPRET=1`), for tests.

The interpreter runs each kernel's body with numpy over the launch grid. mamba-ssm's Python around the kernels
assumes CUDA in three places, each given a stand-in here, never in the package:
- `with torch.cuda.device(t.device.index)` around every launch: a no-op for a CPU tensor's index (None);
- the backward's `torch.cuda.get_device_properties(device).multi_processor_count`: an H100's 132 SMs for CPU devices;
- autotuning, which benchmarks on a GPU: `MAMBA_DETERMINISTIC=1` makes mamba-ssm keep one config per kernel.
`TRITON_INTERPRET` and `MAMBA_DETERMINISTIC` are read when the kernels are decorated, so mamba-ssm's Triton modules
are imported afresh under them, below a bare `mamba_ssm` package (its `__init__` imports the CUDA build this
machine lacks), and sys.modules is put back afterwards. `mamba_hubert.ops.ssd` then takes its CUDA dispatch for
CPU tensors, and every kernel launch is recorded so that a test can assert which Triton kernels ran.
"""

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest
import torch

from mamba_hubert.ops import ssd

H100_SMS = 132


class TritonInterpreter(NamedTuple):
    """The interpreted `mamba_chunk_scan_combined` and the names of the kernels launched so far (in order)."""

    mamba_chunk_scan_combined: Callable
    launches: list[str]


def _cpu_device_stand_in(real: type) -> Callable:
    def device(index: object) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if index is None else real(index)

    return device


def _cpu_properties_stand_in(real: Callable) -> Callable:
    def get_device_properties(device: object = None) -> object:
        if isinstance(device, torch.device) and device.type == "cpu":
            return types.SimpleNamespace(multi_processor_count=H100_SMS)
        return real(device)

    return get_device_properties


@contextlib.contextmanager
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[TritonInterpreter]:
    """Within it, `ssd_scan_fn` on CPU tensors runs mamba-ssm's Triton kernels in the interpreter; skips the test
    where triton or mamba-ssm's Python part is not installed."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device: mamba-ssm's kernels run compiled there (tests/test_cuda_path.py)")
    pytest.importorskip("triton", reason="Triton's interpreter needs triton (scripts/setup_venv.sh installs it)")
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        pytest.skip("needs mamba-ssm's Python part (scripts/setup_venv.sh installs it)")
    import triton.language.standard
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton.language.standard.cumsum, InterpretedFunction):
        pytest.fail("triton was imported before TRITON_INTERPRET=1 was set (tests/conftest.py sets it)")

    monkeypatch.setenv("MAMBA_DETERMINISTIC", "1")
    monkeypatch.setattr(torch.cuda, "device", _cpu_device_stand_in(torch.cuda.device))
    monkeypatch.setattr(torch.cuda, "get_device_properties", _cpu_properties_stand_in(torch.cuda.get_device_properties))
    launches: list[str] = []
    real_run = InterpretedFunction.run

    def recorded_run(self: InterpretedFunction, *args: object, **kwargs: object) -> object:
        launches.append(self.fn.__name__)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recorded_run)

    def swapped(name: str) -> bool:
        return name == "mamba_ssm" or name.startswith("mamba_ssm.")

    saved = {name: module for name, module in sys.modules.items() if swapped(name)}
    for name in saved:
        del sys.modules[name]
    package = types.ModuleType("mamba_ssm")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["mamba_ssm"] = package
    try:
        combined = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        monkeypatch.setattr(ssd, "_mamba_ssm_chunk_scan", lambda: combined.mamba_chunk_scan_combined)
        monkeypatch.setattr(ssd, "TRITON_DEVICE_TYPES", ssd.TRITON_DEVICE_TYPES | {"cpu"})
        yield TritonInterpreter(combined.mamba_chunk_scan_combined, launches)
    finally:
        for name in [name for name in sys.modules if swapped(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
