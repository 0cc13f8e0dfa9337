"""Registers the plugin's models with fairseq: `mamba_hubert` (pretraining), `mamba_hubert_asr` (CTC fine-tuning
through an optional downstream encoder) and `mamba_spectrum_reconstruction` (masked log-mel reconstruction)."""

from mamba_hubert.models.mamba_hubert import MambaHubertConfig, MambaHubertModel
from mamba_hubert.models.mamba_hubert_asr import MambaHubertAsr, MambaHubertAsrConfig
from mamba_hubert.models.spectrum_reconstruction import SpectrumReconstructionConfig, SpectrumReconstructionModel

__all__ = ["MambaHubertAsr", "MambaHubertAsrConfig", "MambaHubertConfig", "MambaHubertModel",
           "SpectrumReconstructionConfig", "SpectrumReconstructionModel"]
