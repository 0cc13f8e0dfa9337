"""The layer-type registry: inference drives layers through their interface only, a layer type registered in one place
runs offline, streaming and long-form, and what the registry does not know, or knows not to be causal, is refused by
name."""

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from mamba_hubert.inference.long_form import extract_features_long
from mamba_hubert.inference.streaming import NotStreamableError, StreamingEncoder, stream
from mamba_hubert.models import MambaHubertAsrConfig, MambaHubertConfig
from mamba_hubert.modules.layer_interface import ChunkedLayer
from mamba_hubert.modules.layer_types import REGISTRY, layer_type_names, register_layer_type
from tests.conftest import tiny_model

SAMPLE_RATE = 16000
INFERENCE = Path(__file__).resolve().parents[1] / "mamba_hubert" / "inference"
CAUSAL = {"conv_pos": 0, "extractor_mode": "layer_norm"}

pytestmark = pytest.mark.usefixtures("one_thread")


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports, as written (`from a.b import c` -> a.b and a.b.c)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_inference_imports_no_layer_module_but_the_registry():
    allowed = {"mamba_hubert.modules.layer_types", "mamba_hubert.modules.encoder"}
    for path in INFERENCE.glob("*.py"):
        modules = {name for name in imported_modules(path) if name.startswith("mamba_hubert.modules")}
        # `from mamba_hubert.modules.layer_types import X` also lists ...layer_types.X: only the module counts
        modules = {name for name in modules if not any(name.startswith(f"{a}.") for a in allowed)}
        assert modules <= allowed, f"{path.name} imports {sorted(modules - allowed)}"


class ToyCausalLayer(ChunkedLayer, nn.Module):
    """h_t = 0.9 h_{t-1} + x_t, y_t = x_t + W h_t: causal, its state returned rather than updated in place, so a
    driver that drops the returned state fails."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def from_args(cls, args) -> "ToyCausalLayer":
        return cls(args.encoder_embed_dim)

    def forward(self, x: torch.Tensor, self_attn_padding_mask: torch.Tensor | None = None, **_unused):
        y, _ = self.forward_chunk(x.transpose(0, 1), self.initial_state(x.shape[1]))
        return y.transpose(0, 1), (None, y.transpose(0, 1))

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.proj.weight.new_zeros(batch, self.proj.in_features)

    def forward_chunk(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = []
        for t in range(x.shape[1]):
            state = 0.9 * state + x[:, t]
            outputs.append(x[:, t] + self.proj(state))
        return torch.stack(outputs, 1), state


@pytest.fixture
def toy():
    """Layer type `toy`, registered the one way a layer type is (then removed, the registry being global)."""
    register_layer_type("toy", ToyCausalLayer, causal=True)
    yield "toy"
    REGISTRY.pop("toy", None)


def test_a_registered_toy_layer_runs_offline_streaming_and_long_form(toy):
    model = tiny_model(toy, **CAUSAL).eval()
    assert all(isinstance(layer, ToyCausalLayer) for layer in model.encoder.layers)
    audio = torch.randn(3 * SAMPLE_RATE + 77, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        offline = model.extract_features(audio[None])[0][0]
        offline_layer1 = model.extract_features(audio[None], output_layer=1)[0][0]
    streamed = stream(model, audio, round(0.37 * SAMPLE_RATE))
    torch.testing.assert_close(streamed, offline, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(extract_features_long(model, audio, chunk_seconds=0.5), offline, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(extract_features_long(model, audio, chunk_seconds=0.5, output_layer=1), offline_layer1,
                               rtol=1e-4, atol=1e-4)
    encoder = StreamingEncoder(model)
    encoder.push(audio[:8000])
    assert set(encoder.carried_tensors()) == {"samples", "layer0", "layer1"}  # the toy's state is one tensor


def test_an_unknown_layer_type_is_refused_with_its_name(toy):
    with pytest.raises(ValueError, match="unknown layer_type 'nonesuch'"):
        tiny_model("nonesuch", **CAUSAL)
    model = tiny_model(toy, **CAUSAL).eval()
    audio = torch.randn(SAMPLE_RATE)
    del REGISTRY["toy"]  # a model whose layer type the registry no longer knows is not run some other way
    with pytest.raises(ValueError, match="unknown layer_type 'toy'"):
        stream(model, audio, 4000)
    with pytest.raises(ValueError, match="unknown layer_type 'toy'"):
        extract_features_long(model, audio)


@pytest.mark.parametrize("layer_type", ["ext_bimamba", "conbimamba", "transformer", "conformer"])
def test_streaming_refuses_a_non_causal_type_by_name(layer_type):
    message = f"encoder layer 0 is not causal (layer_type={layer_type} looks ahead); use layer_type=mamba or mamba2"
    with pytest.raises(NotStreamableError, match=re.escape(message)):
        StreamingEncoder(tiny_model(layer_type, **CAUSAL).eval())


def test_a_class_without_the_interface_is_not_registered():
    with pytest.raises(TypeError, match="layer_type 'plain': .* lacks the layer interface"):
        register_layer_type("plain", nn.Linear, causal=True)
    assert "plain" not in REGISTRY


@pytest.mark.parametrize("layer_type", layer_type_names())
def test_the_registry_says_which_layers_stream(layer_type):
    """The registry's `causal` and the layer's own interface agree: a causal layer's chunks continue its state, any
    other refuses to run chunk by chunk."""
    layer = tiny_model(layer_type, **CAUSAL).eval().encoder.layers[0]
    x = torch.randn(1, 6, 32)
    if REGISTRY[layer_type].causal:
        state = layer.initial_state(1)
        with torch.no_grad():
            first, state = layer.forward_chunk(x[:, :4], state)
            second, _ = layer.forward_chunk(x[:, 4:], state)
            whole = layer(x.transpose(0, 1))[0].transpose(0, 1)
        torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(NotStreamableError, match="looks ahead"):
            layer.initial_state(1)
        with pytest.raises(NotStreamableError, match="looks ahead"):
            layer.forward_chunk(x, None)


def test_the_configs_offer_the_registered_types():
    choices = {f.name: f.type for f in MambaHubertConfig.__dataclass_fields__.values()}
    assert tuple(choices["layer_type"].__members__) == layer_type_names()
    head = MambaHubertAsrConfig.__dataclass_fields__["head_layer_type"].type
    assert tuple(head.__members__) == ("none", *layer_type_names())
