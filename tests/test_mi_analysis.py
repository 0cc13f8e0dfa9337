"""Layer-wise MI: the captured layers of each model kind (through an ASR model's upstream and head), padding does not
change them, the training hook logs the values an offline run gives, and the CLI writes JSON, verdicts and plots."""

import json

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from mamba_hubert.analysis.capture import capture_layer_frames
from mamba_hubert.analysis.cli import load_probe_set
from mamba_hubert.analysis.cli import main as mi_cli
from mamba_hubert.analysis.layerwise import layerwise_mi
from mamba_hubert.demo.fairseq_tools import hydra_train
from mamba_hubert.frames import conv_output_length
from mamba_hubert.models.spectrum_reconstruction import SpectrumReconstructionConfig, SpectrumReconstructionModel
from tests.conftest import SMALL_HEAD, build_asr_model, tiny_model
from tests.fairseq_runs import SMALL_MODEL, finetune_overrides, make_tone_corpus, pretrain_overrides


def waves(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 12345, 7000)]


@pytest.mark.parametrize("layer_type, overrides", [("conbimamba", {}), ("transformer", {}),
                                                   ("conbimamba", {"extractor_mode": "fbank", "label_rate": 100})])
def test_captured_frames_do_not_depend_on_batching(layer_type, overrides):
    model = tiny_model(layer_type, **overrides).eval()
    alone = capture_layer_frames(model, waves(), batch_size=1)
    batched = capture_layer_frames(model, waves(), batch_size=4)
    with torch.no_grad():  # every valid frame kept, no padded one
        assert [len(x) for x in batched.inputs] == [
            model.extract_features(torch.from_numpy(w)[None])[0].shape[1] for w in waves()]
    for a, b in zip(alone.inputs, batched.inputs):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    for layer_a, layer_b in zip(alone.layers, batched.layers):
        for a, b in zip(layer_a, layer_b):
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("upstream_layer, stages", [(0, ["upstream"] * 2 + ["head"] * 2), (1, ["upstream", "head", "head"])])
def test_asr_model_layers_run_through_upstream_and_head(mamba_hubert_checkpoint, tone_corpus, upstream_layer, stages):
    model = build_asr_model(mamba_hubert_checkpoint, tone_corpus, upstream_layer=upstream_layer,
                            head_layer_type="conformer", **SMALL_HEAD).eval()
    alone = capture_layer_frames(model, waves(), batch_size=1)
    batched = capture_layer_frames(model, waves(), batch_size=4)
    assert alone.stages == batched.stages == stages
    for layer_a, layer_b in zip(alone.layers, batched.layers):
        for a, b in zip(layer_a, layer_b):
            assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    # the last captured layer is what the CTC projection reads
    wav = torch.from_numpy(waves()[0])[None]
    with torch.no_grad():
        encoder = model.w2v_encoder
        head_out, _ = encoder.head(encoder.head_proj(encoder.upstream_features(wav, torch.zeros_like(wav).bool())[0]))
    np.testing.assert_allclose(alone.layers[-1][0], head_out[0].numpy(), atol=1e-5)
    assert alone.layers[-1][0].shape[1] == SMALL_HEAD["head_embed_dim"] and alone.inputs[0].shape[1] == 64


def test_reconstruction_model_layers():
    torch.manual_seed(0)
    model = SpectrumReconstructionModel(SpectrumReconstructionConfig(
        layer_type="inn_bimamba", encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=0, conv_pos=0,
        mamba_d_state=8, n_mels=32)).eval()
    frames = capture_layer_frames(model, waves(), batch_size=4)
    assert frames.stages == ["encoder"] * 3
    for u, wave in enumerate(waves()):
        steps = int(model.output_lengths(torch.tensor(len(wave))))
        assert frames.inputs[u].shape == (steps, 32) and frames.layers[2][u].shape == (steps, 32)
        with torch.no_grad():
            target, _ = model.spectrogram(torch.from_numpy(wave)[None], None)
            np.testing.assert_allclose(frames.inputs[u], model.input_proj(target)[0].numpy(), atol=1e-5)


def test_layerwise_mi_is_the_same_with_different_padding():
    torch.manual_seed(0)
    model = tiny_model("ext_bimamba").eval()
    labels = [np.arange(conv_output_length(len(w))) % 3 for w in waves()]  # one label per valid frame
    kwargs = {"seeds": (0,), "mine_iterations": 200}
    alone = layerwise_mi(model, waves(), labels, batch_size=1, **kwargs)
    padded = layerwise_mi(model, waves(), labels, batch_size=4, **kwargs)
    for a, b in zip(alone, padded):
        for key in ("mi_xt", "mi_xt_smile", "mi_ty"):
            assert a[key]["mean"] == pytest.approx(b[key]["mean"], abs=1e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mi")
    corpus = make_tone_corpus(root / "tones")
    log = hydra_train("pretrain/tiny_conbimamba", pretrain_overrides(
        corpus, root / "ckpt", "optimization.max_update=2", "task.mi_interval_updates=1",
        "task.mi_probe_utterances=2", "task.mi_mine_iterations=50", "task.mi_seeds=1", *SMALL_MODEL),
        root / "train.log")
    return corpus, root / "ckpt" / "checkpoint_last.pt", log


def test_training_hook_logs_the_values_an_offline_run_gives(trained):
    """The hook's values at the last validation equal `layerwise_mi` on the saved model and the same probe set."""
    corpus, checkpoint, log = trained
    valid_lines = [line for line in log.splitlines() if "valid on 'valid' subset" in line]
    assert valid_lines and all("mi_xt_layer1" in line and "mi_xt_layer2" in line for line in valid_lines)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    probe, _ = load_probe_set(str(corpus), "valid", 2, None)
    offline = layerwise_mi(models[0], probe, seeds=range(1), mine_iterations=50, max_frames=2000)
    for key in ("mi_xt", "mi_xt_smile"):
        logged = [float(valid_lines[-1].split(f"{key}_layer{i} ")[1].split()[0]) for i in (1, 2)]
        assert logged == pytest.approx([row[key]["mean"] for row in offline], abs=1e-3), key


def test_cli_on_an_asr_checkpoint_writes_the_stack_verdicts_and_plots(trained, tmp_path):
    """A fine-tuned mamba_hubert_asr with a Conformer head: upstream then head layers on one axis, a verdict per
    estimator, and an I(T;Y) that finds the tones' pitch (the frame label here)."""
    corpus, pretrained, _ = trained
    finetuned = tmp_path / "ft"
    hydra_train("finetune/tiny_asr_conformer", finetune_overrides(
        corpus, finetuned, pretrained, "optimization.max_update=2", "model.head_layers=1", "model.head_embed_dim=32",
        "model.head_ffn_embed_dim=64", "model.head_conv_pos=16", "model.head_conv_pos_groups=4"), tmp_path / "ft.log")
    pitches = [line.split()[0] for line in (corpus / "train.km").read_text().splitlines()]
    (corpus / "train.pitch").write_text("".join(
        " ".join([pitch] * n) + "\n" for pitch, n in zip(pitches, _frame_counts(corpus / "train.tsv"))))
    (corpus / "dict.pitch.txt").write_text("".join(f"{p} 1\n" for p in sorted(set(pitches))))
    mi_cli(["--checkpoint", str(finetuned / "checkpoint_last.pt"), "--name", "asr", "--data", str(corpus),
            "--subset", "train", "--labels", "pitch", "--mine-iterations", "50", "--seeds", "0", "1",
            "--out", str(tmp_path / "mi")])
    result = json.loads((tmp_path / "mi" / "mi.json").read_text())
    rows = result["layers"]["asr"]
    assert [(r["layer"], r["stage"]) for r in rows] == [(1, "upstream"), (2, "upstream"), (3, "head")]
    assert all(len(r[key]["values"]) == 2 for r in rows for key in ("mi_xt", "mi_xt_smile", "mi_ty"))
    assert rows[0]["mi_ty"]["mean"] > 0.2  # pitch is plain in the features (log 5 = 1.61 nats at most)
    verdicts = result["verdicts"]["asr"]
    assert set(verdicts) == {"mine", "smile"}
    assert all(v["verdict"] in ("falls", "rises", "falls then rises", "flat") for v in verdicts.values())
    assert result["marginals"] == "within_group" and "within-utterance" in result["xt_quantity"]
    for name in ("mi_xt.png", "mi_xt_smile.png", "mi_ty.png", "information_plane.png"):
        assert (tmp_path / "mi" / name).stat().st_size > 1000


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
