"""`mamba_hubert_pretraining`: fairseq's HuBERT task plus what this project adds to it: a data check before
any training starts, and a CTC generator for fairseq-generate."""

from dataclasses import dataclass, field

import torch
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

from mamba_hubert.analysis.layerwise import layerwise_mi
from mamba_hubert.data.check import validate_or_raise
from mamba_hubert.tasks.ctc_decoding import CTCGreedyDecoder


@dataclass
class MambaHubertPretrainingConfig(HubertPretrainingConfig):
    check_data: bool = field(
        default=True, metadata={"help": "check manifests, audio headers and labels when a split is loaded; "
                                        "fatal problems stop the run before training"})
    check_audio_samples: bool = field(
        default=False, metadata={"help": "also decode float audio to look for NaN/Inf (slower)"})
    mi_interval_updates: int = field(
        default=0, metadata={"help": "every this many updates, at validation, log I(X;T_i) of every encoder layer "
                                     "(MINE on a fixed probe set) as valid mi_xt_layer<i>; 0 = off"})
    mi_probe_subset: str = field(default="valid", metadata={"help": "split whose first utterances are the probe set"})
    mi_probe_utterances: int = field(default=8, metadata={"help": "utterances in the MI probe set"})
    mi_max_frames: int = field(default=2000, metadata={"help": "frames per MI estimate (subsampled)"})
    mi_mine_iterations: int = field(default=1000, metadata={"help": "MINE steps per estimate during training"})
    mi_seeds: int = field(default=2, metadata={"help": "MINE seeds (fresh networks) per estimate"})


@register_task("mamba_hubert_pretraining", dataclass=MambaHubertPretrainingConfig)
class MambaHubertPretrainingTask(HubertPretrainingTask):
    cfg: MambaHubertPretrainingConfig

    def __init__(self, cfg: MambaHubertPretrainingConfig) -> None:
        if cfg.fine_tuning and not cfg.pad_audio:
            # fairseq's HubertDataset would crop each batch to its shortest utterance but keep every transcript.
            raise ValueError("fine-tuning on transcripts needs task.pad_audio=true (fairseq would otherwise crop "
                             "the audio to the shortest utterance of each batch while keeping full transcripts)")
        super().__init__(cfg)
        self._mi_last_update = None
        self._mi_pending = False

    def load_dataset(self, split: str, **kwargs) -> None:
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
                dictionaries=[self.target_dictionary] if self.cfg.fine_tuning else self.dictionaries,
                scan_samples=self.cfg.check_audio_samples,
            )
        super().load_dataset(split, **kwargs)

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
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self._mi_pending:  # once per due validation, on its first batch
            self._mi_pending = False
            logging_output.update(self.probe_mutual_information(getattr(model, "module", model)))
        return loss, sample_size, logging_output

    def probe_mutual_information(self, model) -> dict:
        """{"mi_xt_layer<i>": MINE estimate of I(X;T_i) in nats} on the fixed probe set."""
        dataset = self.datasets[self.cfg.mi_probe_subset]
        count = min(self.cfg.mi_probe_utterances, len(dataset))
        waves = [dataset.get_audio(i).numpy() for i in range(count)]
        with torch.enable_grad():  # fairseq validates under no_grad; MINE trains its statistics networks
            rows = layerwise_mi(model, waves, seeds=range(self.cfg.mi_seeds),
                                mine_iterations=self.cfg.mi_mine_iterations, max_frames=self.cfg.mi_max_frames)
        return {f"mi_xt_layer{row['layer']}": row["mi_xt"]["mean"] for row in rows}

    def reduce_metrics(self, logging_outputs, criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        for key in sorted({k for log in logging_outputs for k in log if k.startswith("mi_xt_layer")}):
            values = [log[key] for log in logging_outputs if key in log]
            metrics.log_scalar(key, sum(values) / len(values), round=3)

    def build_generator(self, models, args, **unused) -> CTCGreedyDecoder:
        """CTC decoding of a fine-tuned model (fairseq-generate); needs `--fine-tuning --labels '["ltr"]'`."""
        if not self.cfg.fine_tuning:
            raise ValueError("decoding needs the fine-tuning labels: pass --fine-tuning --labels '[\"ltr\"]'")
        dictionary = self.target_dictionary
        return CTCGreedyDecoder(dictionary, dictionary.index(self.blank_symbol))
