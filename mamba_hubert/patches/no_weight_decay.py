"""Parameters marked `_no_weight_decay` are not decayed by fairseq's `adam` (fairseq-fixed 0.12.3.1).

mamba-ssm marks a Mamba block's `A_log` and `D` `_no_weight_decay` (so does `mamba_hubert.modules.Mamba`): decaying
them pulls every state's decay rate towards 1 (A = -exp(A_log)) and the skip connection towards 0. fairseq never reads
the mark: the trainer hands its optimizer one flat parameter list and `FairseqAdam` puts it in one group with
`optimizer.weight_decay`. `install()` makes `FairseqAdam` put the marked parameters in a second group with weight decay
0 (a model without marks, e.g. layer type `transformer`, keeps fairseq's single group), on each of fairseq's
precision paths:

- fp32, `--amp` and `--memory-efficient-fp16/bf16`: the optimizer receives the model's own parameters;
- `--bf16` and `--fp16 --fp16-no-flatten-grads`: FP16Optimizer's fp32 copies are given their parameter's mark;
- `--fp16` with flattened gradients (fairseq's default): FP16Optimizer's single flat fp32 tensor cannot hold two
  groups, so building it for `adam` with weight decay over marked parameters raises, naming
  `common.fp16_no_flatten_grads=true` (the paper-size configs set it).

Not covered: `ddp_backend=fully_sharded` flattens the parameters before the optimizer sees them, so the marks are
lost there and every parameter is decayed; other optimizers than `adam` decay every parameter as in fairseq.

Resuming: a checkpoint saved by this optimizer holds two groups and loads as it is; one saved with a single group
(before this patch) is split into the two groups on loading, its per-parameter state kept. Tested in
tests/test_weight_decay.py.
"""

import torch
from fairseq.optim import fp16_optimizer
from fairseq.optim.adam import FairseqAdam

_PATCHED = "_mamba_hubert_no_weight_decay"


def is_exempt(param: torch.Tensor) -> bool:
    return bool(getattr(param, "_no_weight_decay", False))


def _patch_adam() -> None:
    original_init = FairseqAdam.__init__
    original_load = FairseqAdam.load_state_dict

    def __init__(self, cfg, params) -> None:
        params = list(params)
        flat = bool(params) and not isinstance(params[0], dict)  # groups made by a caller stay as they are
        marks = [is_exempt(p) for p in params] if flat else []
        # Which positions of the flat list are exempt: how a single-group state saved before this patch maps on.
        self._exempt_positions = marks if any(marks) else None
        if self._exempt_positions is not None:
            params = [{"params": [p for p, exempt in zip(params, marks) if not exempt]},
                      {"params": [p for p, exempt in zip(params, marks) if exempt], "weight_decay": 0.0}]
        original_init(self, cfg, params)

    def load_state_dict(self, state_dict: dict, optimizer_overrides: dict | None = None) -> None:
        saved = state_dict["param_groups"]
        positions = getattr(self, "_exempt_positions", None)
        if positions is not None and len(saved) == 1 and len(self.param_groups) == 2:
            # In place: MemoryEfficientFP16Optimizer reads the saved groups again after this call.
            ids = saved[0]["params"]
            if len(ids) != len(positions):
                raise ValueError(f"the saved optimizer state has {len(ids)} parameters, the model {len(positions)}")
            state_dict["param_groups"] = [
                {**saved[0], "params": [i for i, exempt in zip(ids, positions) if not exempt]},
                {**saved[0], "params": [i for i, exempt in zip(ids, positions) if exempt], "weight_decay": 0.0},
            ]
        original_load(self, state_dict, optimizer_overrides)
        if positions is not None:  # overrides (checkpoint.optimizer_overrides) may not decay the marked group
            self.param_groups[-1]["weight_decay"] = 0.0

    setattr(__init__, _PATCHED, True)
    FairseqAdam.__init__ = __init__
    FairseqAdam.load_state_dict = load_state_dict


def _patch_fp32_copies() -> None:
    mixin = fp16_optimizer._FP16OptimizerMixin
    original = mixin.build_fp32_params.__func__

    def build_fp32_params(cls, args, params, flatten=True):
        marks = [is_exempt(p) for p in params]
        if (flatten and any(marks) and getattr(args, "_name", None) == "adam"
                and getattr(args, "weight_decay", 0.0) > 0):
            raise ValueError(
                "--fp16 with flattened gradients decays every parameter, also those marked _no_weight_decay (the "
                "Mamba blocks' A_log and D): set common.fp16_no_flatten_grads=true (--fp16-no-flatten-grads), or "
                "optimizer.weight_decay=0")
        fp32_params = original(cls, args, params, flatten=flatten)
        if not flatten:
            for p32, exempt in zip(fp32_params, marks):
                if exempt:
                    p32._no_weight_decay = True
        return fp32_params

    mixin.build_fp32_params = classmethod(build_fp32_params)


def install() -> None:
    """Exempts `_no_weight_decay` parameters from fairseq's adam weight decay (see the module docstring);
    idempotent."""
    if getattr(FairseqAdam.__init__, _PATCHED, False):
        return
    _patch_adam()
    _patch_fp32_copies()
