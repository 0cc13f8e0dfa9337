"""`mamba-hubert-paper` end to end at a tiny budget: every model trains with fairseq-hydra-train, the ASR models are
decoded by fairseq-generate, MI runs through upstream and head layers, and the report states each finding with the
run's own numbers; a second run with other settings refuses to reuse the first one's models."""

import json
import re

import pytest

from mamba_hubert.demo.fairseq_tools import generation_results
from mamba_hubert.demo.paper import ASR_MODELS, RECONSTRUCTION_TITLE, main

TINY = ["--minutes", "4", "--pretrain-updates", "3", "--finetune-updates", "3", "--reconstruction-updates", "3",
        "--mi-seeds", "2", "--mi-utterances", "4", "--mi-iterations", "30"]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    main(["--out", str(out), *TINY])
    return out


def test_every_model_is_trained_decoded_and_analysed(paper_run):
    results = json.loads((paper_run / "results.json").read_text())["models"]
    for model in ASR_MODELS:
        generated = generation_results(paper_run / "models" / model.key / "decode_greedy", "test")
        printed = re.findall(r"WER: ([0-9.]+)", generated.read_text())
        assert [float(w) for w in printed] == [pytest.approx(results[model.key]["test_wer"], abs=0.01)]
        assert results[model.key]["lr"] == model.lr
    assert {"loss", "mean_baseline_loss", "nearest_baseline_loss"} == set(results["reconstruction"]["valid"])

    mi = json.loads((paper_run / "mi" / "mi.json").read_text())
    stages = {title: [row["stage"] for row in rows] for title, rows in mi["layers"].items()}
    assert stages[ASR_MODELS[0].title] == ["upstream"] * 4
    assert stages[ASR_MODELS[1].title] == stages[ASR_MODELS[2].title] == ["upstream"] * 4 + ["head"] * 2
    assert stages[RECONSTRUCTION_TITLE] == ["encoder"] * 6
    assert all(set(verdicts) == {"mine", "smile"} for verdicts in mi["verdicts"].values())
    for png in ("mi/mi_xt.png", "mi/mi_xt_smile.png", "finetune_valid_uer.png", "reconstruction_valid_loss.png"):
        assert (paper_run / png).stat().st_size > 1000


def test_report_states_each_finding_with_its_numbers(paper_run):
    report = (paper_run / "report.md").read_text()
    results = json.loads((paper_run / "results.json").read_text())["models"]
    linear, conformer = results[ASR_MODELS[0].key], results[ASR_MODELS[1].key]
    finding = next(line for line in report.splitlines() if line.startswith("1. A Conformer head"))
    assert f"{linear['test_wer']:.2f}% -> {conformer['test_wer']:.2f}% greedy" in finding
    lower = conformer["test_wer"] < linear["test_wer"] and conformer["test_wer_lm"] < linear["test_wer_lm"]
    assert ("**reproduced**" if lower else "**not reproduced**") in finding
    for number in ("12.32%", "9.2%", "9.3%"):
        assert number in report
    assert f"{results['reconstruction']['valid']['loss']:.4f}" in report
    assert sum(line.startswith(f"{n}. ") for line in report.splitlines() for n in range(1, 6)) == 5


def test_refuses_to_reuse_models_trained_with_other_settings(paper_run):
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        main(["--out", str(paper_run), *TINY[:2], "--pretrain-updates", "4", *TINY[4:]])
