"""Real fairseq-hydra-train runs fine-tune `mamba_hubert_asr` from a `mamba_hubert` and from a fairseq `hubert`
checkpoint, with a linear head and downstream encoders, frozen or fine-tuned; fairseq-generate decodes each."""

import pytest
import torch

from mamba_hubert.demo.fairseq_tools import generate_wer, generation_results, hydra_train
from tests.fairseq_runs import finetune_overrides, load_state, wer_of_printed_hypotheses

SMALL_HEAD = ["model.head_layers=1", "model.head_embed_dim=32", "model.head_ffn_embed_dim=64",
              "model.head_conv_pos=16", "model.head_conv_pos_groups=4", "model.head_depthwise_conv_kernel_size=7"]


@pytest.fixture(autouse=True)
def no_unsafe_loading(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)  # checkpoints must load without it


@pytest.mark.parametrize("upstream, head, frozen", [
    ("mamba_hubert", "none", False), ("mamba_hubert", "conformer", True), ("mamba_hubert", "ext_bimamba", False),
    ("fairseq_hubert", "none", True), ("fairseq_hubert", "conformer", False), ("fairseq_hubert", "ext_bimamba", True),
])
def test_finetune_and_decode(request, tone_corpus, tmp_path, upstream, head, frozen):
    pretrained = request.getfixturevalue(f"{upstream}_checkpoint")
    save_dir = tmp_path / "finetune"
    config = "finetune/tiny_asr_linear" if head == "none" else "finetune/tiny_asr_conformer"
    log = hydra_train(config, finetune_overrides(
        tone_corpus, save_dir, pretrained, "optimization.max_update=2", f"model.head_layer_type={head}",
        f"model.freeze_upstream={str(frozen).lower()}", "checkpoint.save_interval_updates=1",
        *(SMALL_HEAD if head != "none" else [])), tmp_path / "finetune.log")
    assert "num_updates 2" in log

    before = load_state(pretrained)["model"]
    first, last = load_state(save_dir / "checkpoint_1_1.pt"), load_state(save_dir / "checkpoint_last.pt")
    assert last["cfg"].model._name == "mamba_hubert_asr" and last["cfg"].model.head_layer_type == head
    upstream_keys = [k for k in last["model"] if k.startswith("w2v_encoder.w2v_model.encoder.layers.")]
    assert upstream_keys
    unchanged = [torch.equal(last["model"][k], before[k.removeprefix("w2v_encoder.w2v_model.")]) for k in upstream_keys]
    assert all(unchanged) if frozen else not all(unchanged)
    trained = [k for k in last["model"] if k.startswith(("w2v_encoder.head", "w2v_encoder.proj"))]
    assert any(k.startswith("w2v_encoder.head.") for k in trained) == (head != "none")
    assert not all(torch.equal(first["model"][k], last["model"][k]) for k in trained)

    wer = generate_wer(tone_corpus, tone_corpus, save_dir / "checkpoint_last.pt", "valid", tmp_path / "decode")
    results = generation_results(tmp_path / "decode", "valid")
    assert wer == pytest.approx(wer_of_printed_hypotheses(results, tone_corpus / "valid.tsv"),
                                abs=0.01)
