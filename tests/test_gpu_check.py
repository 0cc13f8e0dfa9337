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
    assert "no CUDA device: stopped before build cuda kernels" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 3, done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stopped_before"] == "build cuda kernels"
    assert {s["name"]: s["status"] for s in report["steps"]} == {
        "unpack bundle": "skipped (--skip-install)", "venv": "skipped (--skip-install)",
        "install wheels": "skipped (--skip-install)", "install fairseq": "skipped (--skip-install)",
        "install project": "skipped (--skip-install)", "check imports": "ok",
        "check mamba-ssm imports": "skipped (--skip-install)", "test fp16 bf16": "ok"}
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
