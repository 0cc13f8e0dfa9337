"""`mamba_hubert`: fairseq's HuBERT with a Mamba encoder, an exact frame padding mask and span masks drawn from
(seed, update, utterance ids) (`seeded_masks`). Beside fairseq's forward, the model (front end included) has its
encoder's inference interface: `initial_state` and `forward_chunk` on audio that arrives in chunks, `forward_long` on
a recording of any length.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices
from fairseq.data.dictionary import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig, HubertPretrainingTask
from torch import nn

from mamba_hubert.frames import (
    causal_left_padding,
    conv_output_length,
    conv_output_lengths,
    fbank_layers,
    receptive_field,
)
from mamba_hubert.models.encoder_config import MambaLayerConfig
from mamba_hubert.models.front_end import conv_features_long, has_group_norm
from mamba_hubert.models.seeded_masks import SeededMasking
from mamba_hubert.modules.encoder import MambaEncoder, fairseq_buildable
from mamba_hubert.modules.fbank import FbankFeatureExtractor
from mamba_hubert.modules.layer_interface import NotStreamableError, per_frames
from mamba_hubert.modules.side_channel import attribute_during
from mamba_hubert.modules.valid_group_norm import ValidFramesGroupNorm

logger = logging.getLogger(__name__)

EXTRACTOR_MODES = ("default", "layer_norm", "fbank")
FBANK_MELS = 80


@dataclass
class MambaHubertConfig(MambaLayerConfig, HubertConfig):
    """fairseq's HubertConfig with the plugin's layer types and Mamba fields."""

    extractor_mode: ChoiceEnum(EXTRACTOR_MODES) = field(
        default="default", metadata={"help": "default / layer_norm: fairseq's conv extractor (group norm over time in "
                                             "the first layer / a layer norm per frame in every layer); fbank: 80 "
                                             "log-mel bins (25 ms / 10 ms), then two convs subsampling to "
                                             "label_rate, as wide as conv_feature_layers' last layer; causal"}
    )


@dataclass
class StreamState:
    """Where a stream through the model stands: the samples from the next frame's window on (less than one window
    once a chunk is consumed), how many frames it gave, and the encoder's state."""

    samples: torch.Tensor  # (batch, n), starting at sample hop * frames of the (left-padded) stream
    num_samples: int  # samples of the left-padded stream so far
    frames: int
    encoder: list[Any]


@register_model("mamba_hubert", dataclass=MambaHubertConfig)
class MambaHubertModel(SeededMasking, HubertModel):
    def __init__(
        self, cfg: MambaHubertConfig, task_cfg: HubertPretrainingConfig, dictionaries: list[Dictionary | None]
    ) -> None:
        # HubertModel builds its own encoder from the config: an empty one here, replaced by ours; and a conv
        # extractor (fairseq knows no fbank mode), replaced below for extractor_mode=fbank
        fbank = cfg.extractor_mode == "fbank"
        super().__init__(fairseq_buildable(cfg, encoder_layers=0, layer_type="transformer",
                                           **({"extractor_mode": "layer_norm"} if fbank else {})),
                         task_cfg, dictionaries)
        logger.info("MambaHubertModel: encoder %s x %s", cfg.encoder_layers, cfg.layer_type)
        self.encoder = MambaEncoder(cfg)
        self.conv_layers = eval(cfg.conv_feature_layers)  # fairseq stores this field as a Python literal
        self.left_padding = 0  # zero samples put before the audio (fbank's causal convs)
        if fbank:
            self.conv_layers = fbank_layers(FBANK_MELS, self.embed, task_cfg.sample_rate, cfg.label_rate)
            self.left_padding = causal_left_padding(self.conv_layers)
            self.feature_extractor = FbankFeatureExtractor(self.conv_layers, task_cfg.sample_rate, cfg.conv_bias)
            self.feat2tar_ratio = 1.0  # one frame per label, by construction of the strides
            return
        block = self.feature_extractor.conv_layers[0]
        for index, module in enumerate(block):  # the default extractor's GroupNorm over time: one that skips padding
            if isinstance(module, nn.GroupNorm):
                block[index] = ValidFramesGroupNorm.replacing(module)

    @classmethod
    def build_model(cls, cfg: MambaHubertConfig, task: HubertPretrainingTask) -> "MambaHubertModel":
        return cls(cfg, task.cfg, task.dictionaries)

    def _first_group_norm(self) -> ValidFramesGroupNorm | None:
        """Found, not kept as an attribute: a second reference would add keys to the state dict."""
        return next((m for m in self.feature_extractor.modules() if isinstance(m, ValidFramesGroupNorm)), None)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Valid frames of utterances of `num_samples` samples: those whose whole receptive field is audio (or the
        causal left padding)."""
        return conv_output_lengths(num_samples, self.conv_layers, self.left_padding)

    def forward_features(self, source: torch.Tensor) -> torch.Tensor:
        """HubertModel's, after the causal left padding (none but for extractor_mode=fbank)."""
        return super().forward_features(F.pad(source, (self.left_padding, 0)) if self.left_padding else source)

    def forward(self, source: torch.Tensor, target_list: list[torch.Tensor] | None = None,
                padding_mask: torch.Tensor | None = None, mask: bool = True, features_only: bool = False,
                output_layer: int | None = None) -> dict[str, torch.Tensor]:
        """HubertModel's forward; the first conv block's GroupNorm (default extractor) sees the rows' lengths."""
        norm = self._first_group_norm()
        if norm is None or padding_mask is None:
            return super().forward(source, target_list, padding_mask, mask, features_only, output_layer)
        with attribute_during([norm], "valid_frames", conv_output_lengths((~padding_mask).sum(-1), self.conv_layers[:1])):
            return super().forward(source, target_list, padding_mask, mask, features_only, output_layer)

    def forward_padding_mask(self, features: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Frame mask from the exact conv arithmetic: a frame is valid only if its whole window is."""
        num_frames = self.frame_lengths((~padding_mask).sum(-1))
        positions = torch.arange(features.size(1), device=padding_mask.device)
        return positions.unsqueeze(0) >= num_frames.unsqueeze(1)

    def compute_nce(self, x: torch.Tensor, pos: torch.Tensor, negs: torch.Tensor) -> torch.Tensor:
        """HubertModel's logits (cosine similarity to the positive, then to every class, -inf where a class
        embedding equals the positive; over the temperature) with one matmul: fairseq's expands x against all C
        classes into [C + 1, S, D] tensors: 20-345x the time and 50-280x the memory (benchmarks/RESULTS.md)."""
        classes = self._label_embeddings_behind(negs)
        if classes is None:  # negatives that are not a label set's embeddings as they stand (target_glu)
            return super().compute_nce(x, pos, negs)
        unit_x = F.normalize(x.float(), dim=-1, eps=1e-8)
        positive = (unit_x * F.normalize(pos.float(), dim=-1, eps=1e-8)).sum(-1, keepdim=True)
        negatives = unit_x @ F.normalize(classes.float(), dim=-1, eps=1e-8).T
        # Exact vector equality, as fairseq tests it, without [S, C, D]: equal rows share one id in torch.unique
        _, row_ids = torch.unique(torch.cat([classes, pos]), dim=0, return_inverse=True)
        is_pos = row_ids[len(classes):, None] == row_ids[None, :len(classes)]
        logits = torch.cat([positive, negatives.masked_fill(is_pos, float("-inf"))], dim=1)
        return (logits / self.logit_temp).type_as(x)

    def _label_embeddings_behind(self, negs: torch.Tensor) -> torch.Tensor | None:
        """The label set's embeddings [C, D] that `negs` [C, S, D] expands, if it is such a view. Used in its place,
        so that no gradient is built for the expanded view (that alone would fill a zero [C, S, D] tensor)."""
        if negs.dim() != 3 or negs.stride(1) != 0:
            return None
        for classes in self.label_embs_concat.split(self.num_classes, 0):
            if (negs.data_ptr() == classes.data_ptr() and negs.shape[::2] == classes.shape
                    and negs.stride()[::2] == classes.stride()):
                return classes
        return None

    def apply_mask(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None, target_list: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """HuBERT's masking: time spans of valid frames become `mask_emb`, channel spans become 0. Within
        `seeded_draws` the spans follow from (seed, update, the rows' utterance ids); outside, they are
        fairseq's unseeded draws."""
        batch, frames, channels = x.shape
        seed, ids = self.mask_key if self.mask_key is not None else (None, None)
        if ids is not None and len(ids) != batch:
            raise ValueError(f"seeded_draws was given {len(ids)} utterance ids for a batch of {batch}")
        mask_indices = None
        if self.mask_prob > 0:
            mask = compute_mask_indices(
                (batch, frames), padding_mask, self.mask_prob, self.mask_length, self.mask_selection,
                self.mask_other, min_masks=2, no_overlap=self.no_mask_overlap, min_space=self.mask_min_space,
                seed=seed, epoch=self.num_updates, indices=ids,
            )
            mask_indices = torch.from_numpy(mask).to(x.device)
            # in x's dtype: under autocast x is half precision while mask_emb stays float32
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if self.mask_channel_prob > 0:
            channel_mask = compute_mask_indices(
                (batch, channels), None, self.mask_channel_prob, self.mask_channel_length,
                self.mask_channel_selection, self.mask_channel_other, no_overlap=self.no_mask_channel_overlap,
                min_space=self.mask_channel_min_space,
                seed=None if seed is None else seed + 1,  # channel spans independent of the time spans
                epoch=self.num_updates, indices=ids,
            )
            x = x.masked_fill(torch.from_numpy(channel_mask).to(x.device).unsqueeze(1), 0.0)
        return x, mask_indices

    def check_streamable(self) -> None:
        """NotStreamableError saying why the model cannot stream exactly, if it cannot."""
        if self.training:
            raise NotStreamableError("call model.eval() first: dropout and layer drop make chunked and offline "
                                     "outputs differ")
        if has_group_norm(self.feature_extractor):
            raise NotStreamableError("extractor_mode=default normalises over the whole utterance; use "
                                     "extractor_mode=layer_norm or fbank")
        self.encoder.check_streamable()

    def initial_state(self, batch: int = 1) -> StreamState:
        """The state before a stream's first sample; refuses a model that cannot stream. The fbank front end's left
        padding is carried as samples before the stream, so the unpadded front end run on the carried window
        computes what the model computes offline on the padded audio."""
        self.check_streamable()
        return StreamState(self.encoder.layer_norm.weight.new_zeros(batch, self.left_padding), self.left_padding, 0,
                           self.encoder.initial_state(batch))

    def forward_chunk(self, audio: torch.Tensor, state: StreamState, output_layer: int | None = None
                      ) -> tuple[list[torch.Tensor], StreamState]:
        """The next samples (batch, n) of a stream -> the hidden states of the frames they complete ([encoder input,
        output of layer 1, ..., the output up to `output_layer`], each (batch, new_frames, dim), as
        `extract_features(whole audio, output_layer=output_layer)` computes them), and the state."""
        state.samples = torch.cat([state.samples, audio.to(state.samples.dtype)], dim=1)
        state.num_samples += audio.shape[1]
        new_frames = conv_output_length(state.num_samples, self.conv_layers) - state.frames
        if new_frames <= 0:
            empty = state.samples.new_zeros(len(state.samples), 0, self.encoder.embedding_dim)
            return [empty] * (len(self.encoder.layers[:output_layer]) + 1), state
        window, hop = receptive_field(self.conv_layers)
        # Frame k reads samples [hop k, hop k + window): exactly this segment gives the new frames.
        features = self.feature_extractor(state.samples[:, : (new_frames - 1) * hop + window]).transpose(1, 2)
        hidden, state.encoder = self.encoder.forward_chunk(self._project_features(features), state.encoder,
                                                           output_layer)
        state.samples = state.samples[:, new_frames * hop :].clone()
        state.frames += new_frames
        return hidden, state

    def forward_long(self, audio: torch.Tensor, chunk_samples: int, output_layer: int | None = None,
                     hidden_states: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """`extract_features(audio[None], output_layer=output_layer)[0]` (eval mode) for audio (num_samples,) of any
        length, with the working set of `chunk_samples` samples' frames in the front end and in each layer that can
        (its `forward_long`): (1, frames, dim); with `hidden_states`, the list of every hidden state."""
        audio = F.pad(audio, (self.left_padding, 0))  # the fbank front end's causal padding, as forward_features
        chunk = max(1, chunk_samples // receptive_field(self.conv_layers)[1])
        x = per_frames(self._project_features, chunk, conv_features_long(self, audio, chunk_samples))
        return self.encoder.forward_long(x, chunk, output_layer, hidden_states)

    def _project_features(self, features: torch.Tensor) -> torch.Tensor:
        """HubertModel's per-frame steps between the front end and the encoder in eval mode: layer norm, projection."""
        x = self.layer_norm(features)
        return x if self.post_extract_proj is None else self.post_extract_proj(x)
