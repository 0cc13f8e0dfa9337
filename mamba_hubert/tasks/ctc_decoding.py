"""Greedy CTC decoding behind `task.build_generator`, so `fairseq-generate --scoring wer` decodes a
fine-tuned `hubert_ctc` model."""


import torch
from fairseq.data.dictionary import Dictionary


class CTCGreedyDecoder:
    """Best path: the most likely token per frame, repeats merged, blanks removed."""

    def __init__(self, dictionary: Dictionary, blank_index: int) -> None:
        self.dictionary = dictionary
        self.blank_index = blank_index
        self.eos = dictionary.eos()  # fairseq-generate strips this symbol from the printed strings
        self.drop = {blank_index, dictionary.pad(), dictionary.eos(), dictionary.bos()}

    @torch.no_grad()
    def generate(self, models, sample: dict, **unused) -> list[list[dict[str, torch.Tensor]]]:
        if len(models) != 1:
            raise ValueError("CTC decoding takes one model, not an ensemble")
        model = models[0]
        net_output = model(**sample["net_input"])
        log_probs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1).float()  # (B, T, V)
        padding = net_output.get("padding_mask")
        hypotheses = []
        for i in range(log_probs.shape[0]):
            frames = log_probs[i] if padding is None else log_probs[i][~padding[i]]
            best, best_ids = frames.max(-1)
            collapsed, counts = torch.unique_consecutive(best_ids, return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            keep = torch.tensor([t not in self.drop for t in collapsed.tolist()], dtype=torch.bool)
            # fairseq-generate reads every one of these keys; a token's score is its first frame's log-prob.
            hypotheses.append([{"tokens": collapsed[keep], "score": best.sum().item(), "alignment": None,
                                "positional_scores": best[starts[keep]]}])
        return hypotheses
