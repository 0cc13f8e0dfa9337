"""mamba-hubert: a fairseq user-dir plugin (`fairseq-hydra-train ... common.user_dir=/path/to/mamba_hubert`).
Importing it registers the models `mamba_hubert`, `mamba_hubert_asr` and `mamba_spectrum_reconstruction`, the tasks
`mamba_hubert_pretraining` and `spectrum_reconstruction` and the `spectrum_reconstruction` criterion, and applies the
patches to fairseq and torch that `mamba_hubert.patches` lists (safe checkpoint loading under torch >= 2.6, atomic
checkpoint copies, gathering on gloo, hubert_ctc's config, the root logger's level, no update past max_update when a
finished run is rerun, no weight decay on parameters marked `_no_weight_decay`)."""

from mamba_hubert import criterions, models, patches, tasks  # noqa: F401

patches.install()

__version__ = "0.1.0"
