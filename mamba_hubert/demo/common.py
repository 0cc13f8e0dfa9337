"""What both end-to-end jobs do alike: build the corpus and its labels and LM, run jobs two at a time, decode a
fine-tuned model, run `mamba-hubert-mi` on a checkpoint, and read fairseq's json logs."""

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import editdistance
import soundfile as sf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mamba_hubert.analysis.plots import line_figure
from mamba_hubert.command_line import setup_logging, warnings_only
from mamba_hubert.data.corpus import cached_corpus
from mamba_hubert.data.judge import Judge, normalise, score
from mamba_hubert.data.kmeans import run_kmeans
from mamba_hubert.data.mfcc import dump_mfcc
from mamba_hubert.data.ngram_lm import build_arpa
from mamba_hubert.data.voices import DEFAULT_VOICES
from mamba_hubert.demo.fairseq_tools import decoded_hypotheses, generate_wer, generation_results, run_console_script

logger = logging.getLogger("mamba_hubert.demo")
# every output line of the tools a job runs (fairseq's training log among them): on the console at DEBUG only, which
# `--verbose` turns on; each tool's whole output is in its log file either way
tool_logger = logging.getLogger("mamba_hubert.demo.tools")
SPLITS = ("train", "valid", "test")
# Lexicon + LM decoding: chosen on the valid split of a development run of the demo (docs/DEMO_TUNING.md).
LM_WEIGHT = 2.0
WORD_SCORE = 0.0
BEAM = 500  # the task's default 50 costs ~5 points of valid WER with the LM; 2,000 buys 0.6 more at twice the time
_JSON_LOG = re.compile(r"\[(train_inner|train|valid)\]\[INFO\] - (\{.*\})")
_NUM_UPDATES = re.compile(r'"num_updates": "(\d+)"')


def log(message: str) -> None:
    logger.info("%s", message)


@contextmanager
def job_console(verbose: bool) -> Iterator[None]:
    """A job's console: one line per finished stage and a progress bar per long stage; with `verbose` also each
    stage's start and every line of the tools' output (`tool_logger`). Log lines print above the bars."""
    setup_logging()
    level = logger.level
    if verbose:
        logger.setLevel(logging.DEBUG)
    # without `verbose` the data stages' own progress lines (k-means, MFCC) stay off
    try:
        with nullcontext() if verbose else warnings_only("mamba_hubert.data"), logging_redirect_tqdm():
            yield
    finally:
        logger.setLevel(level)


def progress_bar(name: str, total: int, unit: str) -> tqdm:
    """A long stage's progress bar (on a terminal only; it leaves no line behind: `timed` logs the stage's end)."""
    return tqdm(total=total, desc=name, unit=unit, disable=None, leave=False)


def tool_output(name: str, progress: tqdm | None = None) -> Callable[[str], None]:
    """Where a tool's output lines go besides its log file: `tool_logger`, each line tagged with the run it comes from
    (two runs print side by side); a fairseq training's `num_updates` moves `progress` on."""
    def take(line: str) -> None:
        tool_logger.debug("[%s] %s", name, line)
        updates = _NUM_UPDATES.search(line)
        if progress is not None and updates:
            progress.update(int(updates.group(1)) - progress.n)
    return take


def timed(times: dict[str, float], name: str, step: Callable, *args):
    """Runs one stage, logging its wall time into `times` and one line when it ends (its start at DEBUG)."""
    logger.debug("== %s", name)
    start = time.time()
    result = step(*args)
    times[name] = time.time() - start
    log(f"== {name}: {times[name]:.0f} s")
    return result


def read_metrics(log_text: str) -> dict[str, list[dict]]:
    """fairseq's json log lines, by kind (train_inner, train, valid)."""
    metrics: dict[str, list[dict]] = {"train_inner": [], "train": [], "valid": []}
    for kind, payload in _JSON_LOG.findall(log_text):
        metrics[kind].append(json.loads(payload))
    return metrics


def plot_curves(curves: dict[str, dict[str, list[dict]]], key: str, kind: str, ylabel: str, path: Path) -> None:
    """One fairseq log value (`key` of the `kind` records) against the update, one line per run."""
    x_key = "valid_num_updates" if kind == "valid" else "num_updates"
    with line_figure(path, "update", ylabel, (6, 4)) as ax:
        for name, metrics in curves.items():
            rows = [r for r in metrics[kind] if key in r and x_key in r]
            ax.plot([float(r[x_key]) for r in rows], [float(r[key]) for r in rows], label=name)


@dataclass(frozen=True)
class DemoData:
    """The corpus (manifests, letter transcripts, phone labels, LM text, lexicon), its iteration-1 k-means labels and
    the lexicon + LM decoder flags."""

    corpus: Path
    labels: Path
    lm_decoding: tuple[str, ...]
    transcribe_lm: tuple[str, ...]  # the same beam search in mamba-hubert-transcribe's flags


DEFAULT_CORPUS_CACHE = Path("runs/corpus_cache")  # shared by the demo and the paper's comparison
HUMAN_SPEECH = Path("/usr/share/pocketsphinx/test/data")  # Debian's pocketsphinx-testdata: 10 recorded clips


def prepare_data(out: Path, minutes: float, seed: int, clusters: int, jobs: int, times: dict[str, float],
                 voices: Path = DEFAULT_VOICES, corpus_cache: Path = DEFAULT_CORPUS_CACHE) -> DemoData:
    """The corpus (from the cache shared by every job, keyed by voices, seed, minutes, engine versions and model
    hashes; `out/corpus` links to it), MFCC k-means labels and a 3-gram LM."""
    corpus, mfcc_dir, labels = out / "corpus", out / "features" / "mfcc", out / "labels" / "iter1"

    def make_corpus() -> None:
        if corpus.exists() and not corpus.is_symlink():
            raise SystemExit(f"{corpus} was built by an older version (corpora now live in {corpus_cache}): remove "
                             "it, or choose another --out")
        cached = cached_corpus(corpus_cache, minutes, jobs, seed, voices, log)
        corpus.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        corpus.symlink_to(cached, target_is_directory=True)

    def make_labels() -> None:
        for split in SPLITS:
            dump_mfcc(str(corpus), split, str(mfcc_dir), 1, 0)
        run_kmeans(str(mfcc_dir), str(labels), SPLITS, clusters, seed=seed, n_init=5)

    timed(times, "corpus", make_corpus)
    timed(times, "MFCC + k-means labels", make_labels)
    lm = timed(times, "3-gram LM (IRSTLM)", build_arpa, corpus / "lm.txt", corpus / "lm.arpa")
    return DemoData(corpus, labels, *lm_decoder_flags(corpus / "lexicon.txt", lm))


def human_speech(out: Path, corpus: Path) -> Path:
    """`out/human`: the recorded clips of pocketsphinx-testdata (five LibriVox sentences, five card names) as a
    fairseq subset `human` with the corpus's letter dictionary, transcripts written as the corpus writes them."""
    human = out / "human"
    human.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (HUMAN_SPEECH / folder / listing).read_text().splitlines():
            match = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
            if match:
                rows.append((HUMAN_SPEECH / folder / f"{match.group(2)}.wav", normalise(match.group(1))))
    manifest = ["/"] + [f"{str(path).lstrip('/')}\t{sf.info(path).frames}" for path, _ in rows]
    (human / "human.tsv").write_text("".join(line + "\n" for line in manifest))
    (human / "human.wrd").write_text("".join(f"{words}\n" for _, words in rows))
    (human / "human.ltr").write_text("".join(" ".join(words.replace(" ", "|")) + " |\n" for _, words in rows))
    shutil.copyfile(corpus / "dict.ltr.txt", human / "dict.ltr.txt")
    return human


def judge_subset(data_dir: Path, subset: str, times: dict[str, float]) -> dict[str, dict]:
    """faster-whisper base's WER on a subset, by speaker where the subset has a meta.tsv, and "all"."""
    root = Path((data_dir / f"{subset}.tsv").read_text().splitlines()[0])
    paths = [root / line.split("\t")[0] for line in (data_dir / f"{subset}.tsv").read_text().splitlines()[1:]]
    references = (data_dir / f"{subset}.wrd").read_text().splitlines()
    meta = data_dir / f"{subset}.meta.tsv"
    groups = ([row.split("\t")[3] for row in meta.read_text().splitlines()[1:]] if meta.exists()
              else [subset] * len(paths))
    return timed(times, f"judge {subset}", lambda: score(Judge(threads=1), list(zip(groups, references, paths)))[0])


def lm_decoder_flags(lexicon: Path, lm: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The demo's lexicon + LM beam search as fairseq-generate's flags and as mamba-hubert-transcribe's: the same
    search, so their words can be compared line by line."""
    settings = {"lm-weight": f"{LM_WEIGHT:g}", "word-score": f"{WORD_SCORE:g}", "beam": str(BEAM)}
    generate = ("--ctc-lexicon", str(lexicon), "--ctc-lm", str(lm),
                *(item for name, value in settings.items() for item in (f"--ctc-{name}", value)))
    transcribe = ("--lexicon", str(lexicon), "--lm", str(lm),
                  *(item for name, value in settings.items() for item in (f"--{name}", value)))
    return generate, transcribe


def decode_test(data: DemoData, checkpoint: Path, model_dir: Path, times: dict[str, float], name: str,
                progress: tqdm) -> tuple[float, float]:
    """Test WER of a fine-tuned checkpoint by fairseq-generate: (greedy, lexicon + LM); `progress` counts the two."""
    wer = timed(times, f"decode {name}", generate_wer, data.corpus, data.corpus, checkpoint, "test",
                model_dir / "decode_greedy", tool_output(name), 1)
    progress.update()
    wer_lm = timed(times, f"decode {name} with lexicon + LM", generate_wer, data.corpus, data.corpus, checkpoint,
                   "test", model_dir / "decode_lm", tool_output(name), 1, data.lm_decoding)
    progress.update()
    return wer, wer_lm


def wer_by_speaker(corpus: Path, results_dir: Path, subset: str) -> dict[str, float]:
    """The WER (%) of fairseq-generate's words in `results_dir` for each speaker of `subset` (the corpus's
    `{subset}.meta.tsv`), and "all": where a split's errors come from, e.g. one unseen voice."""
    references = (corpus / f"{subset}.wrd").read_text().splitlines()
    speakers = [row.split("\t")[3] for row in (corpus / f"{subset}.meta.tsv").read_text().splitlines()[1:]]
    decoded = decoded_hypotheses(results_dir, subset)
    if len(decoded) != len(references) or len(speakers) != len(references):
        raise RuntimeError(f"{generation_results(results_dir, subset)}: {len(decoded)} decoded utterances, "
                           f"{len(references)} in {corpus / f'{subset}.wrd'}, {len(speakers)} in its meta.tsv")
    counts: dict[str, list[int]] = {}
    for index, (reference, speaker) in enumerate(zip(references, speakers)):
        words = reference.split()
        errors = editdistance.eval(words, decoded[index].split())
        for key in (speaker, "all"):
            counts.setdefault(key, [0, 0])
            counts[key][0] += errors
            counts[key][1] += len(words)
    return {key: 100.0 * errors / words for key, (errors, words) in sorted(counts.items())}


def transcribe_agreement(data: DemoData, checkpoint: Path, model_dir: Path, times: dict[str, float],
                         name: str, progress: tqdm) -> dict[str, list[int]]:
    """`mamba-hubert-transcribe` on every test file, greedy and with the lexicon + LM: how many of its lines print
    the words fairseq-generate decoded (`decode_test`'s results), {"greedy": [same, files], "lm": [...]}."""
    wavs = [str(data.corpus / line.split("\t")[0])
            for line in (data.corpus / "test.tsv").read_text().splitlines()[1:]]
    agreement = {}
    for kind, flags in (("greedy", ()), ("lm", data.transcribe_lm)):
        decoded = decoded_hypotheses(model_dir / f"decode_{kind}", "test")
        printed = timed(times, f"transcribe {name} ({kind})", run_console_script,
                        ["mamba-hubert-transcribe", "--checkpoint", str(checkpoint), *wavs, *flags],
                        model_dir / f"transcribe_{kind}.log", tool_output(name), 1)
        progress.update()
        texts = dict(line.split("\t", 1) for line in printed.splitlines() if "\t" in line and line.split("\t")[0] in wavs)
        agreement[kind] = [sum(texts.get(wav) == decoded[i] for i, wav in enumerate(wavs)), len(wavs)]
    return agreement


def layerwise_mi_of(checkpoint: Path, name: str, part_dir: Path, data_args: Sequence[str],
                    times: dict[str, float], progress: tqdm) -> dict:
    """One checkpoint's layer-wise MI: `mamba-hubert-mi` on one thread, into `part_dir`; its mi.json. `progress`
    counts the checkpoints done."""
    timed(times, f"mutual information: {name}", run_console_script, [
        "mamba-hubert-mi", "--checkpoint", str(checkpoint), "--name", name, "--out", str(part_dir), *data_args,
    ], part_dir / "mi.log", tool_output(name), 1)
    progress.update()
    return json.loads((part_dir / "mi.json").read_text())


def merge_mi_parts(parts: dict[str, dict]) -> dict:
    """One mi.json record from per-checkpoint ones (each written by `mamba-hubert-mi` for one name), in order."""
    first = next(iter(parts.values()))
    merged = {key: first[key] for key in ("subset", "utterances", "seeds", "marginals", "xt_quantity")}
    for field in ("checkpoints", "layers", "verdicts"):
        merged[field] = {name: part[field][name] for name, part in parts.items()}
    return merged


def run_jobs(jobs: dict[str, tuple[Sequence[str], Callable[[], object]]], workers: int = 2) -> dict[str, object]:
    """Runs every job once the jobs it depends on have finished, `workers` at a time; among the jobs ready to start,
    the one listed first goes first. {name: (dependencies, function)} -> {name: result}. A failing job stops the
    rest (those running finish) and its error is raised."""
    results: dict[str, object] = {}
    pending = dict(jobs)
    running = {}
    unknown = {dep for deps, _ in jobs.values() for dep in deps} - set(jobs)
    if unknown:
        raise ValueError(f"jobs depend on undefined jobs: {sorted(unknown)}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for name in [n for n, (deps, _) in pending.items() if all(d in results for d in deps)]:
                if len(running) == workers:
                    break
                running[pool.submit(pending.pop(name)[1])] = name
            if not running:
                raise ValueError(f"jobs wait on each other: {sorted(pending)}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                results[name] = future.result()
    return results
