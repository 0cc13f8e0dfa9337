"""`mamba_hubert_pretraining`: fairseq's HuBERT task plus what this project adds to it: a data check before
any training starts, and a CTC generator for fairseq-generate."""

from dataclasses import dataclass, field

from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

from mamba_hubert.data.check import validate_or_raise
from mamba_hubert.tasks.ctc_decoding import CTCGreedyDecoder


@dataclass
class MambaHubertPretrainingConfig(HubertPretrainingConfig):
    check_data: bool = field(
        default=True, metadata={"help": "check manifests, audio headers and labels when a split is loaded; "
                                        "fatal problems stop the run before training"})
    check_audio_samples: bool = field(
        default=False, metadata={"help": "also decode float audio to look for NaN/Inf (slower)"})


@register_task("mamba_hubert_pretraining", dataclass=MambaHubertPretrainingConfig)
class MambaHubertPretrainingTask(HubertPretrainingTask):
    cfg: MambaHubertPretrainingConfig

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

    def build_generator(self, models, args, **unused) -> CTCGreedyDecoder:
        """CTC decoding of a fine-tuned model (fairseq-generate); needs `--fine-tuning --labels '["ltr"]'`."""
        if not self.cfg.fine_tuning:
            raise ValueError("decoding needs the fine-tuning labels: pass --fine-tuning --labels '[\"ltr\"]'")
        dictionary = self.target_dictionary
        return CTCGreedyDecoder(dictionary, dictionary.index(self.blank_symbol))
