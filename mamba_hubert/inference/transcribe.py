"""`mamba-hubert-transcribe`: the text of audio files, by a fine-tuned CTC checkpoint (hubert_ctc, mamba_hubert_asr).

    mamba-hubert-transcribe --checkpoint CHECKPOINT a.wav b.flac [--lexicon lexicon.txt --lm lm.arpa [--lm-weight 2
        --word-score -1 --beam 50 --beam-threshold 25]] [--json]
    mamba-hubert-transcribe --checkpoint CHECKPOINT a.wav --stream --chunk-ms 100

The checkpoint is `--checkpoint`, as for every tool of this package; the older form with the checkpoint first among
the positional arguments still works, with a deprecation line on stderr, until 0.2.0.

Prints `path<TAB>text` per file on stdout, or with --json one JSON object per file: path, text and the words of the
greedy CTC alignment with their start and end in seconds. Decoding is the task's own generator (what
fairseq-generate uses): greedy CTC, or a lexicon + KenLM beam search (options and defaults those of fairseq-generate's
`--ctc-*` flags); the text is what fairseq-generate prints with `--post-process letter`. With --stream a causal model (hubert_ctc on a causal mamba_hubert, or mamba_hubert_asr with a
causal head) reads each file in chunks (StreamingCtc), the greedy partial hypothesis printed to stderr as it grows,
and the latency per chunk and real-time factor at the end; its final text is the offline one. Offline, files longer
than 30 s go through the long-form path (`ctc_logits_long`, bounded memory) when the upstream is a mamba_hubert.
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils
from fairseq.models.hubert import HubertCtc

import mamba_hubert  # noqa: F401  (registers the model/task and the checkpoint allow-list)
from mamba_hubert.command_line import UsageError, one_line_errors, warnings_only
from mamba_hubert.frames import receptive_field
from mamba_hubert.inference.ctc_decoding import CTCGreedyDecoder, CTCLexiconDecoder, utterance_log_probs
from mamba_hubert.inference.long_form import ctc_logits_long
from mamba_hubert.inference.streaming import NotStreamableError, StreamingCtc
from mamba_hubert.models.mamba_hubert import MambaHubertModel

LONG_FORM_SECONDS = 30.0


class Transcriber:
    """A fine-tuned CTC model, its task's decoder and the audio conventions it was trained with."""

    def __init__(self, checkpoint: str, lexicon: str | None = None, lm: str | None = None,
                 beam_options: dict[str, float] | None = None) -> None:
        if not os.path.isfile(checkpoint):
            raise UsageError(f"{checkpoint}: no such checkpoint")
        with warnings_only("fairseq"):
            models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
        self.model = models[0].eval()
        if not isinstance(self.model, HubertCtc):
            raise UsageError(f"{checkpoint}: a {type(self.model).__name__} (pretraining) checkpoint, not a fine-tuned "
                             "CTC model (hubert_ctc, mamba_hubert_asr): fine-tune it first")
        # The task's generator, so decoder classes and defaults are fairseq-generate's.
        task.cfg.ctc_lexicon, task.cfg.ctc_lm = lexicon, lm
        for name, value in (beam_options or {}).items():  # ctc_lm_weight, ...: fairseq-generate's --ctc-* flags
            setattr(task.cfg, name, value)
        self.decoder: CTCGreedyDecoder | CTCLexiconDecoder = task.build_generator([self.model], None)
        self.dictionary = task.target_dictionary
        self.sample_rate: int = task.cfg.sample_rate
        self.normalize: bool = task.cfg.normalize
        self.greedy = CTCGreedyDecoder(self.dictionary, self.decoder.blank_index)
        upstream = self.model.w2v_encoder.w2v_model
        if hasattr(upstream, "conv_layers"):  # mamba_hubert (its fbank front end has no Conv1d strides to read)
            hop = receptive_field(upstream.conv_layers)[1]
        else:  # fairseq's hubert
            hop = math.prod(m.stride[0] for m in upstream.feature_extractor.modules() if isinstance(m, torch.nn.Conv1d))
        self.frame_seconds = hop / self.sample_rate

    def read_audio(self, path: str) -> torch.Tensor:
        """One channel of float32 samples at the model's rate; other rates are resampled (said on stderr)."""
        if not os.path.isfile(path):
            raise UsageError(f"{path}: no such file")
        try:
            wav, rate = sf.read(path, dtype="float32", always_2d=True)
        except sf.LibsndfileError as error:
            raise UsageError(f"{path}: not readable audio ({error.error_string})") from None
        if wav.shape[1] != 1:
            raise UsageError(f"{path}: {wav.shape[1]} channels; the model reads one")
        wav = wav[:, 0]
        if rate != self.sample_rate:
            print(f"{path}: resampling {rate} Hz to the model's {self.sample_rate} Hz", file=sys.stderr)
            wav = soxr.resample(wav, rate, self.sample_rate).astype(np.float32)
        audio = torch.from_numpy(wav)
        # as fairseq's HubertDataset does when the model was trained with task.normalize
        return F.layer_norm(audio, audio.shape) if self.normalize else audio

    def log_probs(self, audio: torch.Tensor) -> torch.Tensor:
        """The model's (T, V) CTC log-probabilities for one utterance; past LONG_FORM_SECONDS in bounded memory where
        the upstream is a mamba_hubert (`ctc_logits_long`)."""
        if (len(audio) > LONG_FORM_SECONDS * self.sample_rate
                and isinstance(self.model.w2v_encoder.w2v_model, MambaHubertModel)):
            logits = ctc_logits_long(self.model, audio, sample_rate=self.sample_rate)
            return self.model.get_normalized_probs({"encoder_out": logits}, log_probs=True)
        sample = {"net_input": {"source": audio[None], "padding_mask": torch.zeros(1, len(audio), dtype=torch.bool)}}
        return utterance_log_probs([self.model], sample)[0]

    def text(self, log_probs: torch.Tensor, decoder: CTCGreedyDecoder | CTCLexiconDecoder | None = None) -> str:
        """The decoder's words (default: the task's), as fairseq-generate's D- line with --post-process letter."""
        tokens = (decoder or self.decoder).decode(log_probs)["tokens"]
        return self.dictionary.string(tokens.int(), "letter", extra_symbols_to_ignore={self.decoder.eos})

    def streaming_model(self, checkpoint: str) -> StreamingCtc:
        """The model as a StreamingCtc, or a UsageError saying why it cannot stream."""
        if self.normalize:
            raise UsageError(f"{checkpoint}: trained with task.normalize, which normalises each whole file: it "
                             "cannot stream")
        try:
            return StreamingCtc(self.model)
        except NotStreamableError as error:
            raise UsageError(f"{checkpoint}: cannot stream: {error}") from None

    def stream_log_probs(self, streaming: StreamingCtc, audio: torch.Tensor, chunk_samples: int,
                         partial: Callable[[str], None]) -> tuple[torch.Tensor, list[float]]:
        """(T, V) log-probabilities of `audio` fed in chunks, and each chunk's latency in seconds; `partial` gets
        the greedy hypothesis whenever it changes."""
        pieces, latencies, shown = [], [], ""
        for start in range(0, len(audio), chunk_samples):
            began = time.perf_counter()
            with torch.no_grad():
                logits = streaming.push(audio[start : start + chunk_samples])
                pieces.append(self.model.get_normalized_probs({"encoder_out": logits}, log_probs=True))
            text = self.text(torch.cat(pieces), self.greedy)
            latencies.append(time.perf_counter() - began)
            if text != shown:
                partial(text)
                shown = text
        streaming.flush()
        return torch.cat(pieces), latencies


def word_timings(log_probs: torch.Tensor, greedy: CTCGreedyDecoder, frame_seconds: float,
                 separator: str = "|") -> list[dict]:
    """The words of the greedy CTC alignment of (T, V) log-probabilities, each {"word", "start", "end"} in seconds:
    from the first frame of its first letter to the end of the last frame of its last letter."""
    best_ids = log_probs.argmax(-1)
    tokens, counts = torch.unique_consecutive(best_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    separator_index = greedy.dictionary.index(separator)
    words, letters, first, last = [], [], 0, 0
    # a separator after the last frame ends the last word
    runs = [*zip(tokens.tolist(), starts.tolist(), counts.tolist()), (separator_index, len(best_ids), 0)]
    for token, start, count in runs:
        if token in greedy.drop:  # blanks between letters belong to no letter and end no word
            continue
        if token != separator_index:
            first = start if not letters else first
            letters.append(greedy.dictionary[token])
            last = start + count
            continue
        if letters:
            words.append({"word": "".join(letters), "start": first * frame_seconds, "end": last * frame_seconds})
        letters = []
    return words


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mamba-hubert-transcribe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a fine-tuned hubert_ctc or mamba_hubert_asr checkpoint")
    parser.add_argument("audio", nargs="+", help="wav or flac files (without --checkpoint, deprecated: the checkpoint, "
                                                 "then the files)")
    parser.add_argument("--lexicon", help="lexicon ('WORD\\tW O R D |' lines) for beam search; needs --lm")
    parser.add_argument("--lm", help="KenLM model (ARPA or binary) for beam search; needs --lexicon")
    # the task's --ctc-* options of fairseq-generate (None: the task's default)
    parser.add_argument("--lm-weight", type=float, help="weight of the LM log-prob (fairseq-generate --ctc-lm-weight)")
    parser.add_argument("--word-score", type=float, help="score added per word (--ctc-word-score)")
    parser.add_argument("--beam", type=int, help="hypotheses kept per frame (--ctc-beam)")
    parser.add_argument("--beam-threshold", type=float, help="beam pruning threshold (--ctc-beam-threshold)")
    parser.add_argument("--json", action="store_true", help="per file a JSON line: text and word timings")
    parser.add_argument("--stream", action="store_true", help="feed each file in chunks (causal models)")
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="chunk length with --stream")
    # intermixed: the older form puts options between its positional checkpoint and the files
    args = parser.parse_intermixed_args(argv)
    if args.checkpoint is None:  # the older positional form, kept until 0.2.0
        if len(args.audio) < 2:
            parser.error("the following arguments are required: --checkpoint")
        args.checkpoint, args.audio = args.audio[0], args.audio[1:]
        print(f"{parser.prog}: the checkpoint as the first positional argument is deprecated and stops working in "
              f"0.2.0; use --checkpoint {args.checkpoint}", file=sys.stderr)
    if args.chunk_ms <= 0:
        parser.error(f"--chunk-ms must be positive, got {args.chunk_ms}")
    if (args.lexicon is None) != (args.lm is None):
        parser.error("beam search needs both --lexicon and --lm (neither: greedy)")
    with one_line_errors(parser.prog):
        for path in (args.lexicon, args.lm, *args.audio):
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"{path}: no such file")
        beam_options = {f"ctc_{name}": value for name, value in (
            ("lm_weight", args.lm_weight), ("word_score", args.word_score), ("beam", args.beam),
            ("beam_threshold", args.beam_threshold)) if value is not None}
        if beam_options and args.lm is None:
            raise UsageError(f"{', '.join('--' + k[4:].replace('_', '-') for k in beam_options)}: for the beam "
                             "search, which needs --lexicon and --lm")
        transcriber = Transcriber(args.checkpoint, args.lexicon, args.lm, beam_options)
        streaming = transcriber.streaming_model(args.checkpoint) if args.stream else None
        chunk_samples = max(1, round(args.chunk_ms * transcriber.sample_rate / 1000))
        latencies, audio_seconds = [], 0.0
        for path in args.audio:
            audio = transcriber.read_audio(path)
            if streaming is None:
                log_probs = transcriber.log_probs(audio)
            else:
                log_probs, file_latencies = transcriber.stream_log_probs(
                    streaming, audio, chunk_samples, lambda text, path=path: print(f"{path}\t... {text}", file=sys.stderr))
                latencies += file_latencies
                audio_seconds += len(audio) / transcriber.sample_rate
            text = transcriber.text(log_probs)
            if args.json:
                words = word_timings(log_probs, transcriber.greedy, transcriber.frame_seconds)
                print(json.dumps({"path": path, "text": text, "words": words}), flush=True)
            else:
                print(f"{path}\t{text}", flush=True)
        if latencies:
            print(f"streamed {len(latencies)} chunks of {args.chunk_ms:g} ms: latency per chunk mean "
                  f"{1000 * sum(latencies) / len(latencies):.1f} ms, max {1000 * max(latencies):.1f} ms; real-time "
                  f"factor {sum(latencies) / audio_seconds:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
