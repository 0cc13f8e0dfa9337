"""fairseq-hydra-train trains a tiny mamba_hubert through the plugin, fairseq's hubert_ctc fine-tunes it, and
fairseq-generate decodes it."""

import pytest
import soundfile as sf
import torch
from fairseq import checkpoint_utils

import mamba_hubert  # noqa: F401  (registers the model and task, and the checkpoint allow-list)
from mamba_hubert.demo.fairseq_tools import generate_wer, generation_results, hydra_train
from tests.fairseq_runs import (
    SMALL_MODEL,
    finetune_overrides,
    make_tone_corpus,
    pretrain_overrides,
    wer_of_printed_hypotheses,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


@pytest.fixture(autouse=True)
def no_unsafe_loading(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)  # checkpoints must load without it


@pytest.mark.parametrize("config, layer_type", [("tiny_mamba", "mamba"), ("tiny_ext_bimamba", "ext_bimamba"),
                                                ("tiny_conbimamba", "conbimamba"),
                                                ("tiny_conbimamba_fbank", "conbimamba"),
                                                ("tiny_mamba2", "mamba2"), ("tiny_ext_bimamba2", "ext_bimamba2")])
def test_pretrain_reload_finetune_and_decode(corpus, tmp_path, config, layer_type):
    save_dir = tmp_path / "pretrain"
    log = hydra_train(f"pretrain/{config}",
                      pretrain_overrides(corpus, save_dir, "optimization.max_update=3", *SMALL_MODEL),
                      tmp_path / "pretrain.log")
    assert "valid on 'valid' subset" in log
    checkpoint = save_dir / "checkpoint_last.pt"
    assert checkpoint.exists() and (save_dir / "checkpoint_best.pt").exists()

    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0].eval()
    assert type(model).__name__ == "MambaHubertModel" and cfg.model.layer_type == layer_type
    wav, _ = sf.read(corpus / "wav" / "valid0.wav", dtype="float32")
    with torch.no_grad():
        features, _ = model.extract_features(torch.from_numpy(wav)[None], padding_mask=None, mask=False)
    assert features.shape[-1] == 64 and torch.isfinite(features).all()
    if config.endswith("_fbank"):  # one frame per 100 Hz k-means label, so HuBERT's loss used every label
        assert cfg.model.extractor_mode == "fbank" and type(model.feature_extractor).__name__ == "FbankFeatureExtractor"
        assert features.shape[1] == len((corpus / "valid.km").read_text().splitlines()[0].split())

    ft_dir = tmp_path / "finetune"
    log = hydra_train("finetune/tiny_ctc", finetune_overrides(corpus, ft_dir, checkpoint, "optimization.max_update=2",
                                                              "model.freeze_finetune_updates=0"),
                      tmp_path / "finetune.log")
    assert "num_updates 2" in log
    ctc_models, ctc_cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(ft_dir / "checkpoint_last.pt")])
    assert ctc_cfg.model._name == "hubert_ctc"
    assert type(ctc_models[0].w2v_encoder.w2v_model).__name__ == "MambaHubertModel"

    wer = generate_wer(corpus, corpus, ft_dir / "checkpoint_last.pt", "valid", tmp_path / "decode")
    results = generation_results(tmp_path / "decode", "valid")
    assert wer == pytest.approx(wer_of_printed_hypotheses(results, corpus / "valid.tsv"), abs=0.01)
