"""`mamba_hubert_pretraining`: fairseq's HuBERT task plus what this project adds to it: a data check before
any training starts, random crops, span masks and training-split augmentation that a resumed run replays, and a CTC
generator for fairseq-generate."""

import logging
from dataclasses import dataclass, field
from typing import List, Optional  # noqa: UP035

import torch
from fairseq.data.audio.hubert_dataset import HubertDataset
from fairseq.distributed import utils as distributed_utils
from fairseq.logging import metrics
from fairseq.models.hubert.hubert_asr import HubertCtc
from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask, LabelEncoder
from omegaconf import II

from mamba_hubert.data.check import validate_or_raise
from mamba_hubert.inference.ctc_decoding import CTCGreedyDecoder, CTCLexiconDecoder
from mamba_hubert.models.seeded_masks import seeded_draws
from mamba_hubert.tasks.augmentation import Augmentation, SeededAugmentation

logger = logging.getLogger(__name__)


def _wrappers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """`model` and the modules inside fairseq's data-parallel wrappers (a proxy around a DDP module, each holding
    `module`), outermost first."""
    chain = [model]
    while isinstance(getattr(chain[-1], "module", None), torch.nn.Module):
        chain.append(chain[-1].module)
    return chain


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside fairseq's data-parallel wrappers."""
    return _wrappers(model)[-1]


@dataclass
class MambaHubertPretrainingConfig(HubertPretrainingConfig):
    check_data: bool = field(
        default=True, metadata={"help": "check manifests, audio headers and labels when a split is loaded; "
                                        "fatal problems stop the run before training"})
    check_audio_samples: bool = field(
        default=False, metadata={"help": "also decode float audio to look for NaN/Inf (slower)"})
    mi_interval_updates: int = field(
        default=0, metadata={"help": "every this many updates, at validation, log I(X;T_i) of every encoder layer "
                                     "(MINE and SMILE on a fixed probe set) as valid mi_xt_layer<i> and "
                                     "mi_xt_smile_layer<i>; 0 = off"})
    mi_probe_subset: str = field(default="valid", metadata={"help": "split whose first utterances are the probe set"})
    mi_probe_utterances: int = field(default=8, metadata={"help": "utterances in the MI probe set"})
    mi_max_frames: int = field(default=2000, metadata={"help": "frames per MI estimate (subsampled)"})
    mi_mine_iterations: int = field(default=1000, metadata={"help": "MINE steps per estimate during training"})
    mi_seeds: int = field(default=2, metadata={"help": "MINE seeds (fresh networks) per estimate"})
    seed: int = field(default=II("common.seed"), metadata={"help": "seeds random crops, span masks and augmentation"})
    # Training split only, drawn per utterance from (seed, epoch, utterance id). List[...], not list[...]: fairseq's
    # CLI flags recognise only the typing form.
    speed_perturb: List[float] = field(  # noqa: UP006
        default_factory=list, metadata={"help": "speed factors drawn from per training utterance, e.g. [0.9,1.0,1.1] "
                                                "(soxr resampling); [] = off. Only with sequence labels "
                                                "(label_rate=-1): frame-level labels would no longer line up"})
    noise_snr_db: Optional[List[float]] = field(  # noqa: UP006, UP045
        default=None, metadata={"help": "[low, high]: add Gaussian noise to each training utterance at an SNR "
                                        "drawn uniformly in this range (dB); null or [] = off"})
    # Decoding (fairseq-generate): greedy unless both a lexicon and an LM are given. Optional[...], not `| None`:
    # fairseq turns these fields into CLI flags and recognises only the typing form.
    ctc_lexicon: Optional[str] = field(  # noqa: UP045
        default=None, metadata={"help": "lexicon for beam search decoding, one 'WORD<TAB>W O R D |' a line; only "
                                        "its words can be decoded (needs ctc_lm and flashlight-text)"})
    ctc_lm: Optional[str] = field(  # noqa: UP045
        default=None, metadata={"help": "KenLM word n-gram model (ARPA or binary, order >= 2) for beam search"})
    ctc_lm_weight: float = field(default=2.0, metadata={"help": "weight of the LM log-prob in the beam search"})
    ctc_word_score: float = field(default=-1.0, metadata={"help": "score added per decoded word"})
    ctc_beam: int = field(default=50, metadata={"help": "hypotheses kept per frame in the beam search"})
    ctc_beam_threshold: float = field(
        default=25.0, metadata={"help": "hypotheses scoring this far below the best are dropped"})


class SeededCropHubertDataset(SeededAugmentation, HubertDataset):
    """HubertDataset whose random crops follow from (seed, epoch, the batch's utterance ids), and its augmentation
    (if any) from (seed, epoch, the utterance id)."""

    def crop_to_max_size(self, wav: torch.Tensor, target_size: int) -> tuple[torch.Tensor, int]:
        excess = len(wav) - target_size
        if not self.random_crop or excess <= 0:
            return super().crop_to_max_size(wav, target_size)
        start = self.crop_start(excess)
        return wav[start : start + target_size], start


@register_task("mamba_hubert_pretraining", dataclass=MambaHubertPretrainingConfig)
class MambaHubertPretrainingTask(HubertPretrainingTask):
    cfg: MambaHubertPretrainingConfig

    def __init__(self, cfg: MambaHubertPretrainingConfig) -> None:
        if cfg.fine_tuning and not cfg.pad_audio:
            # fairseq's HubertDataset would crop each batch to its shortest utterance but keep every transcript.
            raise ValueError("fine-tuning on transcripts needs task.pad_audio=true (fairseq would otherwise crop "
                             "the audio to the shortest utterance of each batch while keeping full transcripts)")
        self.augmentation = Augmentation.from_config(cfg.speed_perturb, cfg.noise_snr_db)
        if self.augmentation.speed_factors and cfg.label_rate > 0:
            # Refused rather than resampling the labels: nearest-neighbour k-means labels would be made-up targets.
            raise ValueError(f"task.speed_perturb={list(self.augmentation.speed_factors)} changes the utterances' "
                             f"lengths, so the frame-level labels (task.label_rate={cfg.label_rate}) would no longer "
                             f"line up with the audio: use it with sequence labels (fine-tuning on letters, "
                             f"task.label_rate=-1), or set task.speed_perturb=[] (task.noise_snr_db keeps lengths)")
        super().__init__(cfg)
        self._mi_last_update = None
        self._mi_pending = False

    def load_dataset(self, split: str, **kwargs) -> None:
        # Only fairseq's Trainer.get_train_iterator passes data_selector: validation and fairseq-generate never do, so
        # their splits (whatever their names) are never augmented.
        training = "data_selector" in kwargs
        dictionaries = [self.target_dictionary] if self.cfg.fine_tuning else self.dictionaries
        if self.cfg.check_data:
            validate_or_raise(
                self.cfg.data,
                split,
                label_dir=self.get_label_dir(),
                labels=self.cfg.labels,
                label_rates=self.cfg.label_rate,
                sample_rate=self.cfg.sample_rate,
                min_samples=self.cfg.min_sample_size,
                max_samples=self.cfg.max_keep_size,
                dictionaries=dictionaries,
                scan_samples=self.cfg.check_audio_samples,
            )
        self.datasets[split] = SeededCropHubertDataset(
            f"{self.cfg.data}/{split}.tsv",
            sample_rate=self.cfg.sample_rate,
            label_paths=[f"{self.get_label_dir()}/{split}.{label}" for label in self.cfg.labels],
            label_rates=self.cfg.label_rate,
            pad_list=[dictionary.pad() for dictionary in dictionaries],
            eos_list=[dictionary.eos() for dictionary in dictionaries],
            label_processors=[LabelEncoder(dictionary) for dictionary in dictionaries],
            max_keep_sample_size=self.cfg.max_keep_size,
            min_keep_sample_size=self.cfg.min_sample_size,
            max_sample_size=self.cfg.max_sample_size,
            pad_audio=self.cfg.pad_audio,
            normalize=self.cfg.normalize,
            store_labels=False,
            random_crop=self.cfg.random_crop,
            single_target=self.cfg.single_target,
            seed=self.cfg.seed,
            augmentation=self.augmentation if training else None,
        )

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        with seeded_draws(model, self.cfg.seed, sample["id"]):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad=ignore_grad)

    def begin_valid_epoch(self, epoch: int, model) -> None:
        super().begin_valid_epoch(epoch, model)
        if self.cfg.mi_interval_updates <= 0:
            return
        meter = metrics.get_meter("default", "num_updates")
        updates = int(meter.val) if meter is not None and meter.val is not None else 0
        due = self._mi_last_update is None or updates - self._mi_last_update >= self.cfg.mi_interval_updates
        if due:
            self._mi_last_update = updates
        self._mi_pending = due

    def valid_step(self, sample, model, criterion):
        with seeded_draws(model, self.cfg.seed, sample["id"]):
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self._mi_pending:  # once per due validation, on its first batch
            self._mi_pending = False
            logging_output.update(self.probe_on_rank_zero(model))
        return loss, sample_size, logging_output

    def probe_on_rank_zero(self, model: torch.nn.Module) -> dict:
        """`probe_mutual_information` run by data-parallel rank 0 alone, its values broadcast: every rank holds the
        same parameters, so the others would repeat the whole MINE run for the same numbers. Every rank logs them,
        so the mean `reduce_metrics` takes is rank 0's value. An error on rank 0 is broadcast too and raised on every
        rank, which would otherwise wait in the broadcast until the backend's timeout."""
        if any(type(m).__name__ == "FullyShardedDataParallel" for m in _wrappers(model)):
            raise ValueError("task.mi_interval_updates needs every rank's forward under ddp_backend=fully_sharded, "
                             "which a probe on rank 0 alone cannot have; set it to 0 and run mamba-hubert-mi on "
                             "the checkpoints")
        if distributed_utils.get_data_parallel_world_size() == 1:
            return self.probe_mutual_information(unwrapped(model))
        values, failure = None, None
        if distributed_utils.get_data_parallel_rank() == 0:
            try:
                values = self.probe_mutual_information(unwrapped(model))
            except Exception as error:  # noqa: BLE001 (raised below on every rank)
                failure = f"{type(error).__name__}: {error}"
        values, failure = distributed_utils.broadcast_object(
            (values, failure), src_rank=0, group=distributed_utils.get_data_parallel_group())
        if failure is not None:
            raise RuntimeError(f"the I(X;T) probe failed on rank 0: {failure}")
        return values

    def probe_mutual_information(self, model) -> dict:
        """{"mi_xt_layer<i>": MINE's and "mi_xt_smile_layer<i>": SMILE's estimate of I(X;T_i) in nats} on the fixed
        probe set (marginal pairs within an utterance, as `mamba-hubert-mi`'s default)."""
        # imported here, when the probe is on: every training imports this task, few need scikit-learn's estimators
        from mamba_hubert.analysis.layerwise import XT_KEYS, layerwise_mi

        dataset = self.datasets[self.cfg.mi_probe_subset]
        count = min(self.cfg.mi_probe_utterances, len(dataset))
        waves = [dataset.get_audio(i).numpy() for i in range(count)]
        logger.info("I(X;T) probe: %d utterances of %s, %d MINE seed(s)", count, self.cfg.mi_probe_subset,
                    self.cfg.mi_seeds)
        with torch.enable_grad():  # fairseq validates under no_grad; MINE trains its statistics networks
            rows = layerwise_mi(model, waves, seeds=range(self.cfg.mi_seeds),
                                mine_iterations=self.cfg.mi_mine_iterations, max_frames=self.cfg.mi_max_frames)
        return {f"{key}_layer{row['layer']}": row[key]["mean"] for row in rows for key in XT_KEYS.values()}

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        for key in sorted({k for log in logging_outputs for k in log if k.startswith("mi_xt")}):
            values = [log[key] for log in logging_outputs if key in log]
            metrics.log_scalar(key, sum(values) / len(values), round=3)

    def build_generator(self, models, args, **unused) -> CTCGreedyDecoder | CTCLexiconDecoder:
        """CTC decoding of a fine-tuned model (fairseq-generate); needs `--fine-tuning --labels '["ltr"]'`.
        Greedy, or a lexicon + KenLM beam search with `--ctc-lexicon PATH --ctc-lm PATH`."""
        if not self.cfg.fine_tuning:
            raise SystemExit("decoding needs the fine-tuning labels: pass --fine-tuning --labels '[\"ltr\"]'")
        if not all(isinstance(model, HubertCtc) for model in models):
            names = ", ".join(sorted({type(model).__name__ for model in models}))
            raise SystemExit(f"fairseq-generate decodes fine-tuned CTC models (hubert_ctc, mamba_hubert_asr); "
                             f"--path holds {names}, a pretraining checkpoint: fine-tune it first")
        dictionary = self.target_dictionary
        blank = dictionary.index(self.blank_symbol)
        if (self.cfg.ctc_lexicon is None) != (self.cfg.ctc_lm is None):
            raise ValueError("beam search decoding needs both --ctc-lexicon and --ctc-lm (neither: greedy)")
        if self.cfg.ctc_lexicon is None:
            return CTCGreedyDecoder(dictionary, blank)
        return CTCLexiconDecoder(dictionary, blank, self.cfg.ctc_lexicon, self.cfg.ctc_lm,
                                 lm_weight=self.cfg.ctc_lm_weight, word_score=self.cfg.ctc_word_score,
                                 beam=self.cfg.ctc_beam, beam_threshold=self.cfg.ctc_beam_threshold)
