"""`mamba-hubert-transcribe` on a tiny fine-tuned causal Mamba model: the words fairseq-generate decodes for the same
files, and one-line errors for a user's mistakes."""

import subprocess
import sys
from pathlib import Path

import pytest

from mamba_hubert.demo.fairseq_tools import generate_wer, generation_results, hydra_train
from mamba_hubert.inference import transcribe
from tests.fairseq_runs import SMALL_MODEL, finetune_overrides, make_tone_corpus, pretrain_overrides

# layer_type=mamba, conv_pos=0 and a per-frame extractor norm: a model that can also stream
CAUSAL = ["model.extractor_mode=layer_norm", "model.conv_pos=0"]


@pytest.fixture(autouse=True)
def no_unsafe_loading(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)  # checkpoints must load without it


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tone corpus, a causal tiny_mamba pretrained for 1 update and fine-tuned with hubert_ctc for 3."""
    root = tmp_path_factory.mktemp("transcribe")
    corpus = make_tone_corpus(root / "tones", splits=(("train", 8), ("valid", 3)))
    hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, root / "pt", "optimization.max_update=1",
                                                          *SMALL_MODEL, *CAUSAL), root / "pretrain.log", threads=1)
    hydra_train("finetune/tiny_ctc", finetune_overrides(corpus, root / "ft", root / "pt" / "checkpoint_last.pt",
                                                        "optimization.max_update=3", "model.freeze_finetune_updates=0"),
                root / "finetune.log", threads=1)
    return root


def transcribe_lines(capsys, *argv: str) -> dict[str, str]:
    transcribe.main(list(argv))
    return dict(line.split("\t") for line in capsys.readouterr().out.splitlines())


def test_greedy_text_is_fairseq_generates(run, capsys):
    corpus, checkpoint = run / "tones", run / "ft" / "checkpoint_last.pt"
    generate_wer(corpus, corpus, checkpoint, "valid", run / "decode", threads=1)
    lines = generation_results(run / "decode", "valid").read_text().splitlines()
    hypotheses = {int(line.split("\t")[0][2:]): line.split("\t")[2] for line in lines if line.startswith("D-")}
    wavs = [str(corpus / line.split("\t")[0]) for line in (corpus / "valid.tsv").read_text().splitlines()[1:]]
    printed = transcribe_lines(capsys, str(checkpoint), *wavs)
    assert list(printed) == wavs
    assert [printed[wav] for wav in wavs] == [hypotheses[i] for i in range(len(wavs))]
    assert any(hypotheses.values())  # the comparison is not between empty strings only


def error_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(list(argv))
    assert exit_info.value.code != 0
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("mamba-hubert-transcribe: error: ")
    return message


def test_missing_and_unreadable_files_are_one_line(run, capsys, tmp_path):
    checkpoint = str(run / "ft" / "checkpoint_last.pt")
    missing = str(tmp_path / "nothing.wav")
    assert f"{missing}: no such file" in error_line(capsys, checkpoint, missing)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    assert f"{garbage}: not readable audio" in error_line(capsys, checkpoint, str(garbage))


def test_pretraining_checkpoint_is_refused(run, capsys):
    wav = str(run / "tones" / "wav" / "valid0.wav")
    message = error_line(capsys, str(run / "pt" / "checkpoint_last.pt"), wav)
    assert "checkpoint_last.pt: a MambaHubertModel (pretraining) checkpoint, not a fine-tuned CTC model" in message


def test_console_script_runs(run):
    """The entry point in setup.py, as a user runs it (the installed script, or the module where not installed)."""
    wav = str(run / "tones" / "wav" / "valid0.wav")
    script = Path(sys.executable).parent / "mamba-hubert-transcribe"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mamba_hubert.inference.transcribe"]
    result = subprocess.run([*command, str(run / "ft" / "checkpoint_last.pt"), wav], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{wav}\t")
