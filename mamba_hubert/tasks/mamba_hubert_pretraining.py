"""`mamba_hubert_pretraining`: fairseq's HuBERT task plus what this project adds to it."""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask

from mamba_hubert.tasks.ctc_decoding import CTCGreedyDecoder


@dataclass
class MambaHubertPretrainingConfig(HubertPretrainingConfig):
    pass


@register_task("mamba_hubert_pretraining", dataclass=MambaHubertPretrainingConfig)
class MambaHubertPretrainingTask(HubertPretrainingTask):
    cfg: MambaHubertPretrainingConfig

    def build_generator(self, models, args, **unused) -> CTCGreedyDecoder:
        """CTC decoding of a fine-tuned model (fairseq-generate); needs `--fine-tuning --labels ltr`."""
        if not self.cfg.fine_tuning:
            raise ValueError("decoding needs the fine-tuning labels: pass --fine-tuning --labels '[\"ltr\"]'")
        dictionary = self.target_dictionary
        return CTCGreedyDecoder(dictionary, dictionary.index(self.blank_symbol))
