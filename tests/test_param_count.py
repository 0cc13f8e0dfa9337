"""Paper-size configs build the sizes the anchors report (Lin et al.: Mamba base 78.2 M, Transformer 94.7 M)."""

import pytest

from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config, count_parameters, main


@pytest.mark.parametrize("config,expected_millions", [("mamba_base_iter2", 78.2), ("transformer_base_iter2", 94.7)])
def test_paper_sizes(config, expected_millions):
    total = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, config, num_classes=500))["total"]
    assert abs(total / 1e6 - expected_millions) / expected_millions < 0.01


def test_tiny_demo_models_are_matched():
    mamba = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, "tiny_conbimamba", 100))["total"]
    transformer = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, "tiny_transformer", 100))["total"]
    assert abs(mamba - transformer) / transformer < 0.05


def test_cli_prints_a_table(capsys):
    main(["tiny_mamba", "tiny_transformer"])
    out = capsys.readouterr().out
    assert "tiny_mamba" in out and "tiny_transformer" in out
