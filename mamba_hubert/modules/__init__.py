"""Mamba blocks, bidirectional mixers and encoder layers (no fairseq task knowledge)."""

from mamba_hubert.modules.bimamba import ExtBiMamba, InnBiMamba, reverse_padded
from mamba_hubert.modules.mamba import Mamba
from mamba_hubert.modules.mamba2 import Mamba2

__all__ = ["ExtBiMamba", "InnBiMamba", "Mamba", "Mamba2", "reverse_padded"]
