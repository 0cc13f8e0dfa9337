"""Registers the plugin's criterions with fairseq: `spectrum_reconstruction`."""

from mamba_hubert.criterions.spectrum_reconstruction import SpectrumReconstructionCriterion

__all__ = ["SpectrumReconstructionCriterion"]
