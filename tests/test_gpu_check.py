"""What of `make gpu-check` can be checked without a GPU: bench_gpu.py --quick's results, the nvcc wrapper that
keeps the CUDA builds to one architecture, the scripts' syntax and the check's stop before its first CUDA step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("gpu_bundle.sh", "gpu_check.sh", "gpu_kernels.sh", "nvcc_one_arch.sh")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], check=True)


def test_nvcc_wrapper_compiles_for_the_present_architecture_only(tmp_path):
    fake_nvcc = tmp_path / "nvcc"
    fake_nvcc.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake_nvcc.chmod(0o755)
    env = {**os.environ, "NVCC_REAL": str(fake_nvcc), "GPU_CHECK_ARCH": "90"}
    arguments = ["-O3", "-gencode", "arch=compute_75,code=sm_75", "-gencode=arch=compute_80,code=sm_80",
                 "-gencode", "arch=compute_90,code=sm_90", "--threads", "4", "-lineinfo", "-c", "a.cu"]
    done = subprocess.run([str(REPO / "scripts" / "nvcc_one_arch.sh"), *arguments], env=env, check=True,
                          capture_output=True, text=True)
    assert done.stdout.split() == ["-O3", "--threads", "4", "-c", "a.cu", "--no-compress", "-gencode",
                                   "arch=compute_90,code=sm_90"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU machine's stop before the CUDA steps")
def test_check_stops_before_its_first_cuda_step(tmp_path):
    """On a prepared venv (this one) with --skip-install: the steps without a GPU run, then exit status 3."""
    env = {**os.environ, "GPU_CHECK_VENV": sys.prefix, "OUT": str(tmp_path), "GPU_CHECK_WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--skip-install"], check=False, env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "no CUDA device: stopped before cuda kernels" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 3, done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stopped_before"] == "cuda kernels" and report["prebuilt"] == "not tried"
    skipped = "skipped (--skip-install)"
    assert {s["name"]: s["status"] for s in report["steps"]} == {
        "unpack bundle": skipped, "venv": skipped, "check preinstalled": skipped, "install wheels": skipped,
        "install compiled": skipped, "install project": skipped, "check imports": "ok",
        "check mamba-ssm imports": skipped, "test fp16 bf16": "ok"}
    low_precision = next(s for s in report["steps"] if s["name"] == "test fp16 bf16")
    assert low_precision["tests"]["tests"] > 0 and low_precision["tests"]["failures"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run's fields; a GPU run is the check itself")
def test_bench_gpu_quick_writes_its_results(tmp_path):
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["device"] == "cpu"
    assert {"torch", "cuda", "gpu", "cpu", "mamba_ssm"} <= results["machine"].keys()
    steps = results["training_step"]
    assert [s["model"] for s in steps] == ["tiny_mamba", "tiny_conbimamba", "tiny_transformer"]
    for step in steps:
        assert step["status"] == "ok" and step["time_s"] > 0 and step["parameters"] > 0 and "peak_mb" in step
    layer = results["mamba_layer"]
    assert layer["mamba_ssm"].startswith("skipped (no CUDA device")
    assert [(c["precision"], c["pass"]) for c in layer["cases"]] == [
        ("fp32", "forward"), ("fp32", "forward+backward"), ("bf16", "forward"), ("bf16", "forward+backward")]
    for case in layer["cases"]:
        assert case["ours"]["status"] == "ok" and case["ours"]["time_s"] > 0
        assert "mamba_ssm" not in case and "ratio_ours_over_mamba_ssm" not in case
    assert (tmp_path / "results.md").read_text().startswith("# GPU benchmark (quick, cpu)")


def write_build_info(folder: Path, **changes: str) -> Path:
    """A build_info.json for this very interpreter and torch, with `changes`; the folder."""
    info = {"torch": torch.__version__, "torch_git_version": torch.version.git_version, "cuda": torch.version.cuda,
            "python_tag": f"cp{sys.version_info.major}{sys.version_info.minor}", "compute_capability": "9.0",
            "glibc_needed": "2.17", "wheels": [], "builds": {}, **changes}
    folder.mkdir(exist_ok=True)
    (folder / "build_info.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize(("changes", "capability", "difference"), [
    ({}, None, None),
    ({}, "9.0", None),
    ({"torch_git_version": "0" * 40}, None, "torch_git_version: built for 0000"),
    ({"python_tag": "cp312"}, None, "python_tag: built for cp312"),
    ({"cuda": "12.8"}, None, "cuda: built for 12.8"),
    ({}, "8.0", "compute_capability: built for 9.0, here 8.0"),
    ({"glibc_needed": "9.99"}, None, "glibc: the wheels need 9.99"),
])
def test_prebuilt_kernels_are_used_only_where_they_fit(tmp_path, changes, capability, difference):
    """gpu_check.sh installs the prebuilt wheels only where torch's git_version, CUDA, the Python tag, glibc and
    (on a GPU) the compute capability are what they were built against."""
    folder = write_build_info(tmp_path / "prebuilt", **changes)
    command = [sys.executable, str(REPO / "scripts" / "gpu_kernels_info.py"), "match", str(folder)]
    done = subprocess.run(command + (["--capability", capability] if capability else []), capture_output=True,
                          text=True, check=False)
    if difference is None:
        assert done.returncode == 0 and done.stdout.startswith("the prebuilt kernels fit"), done.stdout + done.stderr
    else:
        assert done.returncode == 1 and difference in done.stdout, done.stdout + done.stderr
    missing = subprocess.run(command[:-1] + [str(tmp_path / "none")], capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and missing.stdout.startswith("no prebuilt kernels")


def test_kernel_build_names_what_is_missing(tmp_path):
    """gpu_kernels.sh stops before any venv or download, naming each of nvcc 13.0 and CPython 3.12 it lacks."""
    env = {**os.environ, "CUDA_HOME": str(tmp_path), "GPU_KERNELS_PYTHON": sys.executable,
           "GPU_KERNELS_VENV": str(tmp_path / "venv")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_kernels.sh")], env=env, capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "missing nvcc 13.0" in done.stderr
    assert ("missing CPython 3.12" in done.stderr) == (sys.version_info[:2] != (3, 12))
    assert not (tmp_path / "venv").exists()
