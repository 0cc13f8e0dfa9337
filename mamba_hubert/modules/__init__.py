"""Mamba blocks, bidirectional mixers and encoder layers (no fairseq task knowledge)."""

from mamba_hubert.modules.bimamba import ExtBiMamba, InnBiMamba, reverse_padded
from mamba_hubert.modules.mamba import Mamba

__all__ = ["ExtBiMamba", "InnBiMamba", "Mamba", "reverse_padded"]
