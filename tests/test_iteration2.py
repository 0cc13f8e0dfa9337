"""HuBERT iteration 2: k-means labels from an iteration-1 checkpoint's layer features, then pretraining on them."""

from mamba_hubert.data.kmeans import run_kmeans
from mamba_hubert.data.layer_features import dump_layer_features
from mamba_hubert.demo.fairseq_tools import hydra_train
from mamba_hubert.frames import conv_output_length
from tests.fairseq_runs import SMALL_MODEL, make_tone_corpus, pretrain_overrides


def test_iteration2_labels_and_pretraining(tmp_path):
    corpus = make_tone_corpus(tmp_path / "tones")
    iter1 = tmp_path / "iter1"
    hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, iter1, "optimization.max_update=2", *SMALL_MODEL),
                tmp_path / "iter1.log")

    features, labels = tmp_path / "features", tmp_path / "labels"
    for split in ("train", "valid"):
        dump_layer_features(str(iter1 / "checkpoint_last.pt"), str(corpus), split, 1, str(features), 1, 0)
    run_kmeans(str(features), str(labels), ["train", "valid"], n_clusters=4, n_init=2)
    manifest = (corpus / "valid.tsv").read_text().splitlines()[1:]
    km = (labels / "valid.km").read_text().splitlines()
    assert [len(line.split()) for line in km] == [conv_output_length(int(row.split("\t")[1])) for row in manifest]

    log = hydra_train("pretrain/tiny_mamba", [
        f"task.data={corpus}", f"task.label_dir={labels}", "task.label_rate=50",
        f"checkpoint.save_dir={tmp_path / 'iter2'}", "optimization.max_update=2", *SMALL_MODEL,
    ], tmp_path / "iter2.log")
    assert "num_updates 2" in log and (tmp_path / "iter2" / "checkpoint_last.pt").exists()
