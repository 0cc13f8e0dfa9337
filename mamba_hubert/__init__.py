"""mamba-hubert: a fairseq user-dir plugin. Importing it registers the `mamba_hubert` model and the
`mamba_hubert_pretraining` task (`fairseq-hydra-train ... common.user_dir=/path/to/mamba_hubert`), lets
fairseq load checkpoints safely under torch >= 2.6, and fixes fairseq's `hubert_ctc` config."""

from mamba_hubert import checkpoint_safety, models, tasks  # noqa: F401  (registration side effects)
from mamba_hubert.fairseq_compat import add_hubert_ctc_autoregressive_field

checkpoint_safety.install()
add_hubert_ctc_autoregressive_field()

__version__ = "0.1.0"
