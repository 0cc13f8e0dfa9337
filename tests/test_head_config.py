"""`mamba_hubert_asr`'s `head_*` layer settings are generated from the one layer config (`MambaLayerConfig`): each field
has its head counterpart, reaches the head's encoder, takes a command-line override, and a checkpoint saved before
they were generated loads and decodes as it did."""

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from mamba_hubert.models.encoder_config import EncoderConfig, layer_config_fields
from mamba_hubert.models.mamba_hubert_asr import MambaHubertAsrConfig, head_encoder_config
from mamba_hubert.modules import Mamba2
from mamba_hubert.modules.encoder import MambaEncoder
from tests.fixtures.make_asr_before_registry import fixed_audio, load

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "asr_before_registry"


def other_value(config_field) -> object:
    """A valid value of a layer-config field other than its default."""
    default = config_field.default
    if hasattr(config_field.type, "__members__"):  # a ChoiceEnum
        return next(choice for choice in config_field.type.__members__ if choice != default)
    return config_field.type(default + 1)


def fields_written_in(cls: type) -> set[str]:
    """The fields `cls`'s own class body declares (`name: type = ...`), read from its source."""
    tree = ast.parse(inspect.getsource(cls))
    return {node.target.id for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)}


def test_every_layer_config_field_has_its_generated_head_field():
    head_fields = {f.name: f for f in fields(MambaHubertAsrConfig)}
    written = fields_written_in(MambaHubertAsrConfig)
    assert {"head_layers", "head_embed_dim"} <= written  # the head's shape is written out; its layer settings not
    for layer_field in layer_config_fields():
        name = f"head_{layer_field.name}"
        assert name in head_fields, name
        assert name not in written, f"{name} is written out by hand in MambaHubertAsrConfig"
        if layer_field.name != "layer_type":  # the head's has `none` (no head) beside the registry's types
            assert head_fields[name].type is layer_field.type, name
            assert head_fields[name].default == layer_field.default, name


def test_every_head_layer_field_reaches_the_head_encoder():
    values = {f.name: other_value(f) for f in layer_config_fields()}
    cfg = MambaHubertAsrConfig(**{f"head_{name}": value for name, value in values.items()})
    encoder_cfg = head_encoder_config(cfg)
    assert isinstance(encoder_cfg, EncoderConfig)
    for name, value in values.items():
        assert getattr(encoder_cfg, name) == value, name


def test_command_line_overrides_reach_the_head():
    """What fairseq does with `model.head_*=...` overrides: merge them into the config's schema."""
    schema = OmegaConf.structured(MambaHubertAsrConfig)
    overrides = ["head_layer_type=mamba2", "head_embed_dim=32", "head_ffn_embed_dim=0", "head_mamba_d_state=8",
                 "head_mamba_headdim=16", "head_mamba_d_conv=2", "head_scan_impl=reference"]
    cfg = OmegaConf.merge(schema, OmegaConf.from_dotlist(overrides))
    head = MambaEncoder(head_encoder_config(cfg))
    block = head.layers[0].mixer
    assert isinstance(block, Mamba2)
    assert (block.d_state, block.headdim, block.d_conv, block.scan_impl) == (8, 16, 2, "reference")
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, OmegaConf.from_dotlist(["head_layer_type=nonesuch"]))


def test_a_checkpoint_saved_before_the_generated_fields_loads_and_decodes_as_it_did():
    """tests/fixtures/asr_before_registry: saved by main's code at b83ff75, with its logits and greedy tokens then
    (`make_asr_before_registry.py`); its head is an ext_bimamba with non-default head_* values."""
    model, task = load(FIXTURE)
    head = model.w2v_encoder.head
    mixer = head.layers[0].mixer
    assert mixer.fuse is None and mixer.forward_mamba.d_state == 4 and mixer.forward_mamba.d_inner == 24
    expected = torch.load(FIXTURE / "expected.pt")
    with torch.no_grad():
        logits = model.w2v_encoder(fixed_audio(), None, tbc=False)["encoder_out"][0]
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-6)
    tokens = task.build_generator([model], None).decode(
        model.get_normalized_probs({"encoder_out": logits}, log_probs=True))["tokens"]
    assert torch.equal(tokens, expected["tokens"])
