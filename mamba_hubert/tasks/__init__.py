"""Registers the `mamba_hubert_pretraining` task with fairseq."""

from mamba_hubert.tasks.mamba_hubert_pretraining import MambaHubertPretrainingConfig, MambaHubertPretrainingTask

__all__ = ["MambaHubertPretrainingConfig", "MambaHubertPretrainingTask"]
