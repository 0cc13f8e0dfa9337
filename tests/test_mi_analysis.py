"""Layer-wise MI: padding does not change it, the training hook logs it, and the CLI writes JSON and plots."""

import json

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from mamba_hubert.analysis.capture import capture_layer_frames
from mamba_hubert.analysis.cli import main as mi_cli
from mamba_hubert.analysis.layerwise import layerwise_mi
from mamba_hubert.frames import conv_output_length
from mamba_hubert.pipeline import hydra_train
from tests.conftest import tiny_model
from tests.fairseq_runs import SMALL_MODEL, make_tone_corpus, pretrain_overrides


def waves(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 12345, 7000)]


@pytest.mark.parametrize("layer_type", ["conbimamba", "transformer"])
def test_captured_frames_do_not_depend_on_batching(layer_type):
    model = tiny_model(layer_type).eval()
    alone = capture_layer_frames(model, waves(), batch_size=1)
    batched = capture_layer_frames(model, waves(), batch_size=4)
    for a, b in zip(alone.inputs, batched.inputs):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    for layer_a, layer_b in zip(alone.layers, batched.layers):
        for a, b in zip(layer_a, layer_b):
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)


def test_layerwise_mi_is_the_same_with_different_padding():
    torch.manual_seed(0)
    model = tiny_model("ext_bimamba").eval()
    labels = [np.arange(conv_output_length(len(w))) % 3 for w in waves()]  # one label per valid frame
    kwargs = {"seeds": (0,), "mine_iterations": 200}
    alone = layerwise_mi(model, waves(), labels, batch_size=1, **kwargs)
    padded = layerwise_mi(model, waves(), labels, batch_size=4, **kwargs)
    for a, b in zip(alone, padded):
        assert a["mi_xt"]["mean"] == pytest.approx(b["mi_xt"]["mean"], abs=1e-3)
        assert a["mi_ty"]["mean"] == pytest.approx(b["mi_ty"]["mean"], abs=1e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mi")
    corpus = make_tone_corpus(root / "tones")
    log = hydra_train("pretrain/tiny_conbimamba", pretrain_overrides(
        corpus, root / "ckpt", "optimization.max_update=2", "task.mi_interval_updates=1",
        "task.mi_probe_utterances=2", "task.mi_mine_iterations=50", "task.mi_seeds=1", *SMALL_MODEL),
        root / "train.log")
    return corpus, root / "ckpt" / "checkpoint_last.pt", log


def test_training_hook_logs_per_layer_mi(trained):
    _, _, log = trained
    valid_lines = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert valid_lines and all("mi_xt_layer1" in line and "mi_xt_layer2" in line for line in valid_lines)


def test_cli_writes_json_and_plots(trained, tmp_path):
    corpus, checkpoint, _ = trained
    (corpus / "valid.phn").write_text("".join(
        " ".join(["a"] * n) + "\n" for n in _frame_counts(corpus / "valid.tsv")))
    (corpus / "dict.phn.txt").write_text("a 1\n")
    mi_cli(["--checkpoint", str(checkpoint), "--name", "tiny", "--data", str(corpus), "--subset", "valid",
            "--mine-iterations", "50", "--seeds", "0", "1", "--out", str(tmp_path / "mi")])
    result = json.loads((tmp_path / "mi" / "mi.json").read_text())
    rows = result["layers"]["tiny"]
    assert [r["layer"] for r in rows] == [1, 2] and len(rows[0]["mi_xt"]["values"]) == 2
    for name in ("mi_xt.png", "mi_ty.png", "information_plane.png"):
        assert (tmp_path / "mi" / name).stat().st_size > 1000
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    assert len(models[0].encoder.layers) == len(rows)


def test_cli_jobs_give_each_name_its_checkpoints_result(trained, tmp_path):
    """--jobs 2: one worker process per checkpoint, one thread each; results keep the order of the names."""
    corpus, checkpoint, _ = trained
    other = tmp_path / "other.pt"  # a second model: the same checkpoint with its first encoder layer zeroed
    state = torch.load(checkpoint, weights_only=False)
    for key in state["model"]:
        if key.startswith("encoder.layers.0."):
            state["model"][key].zero_()
    torch.save(state, other)
    common = ["--data", str(corpus), "--subset", "valid", "--labels", "none", "--mine-iterations", "50",
              "--seeds", "0", "--max-utterances", "2"]
    mi_cli(["--checkpoint", str(checkpoint), "--checkpoint", str(other), "--name", "a", "--name", "b", "--jobs",
            "2", "--out", str(tmp_path / "parallel"), *common])
    for name, path in (("a", checkpoint), ("b", other)):
        mi_cli(["--checkpoint", str(path), "--name", name, "--out", str(tmp_path / name), *common])
    parallel = json.loads((tmp_path / "parallel" / "mi.json").read_text())["layers"]
    for name in ("a", "b"):
        alone = json.loads((tmp_path / name / "mi.json").read_text())["layers"][name]
        assert [r["mi_xt"]["mean"] for r in parallel[name]] == pytest.approx(
            [r["mi_xt"]["mean"] for r in alone], abs=1e-3)
    assert [r["mi_xt"]["mean"] for r in parallel["a"]] != pytest.approx(
        [r["mi_xt"]["mean"] for r in parallel["b"]], abs=1e-3)


def _frame_counts(manifest):
    return [conv_output_length(int(line.split("\t")[1])) for line in manifest.read_text().splitlines()[1:]]
