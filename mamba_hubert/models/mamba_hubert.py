"""`mamba_hubert`: fairseq's HuBERT with a Mamba encoder and an exact frame padding mask."""

import copy
import logging
from dataclasses import dataclass, field

import torch
from fairseq.data.dictionary import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask
from omegaconf import DictConfig, open_dict

from mamba_hubert.frames import conv_output_lengths
from mamba_hubert.modules.bimamba import BIMAMBA_FUSIONS
from mamba_hubert.modules.encoder import LAYER_TYPES, MambaEncoder
from mamba_hubert.ops import SCAN_IMPLS

logger = logging.getLogger(__name__)


@dataclass
class MambaHubertConfig(HubertConfig):
    layer_type: ChoiceEnum(LAYER_TYPES) = field(
        default="conbimamba", metadata={"help": "encoder layer type; `transformer` is fairseq's HuBERT layer"}
    )
    mamba_d_state: int = field(default=16, metadata={"help": "SSM state size N"})
    mamba_d_conv: int = field(default=4, metadata={"help": "Mamba's causal depthwise conv width"})
    mamba_expand: float = field(default=2, metadata={"help": "d_inner = mamba_expand * encoder_embed_dim"})
    bimamba_fusion: ChoiceEnum(BIMAMBA_FUSIONS) = field(
        default="concat", metadata={"help": "ext_bimamba/conbimamba: concat + Linear (Zhang) or sum (Lin)"}
    )
    scan_impl: ChoiceEnum(SCAN_IMPLS) = field(
        default="auto", metadata={"help": "selective scan backend: auto | cuda (mamba-ssm) | cpu (fused) | reference"}
    )


def _without_encoder_layers(cfg):
    """A copy of `cfg` asking for no encoder layers, so HubertModel's own init builds no Transformer stack."""
    cfg = copy.deepcopy(cfg)
    if isinstance(cfg, DictConfig):
        with open_dict(cfg):
            cfg.encoder_layers = 0
            cfg.layer_type = "transformer"
    else:
        cfg.encoder_layers = 0
        cfg.layer_type = "transformer"
    return cfg


@register_model("mamba_hubert", dataclass=MambaHubertConfig)
class MambaHubertModel(HubertModel):
    def __init__(
        self, cfg: MambaHubertConfig, task_cfg: HubertPretrainingConfig, dictionaries: list[Dictionary | None]
    ) -> None:
        super().__init__(_without_encoder_layers(cfg), task_cfg, dictionaries)
        logger.info("MambaHubertModel: the config above was HubertModel's, minus the encoder; encoder: %s x %s",
                    cfg.encoder_layers, cfg.layer_type)
        self.encoder = MambaEncoder(cfg)
        self.conv_layers = eval(cfg.conv_feature_layers)  # fairseq stores this field as a Python literal

    @classmethod
    def build_model(cls, cfg: MambaHubertConfig, task: HubertPretrainingTask) -> "MambaHubertModel":
        return cls(cfg, task.cfg, task.dictionaries)

    def forward_padding_mask(self, features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Frame mask from the exact conv arithmetic: a frame is valid only if its whole window is."""
        num_samples = (~padding_mask).sum(-1)
        num_frames = conv_output_lengths(num_samples, self.conv_layers)
        positions = torch.arange(features.size(1), device=padding_mask.device)
        return positions.unsqueeze(0) >= num_frames.unsqueeze(1)
