"""The end-to-end jobs: the demo refuses to reuse a corpus built for another size or seed instead of silently training
on it; its report states each model's updates and decoder settings; each model gets its front end's tuned learning
rate; the job scheduler respects dependencies and the worker limit; test WER is split by held-out speaker."""

import json
import threading
import time
from contextlib import nullcontext

import pytest

from mamba_hubert.data.corpus import cached_corpus, corpus_key
from mamba_hubert.data.voices import DEFAULT_VOICES
from mamba_hubert.demo.common import lm_decoder_flags, run_jobs, wer_by_speaker
from mamba_hubert.demo.main_job import finetune_overrides, front_end_overrides, main, run_demo, write_report


def test_refuses_a_corpus_folder_of_an_older_version(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.json").write_text(json.dumps({"minutes_requested": 60.0, "seed": 1}))
    with pytest.raises(SystemExit, match=r"built by an older version \(corpora now live in"):
        run_demo(tmp_path, 60.0, pretrain_updates=1, finetune_updates=1, clusters=2, jobs=1, seed=1,
                 pretrain_only_updates=1, corpus_cache=tmp_path / "cache")


def test_corpus_cache_key_follows_seed_minutes_and_voices(tmp_path):
    voices = tmp_path / "voices.txt"
    voices.write_text(DEFAULT_VOICES.read_text())
    key = corpus_key(voices, 1, 60.0)
    assert key == corpus_key(voices, 1, 60.0)
    assert len({key, corpus_key(voices, 2, 60.0), corpus_key(voices, 1, 30.0)}) == 3
    voices.write_text(DEFAULT_VOICES.read_text().replace("kal16                 95", "kal16                 90"))
    assert corpus_key(voices, 1, 60.0) != key


def test_a_cached_corpus_is_reused_not_rebuilt(tmp_path):
    cached = tmp_path / "cache" / corpus_key(DEFAULT_VOICES, 1, 60.0)
    cached.mkdir(parents=True)
    (cached / "corpus.json").write_text("{}")
    said = []
    assert cached_corpus(tmp_path / "cache", 60.0, 1, 1, log=said.append) == cached
    assert said == [f"[corpus] reusing {cached}"]


def test_report_states_each_models_pretraining_updates(tmp_path):
    results = {"Mamba-HuBERT (ConBiMamba)": {"config": "tiny_conbimamba", "params": 1.6e6, "test_wer": 80.0,
                                             "test_wer_lm": 60.0, "valid_uer": 35.0,
                                             "transcribe_agreement": {"greedy": [146, 146], "lm": [145, 146]},
                                             "test_wer_by_speaker": {"greedy": {"all": 80.0, "rms": 95.0},
                                                                     "lm": {"all": 60.0, "rms": 84.25}}},
               "Mamba-HuBERT (ExtBiMamba)": {"config": "tiny_ext_bimamba", "params": 1.6e6}}
    corpus = {"splits": {"train": {"utterances": 10, "minutes": 1.0}},
              "lm": {"sentences": 5, "lexicon_words": 9, "test_oov_percent": 1.0}}
    mi = {"seeds": [0], "utterances": 4, "layers": {}, "verdicts": {}}
    args = (tmp_path, results, mi, corpus, {"corpus": 1.0}, 2.0)
    report = write_report(*args, 2000, 1000, 1500, 100).read_text()
    assert "Pretraining: 2000 updates (`tiny_ext_bimamba`, pretrained only for the MI comparison: 1000)" in report
    assert "Pretraining: 2000 updates;" in write_report(*args, 2000, 2000, 1500, 100).read_text()
    assert ("printed fairseq-generate's words for Mamba-HuBERT (ConBiMamba): 146/146 greedy, 145/146 with the "
            "lexicon + LM files.") in report
    assert "Front end: 80-bin log-mel" in report
    assert "Front end: HuBERT's CNN on the waveform" in write_report(*args, 2000, 2000, 1500, 100, "cnn").read_text()
    assert "LM weight 2, word score 0, beam 500)" in report
    assert "CTC fine-tuning (fairseq `hubert_ctc`): 1500 updates, training audio played at speeds 0.9 / 1 / 1.1." in report
    assert "1500 updates, no augmentation." in write_report(*args, 2000, 2000, 1500, 100, "fbank", ()).read_text()
    assert ("Test WER by held-out speaker (greedy / lexicon + LM): Mamba-HuBERT (ConBiMamba): rms 95.0% / 84.2%."
            in report)


def test_report_puts_the_judge_beside_the_models_and_states_unseen_engines(tmp_path):
    results = {"Mamba-HuBERT (ConBiMamba)": {"config": "tiny_conbimamba", "params": 1.5e6, "test_wer": 40.0,
                                             "test_wer_lm": 20.0, "valid_uer": 15.0,
                                             "human_wer": {"greedy": 90.0, "lm": 70.5}}}
    corpus = {"splits": {"train": {"utterances": 10, "minutes": 1.0}},
              "lm": {"sentences": 5, "lexicon_words": 9, "test_oov_percent": 1.0},
              "voices": [{"speaker": "a", "engine": "kokoro", "split": "train"},
                         {"speaker": "b", "engine": "kokoro", "split": "valid"},
                         {"speaker": "joe", "engine": "piper", "split": "test"}]}
    judged = {"test": {"all": {"wer": 7.25}, "joe": {"wer": 12.5}}, "human": {"words": 92, "wer": 3.26}}
    mi = {"seeds": [0], "utterances": 4, "layers": {}, "verdicts": {}}
    report = write_report(tmp_path, results, mi, corpus, {"corpus": 600.0}, 2400.0, 20, 10, 15, 100,
                          judged=judged).read_text()
    assert "| faster-whisper base (74 M parameters, 680 k hours of training audio), greedy" in report
    assert "| 74 M | 7.25% | - | - |" in report
    assert "The judge's test WER by held-out speaker: joe 12.5%." in report
    assert "Mamba-HuBERT (ConBiMamba) 90.0% greedy / 70.5% with the lexicon + LM; the judge 3.3%." in report
    assert "built in 600 s of this run's 2400 s" in report
    assert "Test also hears an engine training never hears (piper); valid does not (no unseen engine)" in report


def test_wer_by_speaker_counts_word_errors_of_each_speakers_utterances(tmp_path):
    (tmp_path / "test.wrd").write_text("THE LORD IS GOD\nBRETHREN PRAY\nFOR US\n")
    (tmp_path / "test.meta.tsv").write_text("id\tengine\tvoice\tspeaker\trate\tpitch\ttext\n"
                                            "test_0\tflite\trms\trms\t1\t1\tx\n"
                                            "test_1\tespeak\ten+f4\tespeak-f4\t1\t1\tx\n"
                                            "test_2\tflite\trms\trms\t1\t1\tx\n")
    # fairseq-generate writes utterances in the order it decodes them, not the manifest's
    (tmp_path / "generate-test.txt").write_text("D-2\t-1.0\tFOR US\nD-0\t-2.0\tTHE LAWD GOD\n"
                                                "D-1\t-1.0\tBERETS ROV PREE\nWER: 50.00\n")
    wer = wer_by_speaker(tmp_path, tmp_path, "test")
    assert wer == {"all": 100.0 * (2 + 3) / 8, "espeak-f4": 100.0 * 3 / 2, "rms": 100.0 * 2 / 6}
    (tmp_path / "generate-test.txt").write_text("D-0\t-2.0\tTHE LORD IS GOD\n")
    with pytest.raises(RuntimeError, match="1 decoded utterances, 3 in"):
        wer_by_speaker(tmp_path, tmp_path, "test")


def test_each_model_pretrains_on_the_front_end_at_its_tuned_learning_rate():
    fbank = ["model.extractor_mode=fbank", "task.label_rate=50"]
    assert front_end_overrides("fbank", "tiny_transformer") == [*fbank, "optimization.lr=[0.003]"]
    assert front_end_overrides("fbank", "tiny_conbimamba") == fbank  # its config's 0.003
    assert front_end_overrides("cnn", "tiny_transformer") == []


def test_fine_tuning_plays_training_audio_at_the_tuned_speeds_unless_turned_off(monkeypatch):
    assert finetune_overrides((0.9, 1.0, 1.1)) == ["++task.speed_perturb=[0.9,1,1.1]"]
    assert finetune_overrides(()) == []
    calls = []
    monkeypatch.setattr("mamba_hubert.demo.main_job.run_demo", lambda *args: calls.append(args))
    monkeypatch.setattr("mamba_hubert.demo.main_job.job_console", lambda verbose: nullcontext())
    main(["--out", "x"])
    main(["--out", "x", "--speed-perturb"])
    assert [call[9] for call in calls] == [[0.9, 1.0, 1.1], []]  # run_demo's finetune_speeds


def test_an_unknown_front_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="front_end must be one of"):
        run_demo(tmp_path, 60.0, pretrain_updates=1, finetune_updates=1, clusters=2, jobs=1, seed=1,
                 pretrain_only_updates=1, front_end="mfcc")


def test_run_jobs_follows_dependencies_and_the_worker_limit():
    events, lock, active = [], threading.Lock(), [0]

    def job(name):
        def run():
            with lock:
                active[0] += 1
                events.append(("start", name, active[0]))
            time.sleep(0.05)
            with lock:
                active[0] -= 1
                events.append(("end", name))
            return name.upper()
        return run

    graph = {"a": ((), job("a")), "b": (("a",), job("b")), "c": ((), job("c")), "d": (("b", "c"), job("d"))}
    assert run_jobs(graph, workers=2) == {"a": "A", "b": "B", "c": "C", "d": "D"}
    order = [e[1] for e in events]
    for before, after in (("a", "b"), ("b", "d"), ("c", "d")):
        assert events.index(("end", before)) < order.index(after)
    assert max(e[2] for e in events if e[0] == "start") == 2


def test_run_jobs_raises_a_jobs_error_and_refuses_unknown_dependencies():
    def fail():
        raise RuntimeError("fairseq-hydra-train failed")

    with pytest.raises(RuntimeError, match="fairseq-hydra-train failed"):
        run_jobs({"a": ((), fail), "b": (("a",), lambda: 1)})
    with pytest.raises(ValueError, match="undefined jobs"):
        run_jobs({"a": (("missing",), lambda: 1)})


def test_generate_and_transcribe_get_the_same_lm_search(tmp_path):
    generate, transcribe = lm_decoder_flags(tmp_path / "lexicon.txt", tmp_path / "lm.arpa")
    assert generate == ("--ctc-lexicon", str(tmp_path / "lexicon.txt"), "--ctc-lm", str(tmp_path / "lm.arpa"),
                        "--ctc-lm-weight", "2", "--ctc-word-score", "0", "--ctc-beam", "500")
    assert transcribe == ("--lexicon", str(tmp_path / "lexicon.txt"), "--lm", str(tmp_path / "lm.arpa"),
                          "--lm-weight", "2", "--word-score", "0", "--beam", "500")
