"""The demo refuses to reuse a corpus built for another size or seed instead of silently training on it."""

import json

import pytest

from mamba_hubert.demo import run_demo


@pytest.mark.parametrize("minutes, seed", [(60.0, 2), (30.0, 1)])
def test_refuses_a_corpus_built_with_other_settings(tmp_path, minutes, seed):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lm.txt").write_text("in the beginning\n")
    (corpus / "corpus.json").write_text(json.dumps({"minutes_requested": 60.0, "seed": 1, "splits": {}}))
    with pytest.raises(SystemExit, match=r"built with --minutes 60.0 --seed 1"):
        run_demo(tmp_path, minutes, pretrain_updates=1, finetune_updates=1, clusters=2, jobs=1, seed=seed)
