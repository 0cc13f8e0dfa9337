"""The root logger's level, which importing fairseq sets to DEBUG (fairseq-fixed 0.12.3.1).

`fairseq.models.wav2vec.wav2vec2_classification` calls `logging.basicConfig(level=logging.DEBUG)` when fairseq
registers its models, so every library's debug messages (matplotlib's font search, hydra's job setup) reach the
console of anything that imports fairseq. `install()` puts the root logger back to INFO when it finds it at DEBUG;
any other level is kept (to see DEBUG messages, set the level after importing the plugin).
"""

import logging


def install() -> None:
    """Root logger from DEBUG back to INFO; idempotent."""
    root = logging.getLogger()
    if root.level == logging.DEBUG:
        root.setLevel(logging.INFO)
