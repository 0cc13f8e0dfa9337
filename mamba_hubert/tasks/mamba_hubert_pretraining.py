"""`mamba_hubert_pretraining`: fairseq's HuBERT task plus what this project adds to it."""

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask


@dataclass
class MambaHubertPretrainingConfig(HubertPretrainingConfig):
    pass


@register_task("mamba_hubert_pretraining", dataclass=MambaHubertPretrainingConfig)
class MambaHubertPretrainingTask(HubertPretrainingTask):
    cfg: MambaHubertPretrainingConfig
