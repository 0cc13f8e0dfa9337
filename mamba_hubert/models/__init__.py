"""Registers the `mamba_hubert` model with fairseq."""

from mamba_hubert.models.mamba_hubert import MambaHubertConfig, MambaHubertModel

__all__ = ["MambaHubertConfig", "MambaHubertModel"]
