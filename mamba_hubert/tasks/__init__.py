"""Registers the plugin's tasks with fairseq: `mamba_hubert_pretraining` and `spectrum_reconstruction`."""

from mamba_hubert.tasks.mamba_hubert_pretraining import MambaHubertPretrainingConfig, MambaHubertPretrainingTask
from mamba_hubert.tasks.spectrum_reconstruction import SpectrumReconstructionTask, SpectrumReconstructionTaskConfig

__all__ = ["MambaHubertPretrainingConfig", "MambaHubertPretrainingTask", "SpectrumReconstructionTask",
           "SpectrumReconstructionTaskConfig"]
