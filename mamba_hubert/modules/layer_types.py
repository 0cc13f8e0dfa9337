"""The registry of encoder layer types: `model.layer_type` (and `model.head_layer_type`) name -> the layer class and
whether it is causal. The config's choices, the encoder's builder and the inference drivers all read it, so a new
layer type is a class with the `layer_interface` methods and a `from_args(args)` builder, registered here.

Causal types stream (`forward_chunk` per arriving chunk); the others run long-form only, each as its class declares
(`forward_long`), and streaming refuses them by name.
"""

from dataclasses import dataclass

from torch import nn

from mamba_hubert.modules.conformer import PaddingExactConformerLayer
from mamba_hubert.modules.layer_interface import ChunkedLayer, NotStreamableError
from mamba_hubert.modules.layers import ConBiMambaEncoderLayer, MambaEncoderLayer
from mamba_hubert.modules.transformer import TransformerLayer


@dataclass(frozen=True)
class LayerType:
    name: str
    cls: type[ChunkedLayer]
    causal: bool  # nothing in the layer reads a later frame: it streams exactly

    def build(self, args) -> nn.Module:
        """One layer of this type from an encoder config (`EncoderConfig`'s fields)."""
        return self.cls.from_args(args)


REGISTRY: dict[str, LayerType] = {}


def register_layer_type(name: str, cls: type, causal: bool) -> LayerType:
    """Adds layer type `name`; `cls` must have the inference interface (`ChunkedLayer`) and a `from_args` builder."""
    if name in REGISTRY:
        raise ValueError(f"layer_type {name!r} is already registered ({REGISTRY[name].cls.__name__})")
    if not (isinstance(cls, type) and issubclass(cls, ChunkedLayer) and hasattr(cls, "from_args")):
        raise TypeError(f"layer_type {name!r}: {cls!r} lacks the layer interface (a ChunkedLayer with from_args)")
    REGISTRY[name] = LayerType(name, cls, causal)
    return REGISTRY[name]


def layer_type(name: str) -> LayerType:
    """The registered type `name`, or a ValueError that names it and the registered ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown layer_type {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def layer_type_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def require_causal(name: str, where: str, field: str) -> None:
    """NotStreamableError naming the type unless layer type `name` is causal (`where`: which layers, for the
    message; `field`: the config field that chose it)."""
    if not layer_type(name).causal:
        causal = " or ".join(n for n, t in REGISTRY.items() if t.causal)
        raise NotStreamableError(f"{where} is not causal ({field}={name} looks ahead); use {field}={causal}")


# (name, class, causal): the built-in types, in the order the config lists them
for _name, _cls, _causal in (
    ("mamba", MambaEncoderLayer, True),
    ("ext_bimamba", MambaEncoderLayer, False),
    ("inn_bimamba", MambaEncoderLayer, False),
    ("conbimamba", ConBiMambaEncoderLayer, False),
    ("transbimamba", MambaEncoderLayer, False),
    ("mamba2", MambaEncoderLayer, True),
    ("ext_bimamba2", MambaEncoderLayer, False),
    ("transformer", TransformerLayer, False),
    ("conformer", PaddingExactConformerLayer, False),
):
    register_layer_type(_name, _cls, _causal)
