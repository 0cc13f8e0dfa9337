"""Values that fairseq's fixed call signatures cannot pass down, set on the modules that read them for the duration
of one call: the padding mask of the convolution module inside fairseq's Conformer layer, the valid frames of the
front end's group norm, and the seeds of span masks and LayerDrop."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def attribute_during(objects: Iterable[object], name: str, value: object) -> Iterator[None]:
    """Within the block `name` is `value` on each of `objects`; after it (also after an error) None, what each reader
    takes for "not set"."""
    objects = list(objects)
    for obj in objects:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj in objects:
            setattr(obj, name, None)
