"""The n-gram LM builder: IRSTLM writes an ARPA model that flashlight-text's KenLM loads and that prefers the
word orders it was estimated on; bad input and a missing IRSTLM give clear errors."""

import re
import shutil

import pytest

from mamba_hubert.data import ngram_lm

HAS_IRSTLM = any(shutil.which(path) for path in ngram_lm.TLM_PATHS)
needs_irstlm = pytest.mark.skipif(not HAS_IRSTLM, reason="IRSTLM is not installed (apt-get install irstlm)")
TEXT = ["THE CAT SAT", "A CAT SAT", "THE DOG RAN", "A DOG SAT", "THE CAT RAN"]


def sentence_log10(lm, word_dict, sentence: str) -> float:
    state, total = lm.start(False), 0.0
    for word in sentence.split():
        state, score = lm.score(state, word_dict.get_index(word))
        total += score
    return total + lm.finish(state)[1]


@needs_irstlm
def test_arpa_covers_the_words_and_prefers_seen_orders(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("\n".join(TEXT) + "\n")
    arpa = ngram_lm.build_arpa(text, tmp_path / "lm.arpa", order=3, smoothing="wb")  # five sentences: see below
    content = arpa.read_text()
    counts = {int(n): int(c) for n, c in re.findall(r"ngram\s+(\d)=\s*(\d+)", content)}
    assert set(counts) == {1, 2, 3} and counts[2] > 0
    unigrams = re.search(r"\\1-grams:\n(.*?)\n\n", content, re.DOTALL).group(1).splitlines()
    assert {line.split("\t")[1] for line in unigrams} >= {"THE", "A", "CAT", "DOG", "SAT", "RAN", "<s>", "</s>"}
    assert set(tmp_path.iterdir()) == {text, arpa}  # the temporary folder is gone

    flashlight = pytest.importorskip("flashlight.lib.text.decoder.kenlm", reason="flashlight-text not installed")
    from flashlight.lib.text.dictionary import create_word_dict, load_words

    lexicon = tmp_path / "lexicon.txt"  # as the decoder builds its word list (with <unk>, <s>, </s>)
    lexicon.write_text("".join(f"{word}\t{' '.join(word)} |\n" for word in ["THE", "A", "CAT", "DOG", "SAT", "RAN"]))
    word_dict = create_word_dict(load_words(str(lexicon)))
    lm = flashlight.KenLM(str(arpa), word_dict)
    assert sentence_log10(lm, word_dict, "THE CAT SAT") > sentence_log10(lm, word_dict, "SAT CAT THE")
    assert sentence_log10(lm, word_dict, "A DOG SAT") > sentence_log10(lm, word_dict, "DOG A SAT")


@needs_irstlm
def test_failed_estimation_names_the_file_and_the_reason(tmp_path):
    # Kneser-Ney needs counts of n-grams seen once, twice, ...: five sentences do not have them.
    text = tmp_path / "lm.txt"
    text.write_text("\n".join(TEXT) + "\n")
    with pytest.raises(RuntimeError, match=re.escape(str(text)) + r"(.|\n)*count-of-counts"):
        ngram_lm.build_arpa(text, tmp_path / "lm.arpa", smoothing="ikn")
    assert set(tmp_path.iterdir()) == {text}


def test_empty_text_is_refused(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("\n\n")
    with pytest.raises(ValueError, match=re.escape(str(text))):
        ngram_lm.build_arpa(text, tmp_path / "lm.arpa")
    assert not (tmp_path / "lm.arpa").exists()


def test_missing_irstlm_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(ngram_lm, "TLM_PATHS", ("no-such-tlm", str(tmp_path / "tlm")))
    text = tmp_path / "lm.txt"
    text.write_text("THE CAT\n")
    with pytest.raises(SystemExit, match="apt-get install irstlm"):
        ngram_lm.build_arpa(text, tmp_path / "lm.arpa")
