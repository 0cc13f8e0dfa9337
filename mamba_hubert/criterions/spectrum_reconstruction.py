"""`spectrum_reconstruction`: L1 or L2 error of `mamba_spectrum_reconstruction`'s prediction on the masked bins, with
the same error of two predictions that need no training logged beside it (`mean_baseline_loss`: each utterance's
mean spectrum; `nearest_baseline_loss`: the nearest unmasked step), all per masked bin."""

from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from mamba_hubert.models.spectrum_reconstruction import reconstruction_baselines

LOSS_TYPES = ("l1", "l2")
BASELINES = ("mean", "nearest")


@dataclass
class SpectrumReconstructionCriterionConfig(FairseqDataclass):
    loss_type: ChoiceEnum(LOSS_TYPES) = field(
        default="l2", metadata={"help": "l1: absolute error; l2: squared error, on each masked bin"})


@register_criterion("spectrum_reconstruction", dataclass=SpectrumReconstructionCriterionConfig)
class SpectrumReconstructionCriterion(FairseqCriterion):
    def __init__(self, task, loss_type: str = "l2") -> None:
        super().__init__(task)
        self.loss_type = loss_type

    def error(self, prediction: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """Summed error over the masked bins."""
        diff = (prediction.float() - target.float())[loss_mask]
        return diff.abs().sum() if self.loss_type == "l1" else diff.pow(2).sum()

    def forward(self, model, sample: dict, reduce: bool = True):
        out = model(**sample["net_input"])
        loss = self.error(out["prediction"], out["target"], out["loss_mask"])
        masked_bins = int(out["loss_mask"].sum())
        logging_output = {"loss": loss.item(), "sample_size": masked_bins, "nsentences": len(out["target"]),
                          "ntokens": int((~out["padding_mask"]).sum())}
        with torch.no_grad():
            baselines = reconstruction_baselines(out["target"], out["loss_mask"], out["padding_mask"])
            for name in BASELINES:
                logging_output[f"{name}_baseline_loss"] = self.error(baselines[name], out["target"],
                                                                     out["loss_mask"]).item()
        return loss, masked_bins, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        bins = max(sum(log.get("sample_size", 0) for log in logging_outputs), 1)
        for key in ("loss", *(f"{name}_baseline_loss" for name in BASELINES)):
            metrics.log_scalar(key, sum(log.get(key, 0.0) for log in logging_outputs) / bins, bins, round=4)
        metrics.log_scalar("ntokens", sum(log.get("ntokens", 0) for log in logging_outputs))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
