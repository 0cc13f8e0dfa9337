"""The example configs compose the way fairseq-hydra-train composes them: a tiny_<layer>.yaml keeps its own values
although tiny_base is merged after it (a key set in both takes tiny_base's, which once gave the Transformer the
Mamba models' learning rate); the fine-tuning configs keep their model and learning rate; the reconstruction configs
build models of the stated size."""

import os

import pytest
from hydra import compose as compose_config
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR
from mamba_hubert.models.spectrum_reconstruction import SpectrumReconstructionConfig, SpectrumReconstructionModel


@pytest.mark.parametrize("name,lr", [("tiny_transformer", 0.001), ("tiny_conbimamba", 0.003), ("tiny_mamba", 0.005),
                                     ("tiny_ext_bimamba", 0.003), ("tiny_inn_bimamba", 0.005),
                                     ("tiny_transbimamba", 0.005), ("tiny_mamba2", 0.005),
                                     ("tiny_ext_bimamba2", 0.003)])
def test_tiny_configs_keep_their_own_learning_rate_and_layer_type(name, lr):
    with initialize_config_dir(config_dir=os.path.abspath(DEFAULT_CONFIG_DIR), version_base=None):
        cfg = compose_config(config_name=name)
    assert list(cfg.optimization.lr) == [lr]
    assert cfg.model.layer_type == name.removeprefix("tiny_")
    assert cfg.model.extractor_mode == "default" and cfg.optimization.max_update == 400  # from tiny_base


def compose(group: str, name: str):
    with initialize_config_dir(config_dir=os.path.abspath(os.path.join(DEFAULT_CONFIG_DIR, "..", group)),
                               version_base=None):
        return compose_config(config_name=name)


@pytest.mark.parametrize("name, model, lr, head", [
    ("tiny_ctc", "hubert_ctc", 0.003, None), ("tiny_asr_linear", "mamba_hubert_asr", 0.003, "none"),
    ("tiny_asr_conformer", "mamba_hubert_asr", 0.003, "conformer"),
    ("base_100h_linear", "mamba_hubert_asr", 0.00003, "none"),
    ("base_100h_conformer", "mamba_hubert_asr", 0.001, "conformer"),
])
def test_finetune_configs_keep_their_model_and_learning_rate(name, model, lr, head):
    cfg = compose("finetune", name)
    assert cfg.model._name == model and list(cfg.optimization.lr) == [lr]
    assert cfg.model.get("head_layer_type") == head
    assert cfg.task.fine_tuning and cfg.task.pad_audio and cfg.criterion._name == "ctc"


@pytest.mark.parametrize("name, millions", [("tiny_inn_bimamba", 0.85), ("base_inn_bimamba", 48.30)])
def test_reconstruction_configs_build(name, millions):
    cfg = compose("reconstruction", name)
    model_cfg = OmegaConf.merge(OmegaConf.structured(SpectrumReconstructionConfig), cfg.model)
    model = SpectrumReconstructionModel(model_cfg)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)
    assert cfg.task._name == cfg.criterion._name == "spectrum_reconstruction"


def test_streaming_config_builds_a_model_that_streams():
    """tiny_mamba2_streaming: tiny_mamba2's values, with streaming/causal's merged last (tiny_base's positional conv
    and default extractor would otherwise win), so StreamingEncoder takes the model."""
    from mamba_hubert.inference.streaming import StreamingEncoder
    from mamba_hubert.models.param_count import build_from_config

    with initialize_config_dir(config_dir=os.path.abspath(DEFAULT_CONFIG_DIR), version_base=None):
        cfg = compose_config(config_name="tiny_mamba2_streaming")
    assert cfg.model.layer_type == "mamba2" and list(cfg.optimization.lr) == [0.005]
    assert cfg.model.conv_pos == 0 and cfg.model.extractor_mode == "fbank"
    StreamingEncoder(build_from_config(DEFAULT_CONFIG_DIR, "tiny_mamba2_streaming", 10).eval())
