"""Lexicon + KenLM beam search (flashlight-text) behind `task.build_generator`: on hand-made emissions it spells
lexicon words, lets the LM settle an ambiguous letter, never leaves the lexicon; fairseq-generate reaches it
through `--ctc-lexicon/--ctc-lm`."""

import math
import shutil
from pathlib import Path

import editdistance
import pytest
import torch
from fairseq.data import Dictionary

from mamba_hubert.data.ngram_lm import TLM_PATHS
from mamba_hubert.demo.fairseq_tools import generate_wer, generation_results, hydra_train
from mamba_hubert.inference.ctc_decoding import CTCGreedyDecoder, CTCLexiconDecoder
from mamba_hubert.tasks.mamba_hubert_pretraining import MambaHubertPretrainingConfig, MambaHubertPretrainingTask
from tests.fairseq_runs import (
    SMALL_MODEL,
    finetune_overrides,
    make_tone_corpus,
    pretrain_overrides,
    write_lexicon,
    write_lm,
)

pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text (lexicon/KenLM decoding) is not installed")
if not any(shutil.which(path) for path in TLM_PATHS):
    pytest.skip("IRSTLM (the LM builder) is not installed: apt-get install irstlm", allow_module_level=True)

LETTERS = "|ABCDEGHOST"
LEXICON = {"A": "A", "CAT": "CAT", "CAB": "CAB", "THE": "THE", "SAT": "SAT", "DOGS": "DOGS"}
LM_TEXT = ["A CAT SAT", "THE CAT SAT", "A CAT", "THE CAB", "THE DOGS SAT"]


@pytest.fixture(scope="module")
def letters() -> Dictionary:
    dictionary = Dictionary()  # <s> (the CTC blank, as in fairseq's HuBERT task), <pad>, </s>, <unk>, letters
    for letter in LETTERS:
        dictionary.add_symbol(letter)
    return dictionary


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lexicon_lm")
    return write_lexicon(LEXICON, root / "lexicon.txt"), write_lm(LM_TEXT, root / "lm.arpa")


def decoder(letters: Dictionary, files: tuple[Path, Path], **options) -> CTCLexiconDecoder:
    lexicon, lm = files
    return CTCLexiconDecoder(letters, letters.bos(), str(lexicon), str(lm), **options)


def emissions(letters: Dictionary, frames: list[dict[str, float]]) -> torch.Tensor:
    """(T, V) log-probs; each frame gives probabilities to a few symbols ('-' = blank), the rest share 1e-4."""
    probs = torch.full((len(frames), len(letters)), 1e-4)
    for t, frame in enumerate(frames):
        for symbol, prob in frame.items():
            probs[t, letters.bos() if symbol == "-" else letters.index(symbol)] = prob
    return (probs / probs.sum(-1, keepdim=True)).log()


def spelled(text: str) -> list[dict[str, float]]:
    """Clear emissions: one confident frame per character of `text` (' ' = word boundary, '-' = blank). As a CTC
    model trained on '.ltr' targets, every word is followed by a boundary frame (the lexicon spells it too)."""
    return [{"|" if c == " " else c: 0.99} for c in text]


def test_clear_emission_decodes_the_words(letters, files):
    result = decoder(letters, files).decode(emissions(letters, spelled("-THE CAT SAAT -")))
    assert result["words"] == ["THE", "CAT", "SAT"]
    assert letters.string(result["tokens"]) == "T H E | C A T | S A T |"  # what the '.ltr' references look like
    assert result["positional_scores"].shape == result["tokens"].shape
    assert bool((result["positional_scores"] > math.log(0.9)).all())  # each letter at a frame that emits it
    assert math.isfinite(result["score"])


def test_lm_settles_an_ambiguous_letter(letters, files):
    # "CA?" with B slightly ahead of T: acoustics alone say CAB; after "A" the LM strongly prefers CAT.
    frames = spelled("A CA") + [{"B": 0.55, "T": 0.45}] + spelled(" ")
    assert decoder(letters, files, lm_weight=0.0, word_score=0.0).decode(emissions(letters, frames))["words"] == [
        "A", "CAB"]
    assert decoder(letters, files, lm_weight=2.0, word_score=0.0).decode(emissions(letters, frames))["words"] == [
        "A", "CAT"]


def test_words_outside_the_lexicon_are_never_produced(letters, files):
    # "DOG", "HAT", "SO" are clearly spelled but are not lexicon words; greedy decoding does spell them.
    log_probs = emissions(letters, spelled("THE DOG HAT SO CAT "))
    greedy = CTCGreedyDecoder(letters, letters.bos())
    best = log_probs.argmax(-1).unique_consecutive()
    assert letters.string(best[best != greedy.blank_index]) == "T H E | D O G | H A T | S O | C A T |"
    for weight in (0.0, 2.0):
        result = decoder(letters, files, lm_weight=weight).decode(log_probs)
        assert result["words"] and set(result["words"]) <= set(LEXICON)
        spelled_words = letters.string(result["tokens"]).replace(" ", "").split("|")
        assert [word for word in spelled_words if word] == result["words"]  # the letters spell exactly those words


def test_build_generator_chooses_by_options(letters, files, tmp_path):
    letters.save(str(tmp_path / "dict.ltr.txt"))
    lexicon, lm = files
    common = {"data": str(tmp_path), "label_dir": str(tmp_path), "labels": ["ltr"], "fine_tuning": True,
              "pad_audio": True, "seed": 1}

    def generator(**options):
        task = MambaHubertPretrainingTask(MambaHubertPretrainingConfig(**common, **options))
        return task.build_generator([], None)

    assert isinstance(generator(), CTCGreedyDecoder)
    beam = generator(ctc_lexicon=str(lexicon), ctc_lm=str(lm), ctc_lm_weight=0.5, ctc_beam=7)
    assert isinstance(beam, CTCLexiconDecoder) and beam.silence_index == letters.index("|")
    assert beam.blank_index == letters.bos()
    with pytest.raises(ValueError, match="both --ctc-lexicon and --ctc-lm"):
        generator(ctc_lexicon=str(lexicon))


def test_lexicon_with_an_unknown_letter_is_refused(letters, files, tmp_path):
    _, lm = files
    lexicon = write_lexicon({"CAT": "CAT", "ZOO": "ZOO"}, tmp_path / "lexicon.txt")
    with pytest.raises(ValueError, match="'ZOO' is spelled with"):
        CTCLexiconDecoder(letters, letters.bos(), str(lexicon), str(lm))


def test_fairseq_generate_decodes_with_lexicon_and_lm(tmp_path, monkeypatch):
    """fairseq-generate --ctc-lexicon/--ctc-lm on a tiny fine-tuned model: every hypothesis word is a lexicon word
    (greedy decoding of such an untrained model spells arbitrary letters) and the printed WER is theirs."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    corpus = make_tone_corpus(tmp_path / "tones", splits=(("train", 8), ("valid", 3)))
    hydra_train("pretrain/tiny_transformer", pretrain_overrides(corpus, tmp_path / "pt", "optimization.max_update=1",
                                                          *SMALL_MODEL), tmp_path / "pretrain.log", threads=1)
    hydra_train("finetune/tiny_ctc", finetune_overrides(corpus, tmp_path / "ft", tmp_path / "pt" / "checkpoint_last.pt",
                                                        "optimization.max_update=2", "model.freeze_finetune_updates=0"),
                tmp_path / "finetune.log", threads=1)
    words = {letter * 2: letter * 2 for letter in "ABCDE"}  # the tone corpus's transcripts: "A A |" is the word AA
    lexicon = write_lexicon(words, tmp_path / "lexicon.txt")
    lm = write_lm(["AA BB", "CC DD EE", "AA"], tmp_path / "lm.arpa")
    printed_wer = generate_wer(corpus, corpus, tmp_path / "ft" / "checkpoint_last.pt", "valid", tmp_path / "decode",
                               threads=1, decoder_args=["--ctc-lexicon", str(lexicon), "--ctc-lm", str(lm),
                                                        "--ctc-word-score", "5", "--ctc-beam", "8"])
    assert f"Reading {lm}" in (tmp_path / "decode" / "generate.log").read_text()  # KenLM loaded the given LM
    lines = generation_results(tmp_path / "decode", "valid").read_text().splitlines()
    targets = {line.split("\t")[0][2:]: line.split("\t")[1].split() for line in lines if line.startswith("T-")}
    hypotheses = {line.split("\t")[0][2:]: line.split("\t")[2].split() for line in lines if line.startswith("D-")}
    assert len(hypotheses) == len(targets) == 3
    assert any(hypotheses.values()) and all(set(words_) <= set(words) for words_ in hypotheses.values())
    errors = sum(editdistance.eval(targets[i], hypotheses[i]) for i in targets)
    wer = 100.0 * errors / sum(len(target) for target in targets.values())
    assert printed_wer == pytest.approx(wer, abs=0.01)
