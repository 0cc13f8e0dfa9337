"""CTC decoding behind `task.build_generator`, so `fairseq-generate --scoring wer` decodes a fine-tuned
`hubert_ctc` model: greedy best path, or a lexicon + KenLM beam search through flashlight-text."""


import torch
from fairseq.data.dictionary import Dictionary


@torch.no_grad()
def utterance_log_probs(models, sample: dict) -> list[torch.Tensor]:
    """The CTC model's (T, V) log-probabilities for each utterance of `sample`, padded frames dropped."""
    if len(models) != 1:
        raise ValueError("CTC decoding takes one model, not an ensemble")
    model = models[0]
    net_output = model(**sample["net_input"])
    log_probs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1).float()  # (B, T, V)
    padding = net_output.get("padding_mask")
    return [log_probs[i] if padding is None else log_probs[i][~padding[i]] for i in range(log_probs.shape[0])]


class CTCGreedyDecoder:
    """Best path: the most likely token per frame, repeats merged, blanks removed."""

    def __init__(self, dictionary: Dictionary, blank_index: int) -> None:
        self.dictionary = dictionary
        self.blank_index = blank_index
        self.eos = dictionary.eos()  # fairseq-generate strips this symbol from the printed strings
        self.drop = {blank_index, dictionary.pad(), dictionary.eos(), dictionary.bos()}

    def decode(self, log_probs: torch.Tensor) -> dict:
        """Best path of one utterance's (T, V) log-probabilities: tokens, score, positional scores."""
        best, best_ids = log_probs.max(-1)
        collapsed, counts = torch.unique_consecutive(best_ids, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        keep = torch.tensor([t not in self.drop for t in collapsed.tolist()], dtype=torch.bool)
        # fairseq-generate reads every one of these keys; a token's score is its first frame's log-prob.
        return {"tokens": collapsed[keep], "score": best.sum().item(), "alignment": None,
                "positional_scores": best[starts[keep]]}

    def generate(self, models, sample: dict, **unused) -> list[list[dict[str, torch.Tensor]]]:
        return [[self.decode(frames)] for frames in utterance_log_probs(models, sample)]


class CTCLexiconDecoder:
    """Beam search over words of a lexicon, scored by a KenLM n-gram model (ARPA or binary), through
    flashlight-text. Returns the same hypothesis dicts as CTCGreedyDecoder: letter indices with '|' between
    words, so fairseq-generate's `--post-process letter` and WER scoring read them unchanged."""

    def __init__(self, dictionary: Dictionary, blank_index: int, lexicon: str, lm: str, *, lm_weight: float = 2.0,
                 word_score: float = -1.0, beam: int = 50, beam_threshold: float = 25.0,
                 silence_symbol: str = "|") -> None:
        try:  # an optional dependency: greedy decoding works without it
            from flashlight.lib.text.decoder import (
                CriterionType,
                LexiconDecoder,
                LexiconDecoderOptions,
                SmearingMode,
                Trie,
            )
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import create_word_dict, load_words
        except ImportError as error:
            raise ImportError("lexicon/LM decoding needs flashlight-text: pip install flashlight-text==0.0.7") from error
        if silence_symbol not in dictionary.indices:
            raise ValueError(f"the letter dictionary has no word boundary symbol {silence_symbol!r}")
        self.dictionary = dictionary
        self.blank_index = blank_index
        self.silence_index = dictionary.index(silence_symbol)
        self.eos = dictionary.eos()

        spellings = load_words(lexicon)
        self.word_dict = create_word_dict(spellings)  # adds <s>, </s>, <unk>
        self.lm = KenLM(lm, self.word_dict)
        # The trie holds every spelling; each node keeps the best unigram LM score below it (smearing), which
        # lets the search rank partial words before they are complete.
        trie = Trie(len(dictionary), self.silence_index)
        start = self.lm.start(False)
        for word, word_spellings in spellings.items():
            word_index = self.word_dict.get_index(word)
            _, unigram = self.lm.score(start, word_index)
            for spelling in word_spellings:
                missing = [letter for letter in spelling if letter not in dictionary.indices]
                if missing:
                    raise ValueError(f"lexicon {lexicon}: {word!r} is spelled with {missing}, which the letter "
                                     "dictionary lacks")
                trie.insert([dictionary.index(letter) for letter in spelling], word_index, unigram)
        trie.smear(SmearingMode.MAX)
        self.trie = trie  # the decoder refers to it; keep it alive
        options = LexiconDecoderOptions(
            beam_size=beam, beam_size_token=len(dictionary), beam_threshold=beam_threshold, lm_weight=lm_weight,
            word_score=word_score, unk_score=float("-inf"),  # never emit a word outside the lexicon
            sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC)
        self.decoder = LexiconDecoder(options, trie, self.lm, self.silence_index, blank_index,
                                      self.word_dict.get_index("<unk>"), [], False)

    def decode(self, log_probs: torch.Tensor) -> dict:
        """Best hypothesis for one utterance's (T, V) log-probabilities: tokens, score, the words' strings."""
        emissions = log_probs.detach().to(dtype=torch.float32, device="cpu").contiguous()
        frames, vocab = emissions.shape
        best = self.decoder.decode(emissions.data_ptr(), frames, vocab)[0]
        # flashlight's path has T + 2 steps: a silence before frame 0 and one after the last frame.
        path = torch.tensor(best.tokens, dtype=torch.long)
        tokens, counts = torch.unique_consecutive(path, return_counts=True)
        frame_of = (torch.cumsum(counts, 0) - counts - 1).clamp(0, frames - 1).tolist()
        # Letters and single word boundaries: no blanks, no boundary at the start or twice in a row (a blank
        # between two silence frames), one at the end, as in the '.ltr' references.
        kept = []
        for token, frame in zip(tokens.tolist(), frame_of):
            if token == self.blank_index or (token == self.silence_index and (not kept or kept[-1][0] == token)):
                continue
            kept.append((token, frame))
        if kept and kept[-1][0] != self.silence_index:
            kept.append((self.silence_index, frames - 1))
        token_ids = [token for token, _ in kept]
        # A token's score is its first frame's log-prob, as in the greedy decoder.
        positional = emissions[[frame for _, frame in kept], token_ids]
        return {"tokens": torch.tensor(token_ids, dtype=torch.long), "score": float(best.score), "alignment": None,
                "positional_scores": positional,
                "words": [self.word_dict.get_entry(word) for word in best.words if word >= 0]}

    def generate(self, models, sample: dict, **unused) -> list[list[dict]]:
        return [[self.decode(frames)] for frames in utterance_log_probs(models, sample)]
