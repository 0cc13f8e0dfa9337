"""mamba-hubert: a fairseq user-dir plugin (`fairseq-hydra-train ... common.user_dir=/path/to/mamba_hubert`).
Importing it registers the models `mamba_hubert`, `mamba_hubert_asr` and `mamba_spectrum_reconstruction`, the tasks
`mamba_hubert_pretraining` and `spectrum_reconstruction` and the `spectrum_reconstruction` criterion, lets fairseq load
checkpoints safely under torch >= 2.6, and fixes fairseq's `hubert_ctc` config."""

from mamba_hubert import atomic_checkpoints, checkpoint_safety, criterions, distributed_cpu, models, tasks  # noqa: F401
from mamba_hubert.fairseq_compat import add_hubert_ctc_autoregressive_field

checkpoint_safety.install()
atomic_checkpoints.install()
distributed_cpu.install()
add_hubert_ctc_autoregressive_field()

__version__ = "0.1.0"
