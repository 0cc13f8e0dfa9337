"""A user's mistake at each command-line tool ends it with one line naming the problem and a non-zero exit, before
any work: no traceback, no empty output left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_hubert.demo.fairseq_tools import PLUGIN_DIR

REPO = Path(__file__).resolve().parents[1]


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` with this checkout's package first on the path (what the console script runs)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], check=False, capture_output=True, text=True, env=env,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


def test_corpus_refuses_a_negative_size_and_a_file_as_output(tmp_path):
    assert_one_line_error(run_tool("mamba_hubert.data.corpus", "--out", str(tmp_path / "c"), "--minutes", "-5"),
                          "--minutes must be positive")
    assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_tool("mamba_hubert.data.corpus", "--out", str(tmp_path / "file")),
                          "is a file, not a directory")


def test_mi_names_a_missing_checkpoint_a_truncated_one_and_a_missing_manifest(mamba_hubert_checkpoint,
                                                                              tone_corpus, tmp_path):
    common = ["--data", str(tone_corpus), "--out", str(tmp_path / "mi"), "--labels", "none"]
    assert_one_line_error(run_tool("mamba_hubert.analysis.cli", "--checkpoint", str(tmp_path / "missing.pt"),
                                   *common), "checkpoint not found", "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(mamba_hubert_checkpoint.read_bytes()[:5000])
    assert_one_line_error(run_tool("mamba_hubert.analysis.cli", "--checkpoint", str(truncated), *common),
                          "cannot load checkpoint", "truncated.pt")
    assert_one_line_error(run_tool("mamba_hubert.analysis.cli", "--checkpoint", str(mamba_hubert_checkpoint),
                                   *common, "--subset", "nosuch"), "nosuch.tsv not found")


def test_layer_features_refuse_a_layer_the_model_does_not_have(mamba_hubert_checkpoint, tone_corpus, tmp_path):
    result = run_tool("mamba_hubert.data.layer_features", "--checkpoint", str(mamba_hubert_checkpoint), "--data",
                      str(tone_corpus), "--split", "valid", "--layer", "99", "--out", str(tmp_path / "feat"))
    assert_one_line_error(result, "layer 99", "encoder layers 1 .. 2")
    assert not list(tmp_path.glob("feat/*"))


def test_fairseq_generate_names_a_pretraining_checkpoint(mamba_hubert_checkpoint, tone_corpus, tmp_path):
    generate = Path(sys.executable).parent / "fairseq-generate"
    result = subprocess.run(
        [str(generate), str(tone_corpus), "--user-dir", str(PLUGIN_DIR), "--task", "mamba_hubert_pretraining",
         "--fine-tuning", "--labels", '["ltr"]', "--single-target", "--pad-audio", "--label-dir", str(tone_corpus),
         "--path", str(mamba_hubert_checkpoint), "--gen-subset", "valid", "--cpu", "--max-tokens", "1000000"],
        check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert_one_line_error(result, "fine-tuned CTC models", "MambaHubertModel", "fine-tune it first")


@pytest.mark.parametrize("module, args, words", [
    ("mamba_hubert.data.mfcc", ["--data", "/nonexistent", "--split", "train", "--out", "/tmp/x"], ["no manifest"]),
    ("mamba_hubert.data.kmeans", ["--feat-dir", "/nonexistent", "--label-dir", "/tmp/x", "--n-clusters", "4"],
     ["no feature directory"]),
    ("mamba_hubert.data.ngram_lm", ["--text", "/nonexistent.txt", "--out", "/tmp/x.arpa"], ["no text file"]),
    ("mamba_hubert.demo.paper", ["--mi-seeds", "1"], ["--mi-seeds must be at least 2"]),
])
def test_other_tools_refuse_missing_inputs(module, args, words):
    assert_one_line_error(run_tool(module, *args), *words)
