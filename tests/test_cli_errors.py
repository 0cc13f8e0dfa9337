"""A user's mistake at each command-line tool ends it with one line naming the problem and a non-zero exit, before
any work: no traceback, no empty output left behind. The plugin's tools run in-process (their `main`, as the console
script calls it: a SystemExit with a message is what Python prints as one line); one of them and fairseq-generate
also as real subprocesses."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mamba_hubert.analysis import cli as mi_cli
from mamba_hubert.data import corpus, kmeans, mfcc, ngram_lm
from mamba_hubert.demo import paper
from mamba_hubert.demo.fairseq_tools import PLUGIN_DIR

REPO = Path(__file__).resolve().parents[1]


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


def run_tool(main: Callable[[list[str]], None], *args: str, capsys) -> subprocess.CompletedProcess:
    """A tool's `main(args)` in this process, as the process would end: exit status and what it wrote to stderr."""
    with pytest.raises(SystemExit) as ended:
        main(list(args))
    code = ended.value.code
    stderr = capsys.readouterr().err + ("" if isinstance(code, int) or code is None else f"{code}\n")
    return subprocess.CompletedProcess(args, 1 if isinstance(code, str) else code, "", stderr)


def test_corpus_refuses_a_negative_size_and_a_file_as_output(tmp_path, capsys):
    assert_one_line_error(run_tool(corpus.main, "--out", str(tmp_path / "c"), "--minutes", "-5", capsys=capsys),
                          "--minutes must be positive")
    assert not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_tool(corpus.main, "--out", str(tmp_path / "file"), capsys=capsys),
                          "is a file, not a directory")


def test_mi_names_a_missing_checkpoint_a_truncated_one_and_a_missing_manifest(mamba_hubert_checkpoint,
                                                                              tone_corpus, tmp_path, capsys):
    common = ["--data", str(tone_corpus), "--out", str(tmp_path / "mi"), "--labels", "none"]
    assert_one_line_error(run_tool(mi_cli.main, "--checkpoint", str(tmp_path / "missing.pt"), *common,
                                   capsys=capsys), "checkpoint not found", "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(mamba_hubert_checkpoint.read_bytes()[:5000])
    assert_one_line_error(run_tool(mi_cli.main, "--checkpoint", str(truncated), *common, capsys=capsys),
                          "cannot load checkpoint", "truncated.pt")
    assert_one_line_error(run_tool(mi_cli.main, "--checkpoint", str(mamba_hubert_checkpoint), *common, "--subset",
                                   "nosuch", capsys=capsys), "nosuch.tsv not found")
    assert not (tmp_path / "mi").exists()


def test_layer_features_refuse_a_layer_the_model_does_not_have(mamba_hubert_checkpoint, tone_corpus, tmp_path):
    """As a real process: the console script's module, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mamba_hubert.data.layer_features", "--checkpoint", str(mamba_hubert_checkpoint),
         "--data", str(tone_corpus), "--split", "valid", "--layer", "99", "--out", str(tmp_path / "feat")],
        check=False, capture_output=True, text=True, env=env, timeout=300)
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


@pytest.mark.parametrize("main, args, words", [
    (mfcc.main, ["--data", "/nonexistent", "--split", "train", "--out", "/tmp/x"], ["no manifest"]),
    (kmeans.main, ["--feat-dir", "/nonexistent", "--label-dir", "/tmp/x", "--n-clusters", "4"],
     ["no feature directory"]),
    (ngram_lm.main, ["--text", "/nonexistent.txt", "--out", "/tmp/x.arpa"], ["no text file"]),
    (paper.main, ["--mi-seeds", "1"], ["--mi-seeds must be at least 2"]),
])
def test_other_tools_refuse_missing_inputs(main, args, words, capsys):
    assert_one_line_error(run_tool(main, *args, capsys=capsys), *words)
