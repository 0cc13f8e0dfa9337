"""Paper-size configs build the sizes the anchors report (Lin et al.: Mamba base 78.2 M, Transformer 94.7 M)."""

import os
from pathlib import Path

import pytest
from fairseq import tasks
from hydra import compose, initialize_config_dir

from mamba_hubert.models.param_count import DEFAULT_CONFIG_DIR, build_from_config, count_parameters, main


@pytest.mark.parametrize("config,expected_millions", [("mamba_base_iter2", 78.2), ("transformer_base_iter2", 94.7)])
def test_paper_sizes(config, expected_millions):
    total = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, config, num_classes=500))["total"]
    assert abs(total / 1e6 - expected_millions) / expected_millions < 0.01


def test_tiny_demo_models_are_matched():
    mamba = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, "tiny_conbimamba", 100))["total"]
    transformer = count_parameters(build_from_config(DEFAULT_CONFIG_DIR, "tiny_transformer", 100))["total"]
    assert abs(mamba - transformer) / transformer < 0.05


def fairseq_built_parameters(config: str, data: Path, num_classes: int) -> int:
    """Parameters of the model fairseq itself builds from the composed config (task and model registries)."""
    with initialize_config_dir(config_dir=os.path.abspath(DEFAULT_CONFIG_DIR), version_base=None):
        cfg = compose(config_name=config, overrides=[f"task.data={data}", f"task.label_dir={data}"])
    task = tasks.setup_task(cfg.task)
    return sum(p.numel() for p in task.build_model(cfg.model).parameters())


def test_cli_prints_the_parameters_of_the_models_fairseq_builds(capsys, tmp_path):
    (tmp_path / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(100)))
    main(["tiny_mamba", "tiny_transformer", "tiny_conbimamba_fbank", "--num-classes", "100"])
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    for config in ("tiny_mamba", "tiny_transformer", "tiny_conbimamba_fbank"):
        assert float(rows[config][0]) == pytest.approx(fairseq_built_parameters(config, tmp_path, 100) / 1e6,
                                                       abs=0.005)
    # the front end as built: the CNN, or log-mel + two convs of 128 channels (80 x 128 x 3 + 128 x 128 x 3, two
    # layer norms) without the CNN that HubertModel builds first
    assert float(rows["tiny_mamba"][2]) == pytest.approx(0.174, abs=0.0005)
    assert float(rows["tiny_conbimamba_fbank"][2]) == pytest.approx(0.080, abs=0.0005)
