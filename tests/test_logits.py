"""MambaHubertModel.compute_nce (one matmul) against fairseq's HubertModel.compute_nce, which it replaces, and the
benchmark that times the two."""

import json

import pytest
import torch
from fairseq.models.hubert.hubert import HubertModel

from mamba_hubert.models import MambaHubertModel
from tests.conftest import load_benchmark, tiny_model


def _logits_and_grads(model: MambaHubertModel, compute_nce, label_set: int, x: torch.Tensor, targets: torch.Tensor):
    """As HubertModel.forward's compute_pred calls compute_nce: positives gathered, negatives an expanded view."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    label_embs = model.label_embs_concat.split(model.num_classes, 0)[label_set]
    negs = label_embs.unsqueeze(1).expand(-1, x.size(0), -1)
    logits = compute_nce(model, x, torch.index_select(label_embs, 0, targets), negs)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits.masked_fill(torch.isinf(logits), 0) * weights).sum().backward()
    return logits.detach(), x.grad, model.label_embs_concat.grad.clone()


@pytest.mark.parametrize("label_set", [0, 1])
def test_logits_and_gradients_equal_fairseqs(label_set):
    model = tiny_model("mamba", label_set_sizes=(100, 20))  # two label sets: the negatives must be the right set's embeddings
    with torch.no_grad():  # a class sharing another's embedding is masked like the positive's own, as in fairseq
        model.label_embs_concat[model.num_classes[0] * label_set + 7] = model.label_embs_concat[
            model.num_classes[0] * label_set + 5]
    x = torch.randn(300, model.label_embs_concat.size(1))
    targets = torch.randint(0, 20, (300,))
    negs = model.label_embs_concat.split(model.num_classes, 0)[label_set].unsqueeze(1).expand(-1, 300, -1)
    assert model._label_embeddings_behind(negs) is not None  # the matmul path is the one under test

    ours = _logits_and_grads(model, MambaHubertModel.compute_nce, label_set, x, targets)
    fairseqs = _logits_and_grads(model, HubertModel.compute_nce, label_set, x, targets)
    assert torch.equal(torch.isinf(ours[0]), torch.isinf(fairseqs[0]))
    assert torch.isinf(ours[0][targets == 5, 1 + 7]).all() and torch.isinf(ours[0][targets == 7, 1 + 5]).all()
    assert torch.isinf(ours[0][:, 1:]).sum(1).ge(1).all()  # every row's own class is out of its negatives
    finite = torch.isfinite(fairseqs[0])
    torch.testing.assert_close(ours[0][finite], fairseqs[0][finite], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours[1], fairseqs[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours[2], fairseqs[2], atol=1e-4, rtol=1e-5)


def test_negatives_that_are_not_a_label_sets_view_go_to_fairseq():
    model = tiny_model("mamba")
    embs = model.label_embs_concat
    negs = embs.unsqueeze(1).expand(-1, 4, -1)
    assert model._label_embeddings_behind(negs) is not None
    assert model._label_embeddings_behind(negs.clone()) is None  # e.g. target_glu's output
    assert model._label_embeddings_behind(embs[1:].unsqueeze(1).expand(-1, 4, -1)) is None


def test_benchmark_writes_both_implementations(tmp_path):
    """benchmarks/bench_logits.py's plumbing (a fresh process per case, table, JSON) on its smallest case."""
    bench = load_benchmark("bench_logits")
    assert bench.main(["--out", str(tmp_path), "--cases", "tiny demo, 100 clusters", "--threads", "1"]) == 0
    cases = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert {c["impl"]: c["status"] for c in cases} == {"fairseq": "ok", "ours": "ok"}
    assert all(c["time_s"] > 0 and c["peak_mb"] >= 0 for c in cases)
    assert "| tiny demo, 100 clusters | 625 | 100 | 64 |" in (tmp_path / "results.md").read_text()
