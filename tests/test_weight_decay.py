"""fairseq's adam leaves the parameters marked `_no_weight_decay` (the Mamba blocks' A_log and D, as in mamba-ssm)
undecayed and decays every other one (mamba_hubert.patches.no_weight_decay): in a real fairseq-hydra-train run and its
resumption, and on each precision path of fairseq's Trainer. Without marks (layer type `transformer`) fairseq's
single group is kept."""

import re

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.dataclass.configs import FairseqConfig
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from fairseq.optim.lr_scheduler.fixed_schedule import FixedLRScheduleConfig
from fairseq.trainer import Trainer
from omegaconf import OmegaConf

from mamba_hubert.demo.fairseq_tools import hydra_train
from tests.conftest import tiny_model
from tests.fairseq_runs import SMALL_MODEL, load_state, pretrain_overrides

# A learning rate so small that Adam's own step (about lr per update) vanishes next to the decoupled decay lr * wd.
LR, WEIGHT_DECAY = 1e-9, 1e8


def is_marked(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("A_log", "D")


def parameter_names(checkpoint) -> list[str]:
    """The model's parameters (the state dict also holds buffers, e.g. batch-norm statistics)."""
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    return [name for name, _ in models[0].named_parameters()]


def test_a_log_and_d_stay_through_training_and_resumption(tone_corpus, tmp_path):
    save_dir = tmp_path / "ckpt"
    # polynomial_decay with one warmup update: lr 0 for update 1 (checkpoint_1_1.pt holds the initial weights),
    # LR for update 2; the resumed run to update 3 of 3 takes LR / 2.
    overrides = pretrain_overrides(tone_corpus, save_dir, f"optimization.lr=[{LR}]",
                                   f"optimizer.weight_decay={WEIGHT_DECAY}", "lr_scheduler.warmup_updates=1",
                                   "checkpoint.save_interval_updates=1", *SMALL_MODEL)
    hydra_train("pretrain/tiny_conbimamba", [*overrides, "optimization.max_update=2"], tmp_path / "train.log")
    initial = load_state(save_dir / "checkpoint_1_1.pt")["model"]
    trained = load_state(save_dir / "checkpoint_last.pt")
    names = parameter_names(save_dir / "checkpoint_last.pt")
    marked = [name for name in names if is_marked(name)]
    assert len(marked) == 2 * 2 * 2  # 2 layers x 2 directions x (A_log, D)
    assert torch.equal(initial["encoder.layers.0.mixer.forward_mamba.D"], torch.ones(64))  # update 1 changed nothing
    def assert_decayed_by(state: dict, factor: float) -> None:
        for name in names:
            expected = initial[name] if is_marked(name) else factor * initial[name]
            torch.testing.assert_close(state[name], expected, rtol=1e-6, atol=1e-8, msg=name)  # fp32 rounding

    assert_decayed_by(trained["model"], 1 - LR * WEIGHT_DECAY)
    groups = trained["last_optimizer_state"]["param_groups"]
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(len(names) - 8, WEIGHT_DECAY), (8, 0.0)]

    log = hydra_train("pretrain/tiny_conbimamba", [*overrides, "optimization.max_update=3"], tmp_path / "resume.log")
    assert re.search(r"Loaded checkpoint .* @ 2 updates\)", log)  # the two-group optimizer state with it
    assert_decayed_by(load_state(save_dir / "checkpoint_last.pt")["model"],
                      (1 - LR * WEIGHT_DECAY) * (1 - LR / 2 * WEIGHT_DECAY))


def trainer(model: torch.nn.Module, **common) -> Trainer:
    """fairseq's Trainer on the CPU with adam (lr * weight decay = 1/2) and the given `common` precision flags."""
    cfg = OmegaConf.structured(FairseqConfig(optimizer=FairseqAdamConfig(weight_decay=0.5 / LR),
                                             lr_scheduler=FixedLRScheduleConfig()))
    cfg.optimizer._name, cfg.lr_scheduler._name = "adam", "fixed"
    cfg.optimization.lr = [LR]
    cfg.common.cpu = True
    for key, value in common.items():
        cfg.common[key] = value
    return Trainer(cfg, None, model, torch.nn.Module())


def one_step_without_gradient(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Each parameter before a step whose loss has gradient 0 (so only the weight decay moves it)."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.optimizer.backward(sum((p * 0).sum() for p in trainer.model.parameters()))
    trainer.optimizer.step()
    return before


@pytest.mark.parametrize("precision,optimizer", [
    ({}, "FairseqAdam"),
    ({"fp16": True, "fp16_no_flatten_grads": True}, "FP16Optimizer"),  # fp32 copies of the parameters
    ({"fp16": True, "memory_efficient_fp16": True}, "MemoryEfficientFP16Optimizer"),
    ({"amp": True}, "AMPOptimizer"),
], ids=["fp32", "fp16_no_flatten", "memory_efficient_fp16", "amp"])
def test_every_precision_path_of_the_trainer_exempts_the_marked_parameters(precision, optimizer):
    model = tiny_model("conbimamba")
    fit = trainer(model, **precision)
    assert type(fit.optimizer).__name__ == optimizer
    before = one_step_without_gradient(fit)
    for name, p in model.named_parameters():
        # the decayed value rounded once to the parameter's dtype, as the fp32 step writes it back
        expected = before[name] if is_marked(name) else (before[name].float() / 2).to(p.dtype)
        assert torch.equal(p.detach(), expected), name


def test_the_transformer_keeps_fairseqs_single_decayed_group():
    model = tiny_model("transformer")
    fit = trainer(model)
    assert [g["weight_decay"] for g in fit.optimizer.param_groups] == [0.5 / LR]
    before = one_step_without_gradient(fit)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name] / 2), name


def test_flattened_fp16_refuses_marked_parameters_it_would_decay():
    with pytest.raises(ValueError, match="common.fp16_no_flatten_grads=true"):
        _ = trainer(tiny_model("conbimamba"), fp16=True).optimizer  # fairseq builds it on first use


def test_a_single_group_state_saved_before_the_exemption_resumes_in_two_groups():
    """What fairseq's adam saved before: every parameter in one group, with its Adam moments."""
    model = tiny_model("conbimamba")
    params = list(model.parameters())
    cfg = OmegaConf.structured(FairseqAdamConfig(lr=[LR], weight_decay=0.01, tpu=False))
    old = FairseqAdam(cfg, [{"params": params}])  # one group made by the caller, kept as it is
    for p in params:
        p.grad = torch.randn_like(p)
    old.step()
    saved = old.state_dict()
    assert len(saved["param_groups"]) == 1

    new = FairseqAdam(cfg, params)
    new.load_state_dict(saved)
    assert [(len(g["params"]), g["weight_decay"]) for g in new.param_groups] == [(len(params) - 8, 0.01), (8, 0.0)]
    for p in params:
        torch.testing.assert_close(new.optimizer.state[p]["exp_avg"], old.optimizer.state[p]["exp_avg"], rtol=0,
                                   atol=0)
