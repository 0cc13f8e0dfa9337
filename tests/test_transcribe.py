"""`mamba-hubert-transcribe` on a tiny fine-tuned causal Mamba model: the words fairseq-generate decodes for the same
files, and one-line errors for a user's mistakes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from fairseq.data import Dictionary

from mamba_hubert.data.ngram_lm import TLM_PATHS
from mamba_hubert.demo.fairseq_tools import decoded_hypotheses, generate_wer, hydra_train
from mamba_hubert.inference import ctc_decoding, transcribe
from mamba_hubert.inference.ctc_decoding import CTCGreedyDecoder, utterance_log_probs
from mamba_hubert.inference.long_form import ctc_logits_long
from mamba_hubert.inference.streaming import NotStreamableError, StreamingCtc
from tests.conftest import SMALL_HEAD, build_asr_model
from tests.fairseq_runs import (
    SMALL_MODEL,
    finetune_overrides,
    make_tone_corpus,
    pretrain_overrides,
    write_lexicon,
    write_lm,
)
from tests.test_streaming import state_sensitive

# layer_type=mamba, conv_pos=0 and a per-frame extractor norm: a model that can also stream
CAUSAL = ["model.extractor_mode=layer_norm", "model.conv_pos=0"]


@pytest.fixture(autouse=True)
def no_unsafe_loading(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)  # checkpoints must load without it


def fine_tuned(root: Path, *model_overrides: str) -> Path:
    """A tone corpus in root/tones, a tiny_mamba pretrained for 1 update (root/pt) and fine-tuned with hubert_ctc
    for 3 (root/ft)."""
    corpus = make_tone_corpus(root / "tones", splits=(("train", 8), ("valid", 3)))
    hydra_train("pretrain/tiny_mamba", pretrain_overrides(corpus, root / "pt", "optimization.max_update=1",
                                                          *SMALL_MODEL, *model_overrides), root / "pretrain.log",
                threads=1)
    hydra_train("finetune/tiny_ctc", finetune_overrides(corpus, root / "ft", root / "pt" / "checkpoint_last.pt",
                                                        "optimization.max_update=3", "model.freeze_finetune_updates=0"),
                root / "finetune.log", threads=1)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A causal fine-tuned model (streamable)."""
    return fine_tuned(tmp_path_factory.mktemp("transcribe"), *CAUSAL)


def transcribe_lines(capsys, *argv: str) -> dict[str, str]:
    transcribe.main(list(argv))
    return dict(line.split("\t") for line in capsys.readouterr().out.splitlines())


def test_greedy_text_is_fairseq_generates(run, capsys):
    corpus, checkpoint = run / "tones", run / "ft" / "checkpoint_last.pt"
    generate_wer(corpus, corpus, checkpoint, "valid", run / "decode", threads=1)
    hypotheses = decoded_hypotheses(run / "decode", "valid")
    wavs = [str(corpus / line.split("\t")[0]) for line in (corpus / "valid.tsv").read_text().splitlines()[1:]]
    printed = transcribe_lines(capsys, str(checkpoint), *wavs)
    assert list(printed) == wavs
    assert [printed[wav] for wav in wavs] == [hypotheses[i] for i in range(len(wavs))]
    assert any(hypotheses.values())  # the comparison is not between empty strings only


def error_line(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(list(argv))
    assert exit_info.value.code != 0
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("mamba-hubert-transcribe: error: ")
    return message


def test_the_checkpoint_is_an_option_and_the_positional_form_is_deprecated(run, capsys):
    checkpoint, wav = str(run / "ft" / "checkpoint_last.pt"), str(run / "tones" / "wav" / "valid0.wav")
    transcribe.main(["--checkpoint", checkpoint, wav])
    option = capsys.readouterr()
    transcribe.main([checkpoint, wav])
    positional = capsys.readouterr()
    assert option.out == positional.out and option.out.startswith(f"{wav}\t")
    assert "deprecated" not in option.err
    assert f"deprecated and stops working in 0.2.0; use --checkpoint {checkpoint}" in positional.err


def test_missing_and_unreadable_files_are_one_line(run, capsys, tmp_path):
    checkpoint = str(run / "ft" / "checkpoint_last.pt")
    missing = str(tmp_path / "nothing.wav")
    assert f"{missing}: no such file" in error_line(capsys, checkpoint, missing)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    assert f"{garbage}: not readable audio" in error_line(capsys, checkpoint, str(garbage))


def test_beam_options_without_a_beam_search_are_refused(run, capsys):
    message = error_line(capsys, str(run / "ft" / "checkpoint_last.pt"), str(run / "tones" / "wav" / "valid0.wav"),
                         "--word-score", "0")
    assert "--word-score: for the beam search, which needs --lexicon and --lm" in message


def test_pretraining_checkpoint_is_refused(run, capsys):
    wav = str(run / "tones" / "wav" / "valid0.wav")
    message = error_line(capsys, str(run / "pt" / "checkpoint_last.pt"), wav)
    assert "checkpoint_last.pt: a MambaHubertModel (pretraining) checkpoint, not a fine-tuned CTC model" in message


def test_console_script_runs(run):
    """The entry point in setup.py, as a user runs it (the installed script, or the module where not installed)."""
    wav = str(run / "tones" / "wav" / "valid0.wav")
    script = Path(sys.executable).parent / "mamba-hubert-transcribe"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mamba_hubert.inference.transcribe"]
    result = subprocess.run([*command, str(run / "ft" / "checkpoint_last.pt"), wav], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{wav}\t")


def test_word_timings_follow_the_greedy_alignment():
    """Synthetic emissions at 20 ms frames: '-' blank, '|' word boundary."""
    dictionary = Dictionary()  # <s> is the CTC blank, as in fairseq's HuBERT task
    for letter in "|ABC":
        dictionary.add_symbol(letter)
    frames = "--AA-BB||-CC--A-AB|--CC"  # words AB (frames 2-6), CAAB (10-17), C (21-22, no final boundary)
    ids = [dictionary.bos() if c == "-" else dictionary.index(c) for c in frames]
    log_probs = torch.nn.functional.one_hot(torch.tensor(ids), len(dictionary)).float().mul(10).log_softmax(-1)
    words = transcribe.word_timings(log_probs, CTCGreedyDecoder(dictionary, dictionary.bos()), 0.02)
    assert [word["word"] for word in words] == ["AB", "CAAB", "C"]
    assert [(round(w["start"], 6), round(w["end"], 6)) for w in words] == [(0.04, 0.14), (0.2, 0.36), (0.42, 0.46)]


def test_json_words_spell_the_greedy_text(run, capsys):
    wavs = [str(run / "tones" / "wav" / f"valid{i}.wav") for i in range(3)]
    transcribe.main([str(run / "ft" / "checkpoint_last.pt"), "--json", *wavs])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["path"] for record in records] == wavs
    for record in records:
        assert " ".join(word["word"] for word in record["words"]) == record["text"]
        duration = sf.info(record["path"]).duration
        assert all(0 <= word["start"] < word["end"] <= duration + 0.02 for word in record["words"])


def test_other_sample_rates_are_resampled(run, capsys, tmp_path):
    wav, rate = sf.read(run / "tones" / "wav" / "valid0.wav", dtype="float32")
    sf.write(tmp_path / "valid0_32k.flac", soxr.resample(wav, rate, 32000), 32000)
    transcribe.main([str(run / "ft" / "checkpoint_last.pt"), str(tmp_path / "valid0_32k.flac")])
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'valid0_32k.flac'}\t")
    assert "valid0_32k.flac: resampling 32000 Hz to the model's 16000 Hz" in captured.err


@pytest.mark.parametrize("chunk_ms", ["100", "2000"])
def test_streaming_ends_with_the_offline_text(run, capsys, chunk_ms):
    checkpoint = str(run / "ft" / "checkpoint_last.pt")
    wavs = [str(run / "tones" / "wav" / f"valid{i}.wav") for i in range(3)]
    offline = transcribe_lines(capsys, checkpoint, *wavs)
    transcribe.main([checkpoint, "--stream", "--chunk-ms", chunk_ms, *wavs])
    captured = capsys.readouterr()
    assert dict(line.split("\t") for line in captured.out.splitlines()) == offline
    partials = [line.split("\t... ") for line in captured.err.splitlines() if "\t... " in line]
    for wav in wavs:  # each partial hypothesis grows into the final one
        texts = [text for path, text in partials if path == wav]
        assert texts == [] if not offline[wav] else texts[-1] == offline[wav]
    chunks = sum(-(-len(sf.read(wav)[0]) // (16 * int(chunk_ms))) for wav in wavs)
    assert f"streamed {chunks} chunks of {chunk_ms} ms: latency per chunk mean" in captured.err
    assert "real-time factor" in captured.err
    # the text of a barely trained model hardly depends on its input: compare what it decodes from
    transcriber = transcribe.Transcriber(checkpoint)
    audio = transcriber.read_audio(wavs[0])
    streamed, _ = transcriber.stream_log_probs(transcriber.streaming_model(checkpoint), audio,
                                               16 * int(chunk_ms), lambda text: None)
    torch.testing.assert_close(streamed, transcriber.log_probs(audio), rtol=1e-4, atol=1e-4)


def test_non_causal_model_cannot_stream(tmp_path, capsys):
    root = fine_tuned(tmp_path)  # tiny_mamba's own config: extractor_mode=default, a positional conv
    message = error_line(capsys, str(root / "ft" / "checkpoint_last.pt"), str(root / "tones" / "wav" / "valid0.wav"),
                         "--stream")
    assert "checkpoint_last.pt: cannot stream: extractor_mode=default normalises over the whole utterance" in message


def test_long_files_go_through_the_long_form_encoder(run, monkeypatch):
    checkpoint = str(run / "ft" / "checkpoint_last.pt")
    transcriber = transcribe.Transcriber(checkpoint)
    pieces = [transcriber.read_audio(str(run / "tones" / "wav" / f"valid{i}.wav")) for i in range(3)]
    audio = torch.cat(pieces * (-(-31 * 16000 // sum(map(len, pieces)))))  # just over 30 s
    calls = []
    monkeypatch.setattr(transcribe, "ctc_logits_long",
                        lambda *args, **kwargs: calls.append(1) or ctc_logits_long(*args, **kwargs))
    long_form = transcriber.log_probs(audio)
    assert calls == [1]
    sample = {"net_input": {"source": audio[None], "padding_mask": torch.zeros(1, len(audio), dtype=torch.bool)}}
    torch.testing.assert_close(long_form, utterance_log_probs([transcriber.model], sample)[0], rtol=1e-4, atol=1e-4)
    transcriber.log_probs(audio[: 29 * 16000])
    assert calls == [1]  # shorter files: the plain forward


@pytest.mark.parametrize("options", [{}, {"lm-weight": "0.5", "word-score": "3", "beam": "10"}],
                         ids=["defaults", "lm_weight_word_score_beam"])
def test_lexicon_and_lm_text_is_fairseq_generates(run, capsys, options):
    pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (lexicon/KenLM decoding) is not installed")
    if not any(shutil.which(path) for path in TLM_PATHS):
        pytest.skip("IRSTLM (the LM builder) is not installed: apt-get install irstlm")
    corpus, checkpoint = run / "tones", run / "ft" / "checkpoint_last.pt"
    lexicon = write_lexicon({letter * 2: letter * 2 for letter in "ABCDE"}, run / "lexicon.txt")
    lm = write_lm(["AA BB", "CC DD EE", "AA"], run / "lm.arpa")
    results = run / f"decode_lm_{len(options)}"
    generate_wer(corpus, corpus, checkpoint, "valid", results, threads=1,
                 decoder_args=["--ctc-lexicon", str(lexicon), "--ctc-lm", str(lm),
                               *(item for name, value in options.items() for item in (f"--ctc-{name}", value))])
    hypotheses = decoded_hypotheses(results, "valid")
    wavs = [str(corpus / line.split("\t")[0]) for line in (corpus / "valid.tsv").read_text().splitlines()[1:]]
    printed = transcribe_lines(capsys, str(checkpoint), *wavs, "--lexicon", str(lexicon), "--lm", str(lm),
                               *(item for name, value in options.items() for item in (f"--{name}", value)))
    assert [printed[wav] for wav in wavs] == [hypotheses[i] for i in range(len(wavs))]
    assert any(hypotheses.values())


def test_beam_options_reach_the_decoder(run, monkeypatch):
    """The fixture model's text hardly depends on the options, so the test above would also pass without them: the
    decoder the task builds must get them."""
    built = []
    original = ctc_decoding.CTCLexiconDecoder.__init__
    monkeypatch.setattr(ctc_decoding.CTCLexiconDecoder, "__init__",
                        lambda self, *args, **kwargs: built.append(kwargs) or original(self, *args, **kwargs))
    lexicon = write_lexicon({"AA": "AA"}, run / "lexicon_options.txt")
    lm = write_lm(["AA"], run / "lm_options.arpa")
    transcribe.Transcriber(str(run / "ft" / "checkpoint_last.pt"), str(lexicon), str(lm),
                           {"ctc_lm_weight": 0.5, "ctc_word_score": 3.0, "ctc_beam": 10, "ctc_beam_threshold": 7.0})
    assert [(b["lm_weight"], b["word_score"], b["beam"], b["beam_threshold"]) for b in built] == [(0.5, 3.0, 10, 7.0)]


# mamba_hubert_asr heads on the causal upstream that stream: Mamba-2 layers on the SUPERB weighted sum of a frozen
# upstream, and Mamba layers on upstream layer 1 (the upstream stops there), pre-LN with a final layer norm.
CAUSAL_HEADS = {
    "mamba2_head_on_the_weighted_sum": {"upstream_weighted_sum": True, "freeze_upstream": True,
                                        "head_layer_type": "mamba2", "head_mamba_headdim": 16,
                                        "head_mamba_ngroups": 2, "head_mamba_chunk_size": 16},
    "mamba_head_on_upstream_layer_1": {"upstream_layer": 1, "head_layer_type": "mamba"},
}


def causal_asr_model(run: Path, **fields) -> torch.nn.Module:
    """A mamba_hubert_asr on the causal pretrained model, every Mamba block made state-sensitive, layer weights
    unequal."""
    model = build_asr_model(run / "pt" / "checkpoint_last.pt", run / "tones", **{**SMALL_HEAD, "head_conv_pos": 0,
                                                                                 **fields})
    if model.w2v_encoder.layer_weights is not None:
        with torch.no_grad():
            model.w2v_encoder.layer_weights.copy_(torch.tensor([0.5, -0.3, 0.2]))
    return state_sensitive(model)


def offline_logits(model: torch.nn.Module, audio: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.w2v_encoder(audio[None], None, tbc=False)["encoder_out"][0]


@pytest.mark.parametrize("case", CAUSAL_HEADS)
@pytest.mark.parametrize("chunk_ms", [100, 370, 2000])
def test_streaming_a_causal_head_gives_the_offline_logits(run, case, chunk_ms):
    model = causal_asr_model(run, **CAUSAL_HEADS[case])
    audio = torch.randn(5 * 16000 + 77, generator=torch.Generator().manual_seed(1))
    streaming = StreamingCtc(model)
    chunk = 16 * chunk_ms
    streamed = torch.cat([*(streaming.push(audio[s : s + chunk]) for s in range(0, len(audio), chunk)),
                          streaming.flush()])
    expected = offline_logits(model, audio)
    assert streamed.shape == expected.shape
    torch.testing.assert_close(streamed, expected, rtol=1e-4, atol=1e-4)


def test_head_state_carried_across_chunks_matters(run):
    """Control for the equality above: with the head's SSD states dropped at each chunk it fails."""
    model = causal_asr_model(run, **CAUSAL_HEADS["mamba2_head_on_the_weighted_sum"])
    audio = torch.randn(3 * 16000, generator=torch.Generator().manual_seed(2))
    streaming = StreamingCtc(model)
    pieces = []
    for start in range(0, len(audio), 8000):
        pieces.append(streaming.push(audio[start : start + 8000]))
        for state in streaming._head_states:
            state.ssm.zero_()
    assert (torch.cat(pieces) - offline_logits(model, audio)).abs().max() > 1e-2


@pytest.mark.parametrize("case", CAUSAL_HEADS)
def test_long_form_through_a_head_gives_the_offline_logits(run, case):
    model = causal_asr_model(run, **CAUSAL_HEADS[case])
    audio = torch.randn(20 * 16000 + 77, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ctc_logits_long(model, audio, chunk_seconds=1.3), offline_logits(model, audio),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fields, reason", [
    ({"head_layer_type": "conformer"}, "head layer 0 is not causal"),
    ({"head_layer_type": "ext_bimamba2", "head_mamba_headdim": 16}, "head layer 0 is not causal"),
    ({"head_layer_type": "mamba2", "head_mamba_headdim": 16, "head_conv_pos": 16},
     "the head's positional conv looks ahead; streaming needs model.head_conv_pos=0"),
])
def test_heads_that_look_ahead_cannot_stream(run, fields, reason):
    with pytest.raises(NotStreamableError, match=reason):
        StreamingCtc(causal_asr_model(run, **fields))


@pytest.fixture(scope="module")
def asr_run(run) -> Path:
    """mamba_hubert_asr with a causal Mamba-2 head on the weighted sum, fine-tuned by fairseq for 3 updates."""
    overrides = ["optimization.max_update=3", "model.freeze_finetune_updates=0", "model.upstream_weighted_sum=true",
                 "model.head_layer_type=mamba2", "model.head_conv_pos=0", "model.head_embed_dim=32",
                 "model.head_ffn_embed_dim=64", "model.head_mamba_headdim=16", "model.head_mamba_chunk_size=16"]
    hydra_train("finetune/tiny_asr_conformer", finetune_overrides(run / "tones", run / "asr",
                                                                  run / "pt" / "checkpoint_last.pt", *overrides),
                run / "asr.log", threads=1)
    return run / "asr"


@pytest.mark.parametrize("chunk_ms", ["100", "2000"])
def test_a_fine_tuned_causal_head_streams_from_the_command_line(run, asr_run, capsys, chunk_ms):
    checkpoint = str(asr_run / "checkpoint_last.pt")
    wavs = [str(run / "tones" / "wav" / f"valid{i}.wav") for i in range(3)]
    offline = transcribe_lines(capsys, checkpoint, *wavs)
    transcribe.main([checkpoint, "--stream", "--chunk-ms", chunk_ms, *wavs])
    captured = capsys.readouterr()
    assert dict(line.split("\t") for line in captured.out.splitlines()) == offline
    assert "real-time factor" in captured.err
    transcriber = transcribe.Transcriber(checkpoint)
    audio = transcriber.read_audio(wavs[0])
    streamed, _ = transcriber.stream_log_probs(transcriber.streaming_model(checkpoint), audio, 16 * int(chunk_ms),
                                               lambda text: None)
    torch.testing.assert_close(streamed, transcriber.log_probs(audio), rtol=1e-4, atol=1e-4)


def test_multi_channel_audio_is_refused(run, capsys, tmp_path):
    wav, rate = sf.read(run / "tones" / "wav" / "valid0.wav", dtype="float32")
    sf.write(tmp_path / "stereo.wav", np.stack([wav, wav], axis=1), rate)
    message = error_line(capsys, str(run / "ft" / "checkpoint_last.pt"), str(tmp_path / "stereo.wav"))
    assert f"{tmp_path / 'stereo.wav'}: 2 channels; the model reads one" in message


def test_a_model_trained_on_normalised_audio_reads_it_normalised_and_cannot_stream(run):
    """task.normalize as the checkpoint's task config carries it (setting it on this causal fixture is cheaper than
    pretraining and fine-tuning a second chain): each file is normalised as a whole, as fairseq's HubertDataset does,
    which a stream cannot do."""
    checkpoint = str(run / "ft" / "checkpoint_last.pt")
    transcriber = transcribe.Transcriber(checkpoint)
    transcriber.normalize = True
    audio = transcriber.read_audio(str(run / "tones" / "wav" / "valid0.wav"))
    assert abs(audio.mean().item()) < 1e-5 and audio.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(transcribe.UsageError, match="trained with task.normalize, which normalises each whole file"):
        transcriber.streaming_model(checkpoint)


# A fresh process, so that its peak resident set (VmHWM, reset through /proc/self/clear_refs) is its own.
_MEMORY_PROBE = """
import json, sys
import torch
from mamba_hubert.inference import transcribe

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

torch.set_num_threads(1)
checkpoint, short_file, *files = sys.argv[1:]
transcribe.main([checkpoint, short_file])  # warm-up: libraries, kernels, allocator
growth = {}
for path in files:
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    transcribe.main([checkpoint, path])
    growth[path] = status("VmHWM") - before
print(json.dumps(growth))
"""


def test_a_ten_minute_file_transcribes_in_bounded_memory(run, tmp_path):
    """The whole command on 1 and 10 minutes of audio: the 10-minute file (the audio alone is 38 MB of float32) costs
    little more than the 1-minute one, through the long-form path."""
    pieces = [sf.read(run / "tones" / "wav" / f"valid{i}.wav", dtype="float32")[0] for i in range(3)]
    files = {}
    for minutes in (1, 10):
        repeats = -(-minutes * 60 * 16000 // sum(map(len, pieces)))
        files[minutes] = tmp_path / f"{minutes}min.flac"
        sf.write(files[minutes], np.concatenate(pieces * repeats)[: minutes * 60 * 16000], 16000)
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(run / "ft" / "checkpoint_last.pt"),
                             str(run / "tones" / "wav" / "valid0.wav"), str(files[1]), str(files[10])],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    growth = json.loads(result.stdout.strip().splitlines()[-1])
    one, ten = growth[str(files[1])], growth[str(files[10])]
    assert ten < 300e6, growth
    assert ten < one + 150e6, growth  # 10x the audio, far from 10x the memory
