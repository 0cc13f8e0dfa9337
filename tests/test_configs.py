"""The example configs compose the way fairseq-hydra-train composes them: a tiny_<layer>.yaml keeps its own values
although tiny_base is merged after it (a key set in both takes tiny_base's, which once gave the Transformer the
Mamba models' learning rate)."""

import os

import pytest
from hydra import compose, initialize_config_dir

from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR


@pytest.mark.parametrize("name,lr", [("tiny_transformer", 0.001), ("tiny_conbimamba", 0.003), ("tiny_mamba", 0.005),
                                     ("tiny_ext_bimamba", 0.003), ("tiny_inn_bimamba", 0.005),
                                     ("tiny_transbimamba", 0.005)])
def test_tiny_configs_keep_their_own_learning_rate_and_layer_type(name, lr):
    with initialize_config_dir(config_dir=os.path.abspath(DEFAULT_CONFIG_DIR), version_base=None):
        cfg = compose(config_name=name)
    assert list(cfg.optimization.lr) == [lr]
    assert cfg.model.layer_type == name.removeprefix("tiny_")
    assert cfg.model.extractor_mode == "default" and cfg.optimization.max_update == 400  # from tiny_base
