"""The training task refuses bad data before training starts, naming the file and line."""

import pytest

from mamba_hubert.pipeline import hydra_train
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
    corpus = make_tone_corpus(tmp_path / "tones")
    (corpus / "wav" / "train3.wav").unlink()
    with pytest.raises(RuntimeError) as failure:
        hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, tmp_path / "ckpt", "optimization.max_update=2",
                                                              *SMALL_MODEL), tmp_path / "train.log")
    assert "train.tsv:5" in str(failure.value) or "train3.wav" in str(failure.value)
