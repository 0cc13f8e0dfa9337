"""`hubert_ctc`'s missing `autoregressive` field (fairseq-fixed 0.12.3.1).

Its HubertEncoder reads `cfg.autoregressive`, a field that HubertCtcConfig does not define, so every
`hubert_ctc` fine-tuning run (on fairseq's own HuBERT too) stops with ConfigAttributeError. We register a
subclass of the config with that field (False: CTC is not autoregressive) for fairseq's model builder;
the model class and everything else stay fairseq's.
"""

import dataclasses

from fairseq.models import MODEL_DATACLASS_REGISTRY


def install() -> None:
    """Registers hubert_ctc's config with an `autoregressive` field (False); idempotent."""
    base = MODEL_DATACLASS_REGISTRY.get("hubert_ctc")
    if base is None or "autoregressive" in {f.name for f in dataclasses.fields(base)}:
        return
    patched = dataclasses.make_dataclass(
        base.__name__, [("autoregressive", bool, dataclasses.field(default=False))], bases=(base,)
    )
    patched.__module__ = base.__module__
    MODEL_DATACLASS_REGISTRY["hubert_ctc"] = patched
