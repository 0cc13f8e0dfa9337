"""Registers the plugin's models with fairseq: `mamba_hubert` (pretraining) and `mamba_hubert_asr` (CTC
fine-tuning through an optional downstream encoder)."""

from mamba_hubert.models.mamba_hubert import MambaHubertConfig, MambaHubertModel
from mamba_hubert.models.mamba_hubert_asr import MambaHubertAsr, MambaHubertAsrConfig

__all__ = ["MambaHubertAsr", "MambaHubertAsrConfig", "MambaHubertConfig", "MambaHubertModel"]
