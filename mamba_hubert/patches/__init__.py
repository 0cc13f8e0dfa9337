"""Every change the plugin makes to fairseq and torch, each in its own module, all made by `install()` when the
package is imported (fairseq imports it through `--user-dir` / `common.user_dir`). They target fairseq-fixed
0.12.3.1 (fairseq's main branch of ~2024) with torch >= 2.6, and each leaves fairseq's behaviour alone where it
already works:

- `checkpoint_loading`: fairseq's `torch.load` calls fail under torch >= 2.6 (weights_only): the plain-data classes
  fairseq checkpoints hold are allow-listed (never TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD), and `load_checkpoint_to_cpu`
  names the file and the problem when a checkpoint is truncated, corrupt or would run code.
- `atomic_checkpoint_copies`: fairseq copies a saved checkpoint onto `checkpoint_last.pt` / `checkpoint_best.pt` in
  place, so a kill during the copy leaves a torn file; the copies go through a temporary file and a rename.
- `gloo_gather`: fairseq's `all_gather_list` stages data in a CUDA tensor; off NCCL (gloo on CPU) it gathers with
  `torch.distributed.all_gather_object`.
- `hubert_ctc_config`: fairseq's `hubert_ctc` reads a config field its own config lacks (`autoregressive`); the
  field is added (False).
- `root_logging`: importing fairseq sets the root logger to DEBUG; it is put back to INFO.
- `finished_run`: fairseq checks `optimization.max_update` only after an update, so rerunning a finished run (the
  way to resume) took one update past it and rewrote `checkpoint_last.pt` and `checkpoint_best.pt`; such a rerun now
  logs that the run is finished and trains and saves nothing.
- `no_weight_decay`: fairseq's `adam` decays every parameter, also the Mamba blocks' `A_log` and `D`, which mamba-ssm
  marks `_no_weight_decay`; the marked parameters go into a second group with weight decay 0 (fp32, amp, bf16,
  memory-efficient fp16 and fp16 with `common.fp16_no_flatten_grads`; fp16 with flattened gradients refuses them).

Each patch is idempotent and tested for what it fixes (tests/test_patches.py and the tests named in each module).
"""

from mamba_hubert.patches import (
    atomic_checkpoint_copies,
    checkpoint_loading,
    finished_run,
    gloo_gather,
    hubert_ctc_config,
    no_weight_decay,
    root_logging,
)

PATCHES = (
    checkpoint_loading,
    atomic_checkpoint_copies,
    gloo_gather,
    hubert_ctc_config,
    root_logging,
    finished_run,
    no_weight_decay,
)


def install() -> None:
    """Applies every patch listed in this module's docstring; idempotent."""
    for patch in PATCHES:
        patch.install()
