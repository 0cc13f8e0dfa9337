"""The training task refuses bad data before training starts, naming the file and line."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mamba_hubert.data.check import AUDIO_MISSING
from mamba_hubert.demo.fairseq_tools import hydra_train
from tests.fairseq_runs import SMALL_MODEL, make_tone_corpus, pretrain_overrides


def test_training_refuses_a_label_file_that_does_not_match_the_manifest(tmp_path):
    corpus = make_tone_corpus(tmp_path / "tones")
    lines = (corpus / "train.km").read_text().splitlines()
    (corpus / "train.km").write_text("\n".join(lines[:-1]) + "\n")  # one utterance without labels
    with pytest.raises(RuntimeError) as failure:
        hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, tmp_path / "ckpt", "optimization.max_update=2",
                                                              *SMALL_MODEL), tmp_path / "train.log")
    message = str(failure.value)
    assert "train.km" in message and "DataValidationError" in message
    assert "num_updates" not in (tmp_path / "train.log").read_text()
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


def test_training_refuses_missing_audio(tmp_path):
    """The plugin's check stops the run when the task loads the split, naming the manifest line; without it fairseq
    would fail only when a batch first reads the file, with an error of its own."""
    corpus = make_tone_corpus(tmp_path / "tones")
    (corpus / "wav" / "train3.wav").unlink()
    with pytest.raises(RuntimeError) as failure:
        hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, tmp_path / "ckpt", "optimization.max_update=2",
                                                              *SMALL_MODEL), tmp_path / "train.log")
    message = str(failure.value)
    assert "DataValidationError" in message and f"train.tsv:5: error: [{AUDIO_MISSING}]" in message
    assert "train3.wav" in message and "num_updates" not in (tmp_path / "train.log").read_text()


def _put_nan_in_every_training_file(corpus):
    for wav_path in sorted((corpus / "wav").glob("train*.wav")):
        wav, rate = sf.read(wav_path, dtype="float32")
        wav[len(wav) // 2] = np.nan
        sf.write(wav_path, wav, rate, subtype="FLOAT")


def test_training_refuses_nan_audio_when_asked_to_scan_samples(tmp_path):
    corpus = make_tone_corpus(tmp_path / "tones")
    _put_nan_in_every_training_file(corpus)
    with pytest.raises(RuntimeError) as failure:
        hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, tmp_path / "ckpt", "optimization.max_update=2",
                                                              "task.check_audio_samples=true", *SMALL_MODEL),
                    tmp_path / "train.log")
    assert "train0.wav" in str(failure.value) and "NaN/Inf" in str(failure.value)
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


def test_nan_reaching_a_batch_stops_training_before_any_step(tmp_path):
    """With the data check off, fairseq's own guard (non-finite gradient norm -> FloatingPointError, then its
    NanDetector naming the first module with a NaN output) stops the run before an optimiser step or a save."""
    corpus = make_tone_corpus(tmp_path / "tones")
    _put_nan_in_every_training_file(corpus)
    with pytest.raises(RuntimeError) as failure:
        hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, tmp_path / "ckpt", "optimization.max_update=2",
                                                              "task.check_data=false", *SMALL_MODEL),
                    tmp_path / "train.log")
    log = (tmp_path / "train.log").read_text()
    assert "FloatingPointError" in str(failure.value) and "NaN detected in output of" in log
    assert not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


def test_the_plugin_imports_the_mi_estimators_only_when_the_probe_runs():
    """fairseq imports the plugin (and so this task) for every run; the probe's estimators load only when it runs."""
    code = "import sys, mamba_hubert; print(sorted(m for m in sys.modules if m.startswith('mamba_hubert.analysis')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
