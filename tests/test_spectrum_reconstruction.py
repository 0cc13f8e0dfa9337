"""The reconstruction-task model: its log-mel front end against kaldi-native-fbank, padding, seeded masks, the two
no-training baselines, and a real fairseq-hydra-train run of the `spectrum_reconstruction` task."""

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from mamba_hubert.demo.fairseq_tools import hydra_train
from mamba_hubert.models.seeded_masks import seeded_draws
from mamba_hubert.models.spectrum_reconstruction import (
    SpectrumReconstructionConfig,
    SpectrumReconstructionModel,
    reconstruction_baselines,
)
from mamba_hubert.modules.fbank import LogMelFilterbank
from tests.fairseq_runs import logged_records


def kaldi_fbank(wave: np.ndarray, n_mels: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.preemph_coeff = 0.0
    opts.frame_opts.remove_dc_offset = False
    opts.frame_opts.window_type = "hanning"
    opts.mel_opts.num_bins = n_mels
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.mark.parametrize("n_mels, samples", [(80, 16000), (40, 7777)])
def test_log_mel_equals_kaldi_native_fbank(n_mels, samples):
    wave = (np.random.default_rng(0).standard_normal(samples) * 0.1).astype(np.float32)
    fbank = LogMelFilterbank(n_mels)
    ours = fbank(torch.from_numpy(wave)[None])[0].numpy()
    expected = kaldi_fbank(wave, n_mels)
    assert ours.shape == expected.shape == (int(fbank.output_lengths(torch.tensor(samples))), n_mels)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def tiny(layer_type="inn_bimamba", **overrides) -> SpectrumReconstructionModel:
    torch.manual_seed(0)
    fields = {"layer_type": layer_type, "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
              "encoder_attention_heads": 4, "conv_pos": 0, "mamba_d_state": 8, "dropout": 0.0, "dropout_input": 0.0,
              "attention_dropout": 0.0, "n_mels": 32, "mask_bins": 8}
    return SpectrumReconstructionModel(SpectrumReconstructionConfig(**{**fields, **overrides}))


@pytest.mark.parametrize("layer_type", ["inn_bimamba", "conbimamba", "transformer"])
def test_prediction_alone_equals_padded_batch(layer_type):
    model = tiny(layer_type).eval()
    lengths = [16000, 9000, 12345]
    torch.manual_seed(1)
    wav = torch.randn(3, 16000) * 0.1
    mask = torch.arange(16000)[None, :] >= torch.tensor(lengths)[:, None]
    wav = wav.masked_fill(mask, 0.5)
    with torch.no_grad():
        batched = model(wav, mask, mask=False)
        for i, n in enumerate(lengths):
            alone = model(wav[i : i + 1, :n], mask=False)
            steps = int(model.output_lengths(torch.tensor(n)))
            assert alone["target"].shape[1] == steps == int((~batched["padding_mask"][i]).sum())
            for key in ("target", "prediction"):
                torch.testing.assert_close(batched[key][i, :steps], alone[key][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mask_type", ["time", "patch"])
def test_masks_follow_seed_update_and_utterance(mask_type):
    model = tiny(mask_type=mask_type, mask_prob=0.5).train()
    wav = torch.randn(2, 16000) * 0.1

    def loss_mask(seed, update, ids):
        model.set_num_updates(update)
        with seeded_draws(model, seed, torch.tensor(ids)):
            return model(wav)["loss_mask"]

    first = loss_mask(1, 3, [4, 7])
    assert first.any() and not first.all()
    assert torch.equal(first, loss_mask(1, 3, [4, 7]))
    assert not torch.equal(first, loss_mask(1, 4, [4, 7])) and not torch.equal(first, loss_mask(2, 3, [4, 7]))
    if mask_type == "time":  # whole steps
        assert (first.all(-1) | ~first.any(-1)).all()
    else:  # patches of mask_length steps x mask_bins mel bins, the same on every stacked frame of a step
        per_frame = first.reshape(2, first.shape[1], 2, 32)
        assert torch.equal(per_frame[:, :, 0], per_frame[:, :, 1])
        bands = per_frame[:, :, 0].reshape(2, -1, 4, 8)
        assert (bands.all(-1) | ~bands.any(-1)).all()


def test_baselines_use_only_visible_bins():
    target = torch.tensor([[[1.0], [2.0], [10.0], [20.0], [3.0], [99.0]]])
    loss_mask = torch.tensor([[[False], [False], [True], [True], [False], [False]]])
    padding = torch.tensor([[False, False, False, False, False, True]])
    baselines = reconstruction_baselines(target, loss_mask, padding)
    assert baselines["mean"][0, 2:4, 0].tolist() == [2.0, 2.0]  # (1 + 2 + 3) / 3: the padded 99 left out
    assert baselines["nearest"][0, 2:4, 0].tolist() == [2.0, 3.0]  # step 2 -> step 1, step 3 -> step 4


def test_trains_with_fairseq_hydra_train_and_reloads(tone_corpus, tmp_path):
    save_dir = tmp_path / "ckpt"
    log = hydra_train("reconstruction/tiny_inn_bimamba", [
        f"task.data={tone_corpus}", f"checkpoint.save_dir={save_dir}", "optimization.max_update=4",
        "model.encoder_layers=2", "model.encoder_embed_dim=32", "common.log_format=json"], tmp_path / "train.log")
    valid = logged_records(log, "valid")
    assert sorted(valid) == [2, 4]
    for record in valid.values():
        assert {"valid_loss", "valid_mean_baseline_loss", "valid_nearest_baseline_loss"} <= record.keys()
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(save_dir / "checkpoint_last.pt")])
    assert isinstance(models[0], SpectrumReconstructionModel) and cfg.task._name == "spectrum_reconstruction"
    x, padding = models[0].eval().extract_features(torch.randn(1, 16000) * 0.1)
    assert x.shape == (1, int(models[0].output_lengths(torch.tensor(16000))), 32) and not padding.any()
