"""mamba_hubert.patches.checkpoint_loading: fairseq and mamba_hubert checkpoints load under torch's weights_only
unpickler with no environment flags; pickled callables are refused without running; bad files give clear
errors."""

import argparse
import io
import os
import socket
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fairseq import checkpoint_utils, tasks
from fairseq.data import Dictionary
from fairseq.distributed import utils as distributed_utils
from fairseq.models.hubert import HubertModel
from omegaconf import OmegaConf
from torch import _weights_only_unpickler

from mamba_hubert.models import MambaHubertModel
from mamba_hubert.models.param_count import kmeans_dictionary
from mamba_hubert.patches import checkpoint_loading
from tests.fairseq_runs import TINY_CONV


@pytest.fixture(autouse=True)
def _no_unsafe_env(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    checkpoint_loading.install()


def _pickle_globals(path: Path) -> set:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        return _weights_only_unpickler.get_globals_in_pkl(io.BytesIO(z.read(name)))


@pytest.fixture
def hydra_checkpoint(fairseq_hubert_checkpoint) -> Path:
    return fairseq_hubert_checkpoint


def test_fairseq_hubert_checkpoint_loads(hydra_checkpoint):
    # Not vacuous: the file names a class that torch's default weights_only allow-list refuses.
    extra = _pickle_globals(hydra_checkpoint) - set(_weights_only_unpickler._get_allowed_globals())
    assert "fairseq.data.dictionary.Dictionary" in extra

    state = checkpoint_utils.load_checkpoint_to_cpu(str(hydra_checkpoint))
    assert isinstance(state["task_state"]["dictionaries"][0], Dictionary)
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(hydra_checkpoint)])
    assert isinstance(models[0], HubertModel) and cfg.model._name == "hubert"
    for name, tensor in models[0].state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name


def _tiny_mamba_hubert_state(tmp_path: Path) -> tuple:
    """A mamba_hubert checkpoint laid out as fairseq's Trainer.state_dict writes it, plus numpy extra_state."""
    dictionary = kmeans_dictionary(8)
    model_cfg = {"_name": "mamba_hubert", "label_rate": 50, "layer_type": "ext_bimamba", "encoder_layers": 1,
                 "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
                 "conv_feature_layers": TINY_CONV, "extractor_mode": "layer_norm", "final_dim": 16,
                 "mamba_d_state": 8, "conv_pos": 16, "conv_pos_groups": 4}
    task_cfg = {"_name": "mamba_hubert_pretraining", "data": str(tmp_path), "labels": ["km"], "label_rate": 50.0}
    task = tasks.setup_task(OmegaConf.create(task_cfg))
    task.load_state_dict({"dictionaries": [dictionary]})
    model = task.build_model(OmegaConf.create(model_cfg))
    optimizer = torch.optim.Adam(model.parameters())
    sum(p.pow(2).sum() for p in model.parameters()).backward()
    optimizer.step()  # so that the optimizer state holds tensors
    state = {
        "args": None,
        "cfg": {"model": model_cfg, "task": task_cfg},
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": np.float64(3.5)}, "num_updates": 7}],
        "task_state": {"dictionaries": [dictionary]},
        "extra_state": {"val_loss": np.float32(3.5), "counts": np.arange(3), "train_iterator": {"epoch": 2}},
        "last_optimizer_state": optimizer.state_dict(),
    }
    return model, state


def test_mamba_hubert_checkpoint_loads(tmp_path):
    model, state = _tiny_mamba_hubert_state(tmp_path)
    path = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save(state, str(path))
    extra = _pickle_globals(path) - set(_weights_only_unpickler._get_allowed_globals())
    assert {"fairseq.data.dictionary.Dictionary", "numpy.dtype"} <= extra

    loaded = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert loaded["extra_state"]["val_loss"] == np.float32(3.5)
    assert np.array_equal(loaded["extra_state"]["counts"], np.arange(3))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    assert isinstance(models[0], MambaHubertModel)
    assert task.dictionaries[0].symbols == state["task_state"]["dictionaries"][0].symbols
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, models[0].state_dict()[name]), name


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_legacy_args_and_numpy_values_load(tmp_path, legacy_format):
    """Pre-hydra fairseq checkpoints keep an argparse.Namespace in `args`; some carry numpy values."""
    args = argparse.Namespace(arch="hubert", lr=[0.0005], adam_betas="(0.9,0.98)", max_tokens=1400000)
    state = {"args": args, "model": OrderedDict(w=torch.ones(2)),
             "extra_state": {"best": np.float64(2.25), "n": np.int64(3), "mask": np.array([True, False]),
                             "dtype": np.dtype("float16")}}
    path = tmp_path / "old.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_format)
    loaded = checkpoint_loading.load(str(path))
    assert vars(loaded["args"]) == vars(args)
    assert loaded["extra_state"]["best"] == 2.25 and loaded["extra_state"]["n"] == 3
    assert loaded["extra_state"]["mask"].tolist() == [True, False]
    assert loaded["extra_state"]["dtype"] == np.dtype("float16")


class _RunsCode:
    """Pickles as a call: what a malicious checkpoint hides inside otherwise normal state."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("via", ["os.system", "builtins.exec"])
def test_pickled_callable_is_refused_and_not_run(tmp_path, via, legacy_format):
    marker = tmp_path / "code_ran"
    command = f"touch {marker}"
    payload = _RunsCode(os.system, command) if via == "os.system" else _RunsCode(
        exec, f"open({str(marker)!r}, 'w').close()")
    state = {"args": None, "cfg": {}, "model": OrderedDict(w=torch.ones(2)), "optimizer_history": [],
             "extra_state": {"metrics": payload}}
    path = tmp_path / "evil.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy_format)

    # Control: an unrestricted unpickling really runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    for loader in (checkpoint_utils.load_checkpoint_to_cpu, checkpoint_loading.load):
        with pytest.raises(checkpoint_loading.UnsafeCheckpointError) as raised:
            loader(str(path))
        message = str(raised.value)
        assert str(path) in message and ("system" in message if via == "os.system" else "exec" in message)
        assert "refused" in message and "Weights only load failed" not in message
        assert not marker.exists()


def test_truncated_or_corrupt_files_give_a_clear_error(tmp_path, hydra_checkpoint):
    data = hydra_checkpoint.read_bytes()
    cases = {f"cut{n}": data[:n] for n in (0, 10, 4096, len(data) // 2, len(data) - 1)}
    cases["random"] = np.random.default_rng(0).bytes(5000)
    cases["text"] = b"this is not a checkpoint\n" * 10
    legacy = io.BytesIO()
    torch.save({"model": OrderedDict(w=torch.ones(64))}, legacy, _use_new_zipfile_serialization=False)
    cases["legacy_cut"] = legacy.getvalue()[:200]
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(checkpoint_loading.CheckpointLoadError) as raised:
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
        assert type(raised.value) is checkpoint_loading.CheckpointLoadError, (name, raised.value)
        message = str(raised.value)
        assert str(path) in message and "truncated, corrupt or not a torch checkpoint" in message, name
        assert "Weights only load failed" not in message, name


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "missing.pt"))
    # A readable torch file that is no fairseq checkpoint fails later, in fairseq's upgrade step: left as is.
    path = tmp_path / "weights_only.pt"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(KeyError):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


def test_install_is_idempotent():
    wrapped = checkpoint_utils.load_checkpoint_to_cpu
    count = len(torch.serialization.get_safe_globals())
    checkpoint_loading.install()
    checkpoint_loading.install()
    assert checkpoint_utils.load_checkpoint_to_cpu is wrapped
    assert len(torch.serialization.get_safe_globals()) == count


def _broadcast_worker(rank: int, port: int, checkpoint: str, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        checkpoint_loading.install()
        # What fairseq's Trainer.load_checkpoint does with several ranks: rank 0 reads, then broadcasts.
        state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint) if rank == 0 else None
        state = distributed_utils.broadcast_object(state, src_rank=0, group=dist.group.WORLD,
                                                   dist_device=torch.device("cpu"))
        results.put((rank, type(state["cfg"]).__name__, state["task_state"]["dictionaries"][0].symbols,
                     float(sum(t.sum() for t in state["model"].values()))))
    finally:
        dist.destroy_process_group()


def test_checkpoint_broadcast_between_ranks(hydra_checkpoint):
    """Rank 0 broadcasts the loaded state (a DictConfig cfg, tensor placeholders) through torch.load."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(_broadcast_worker, args=(port, str(hydra_checkpoint), results), nprocs=2, join=True,
                       start_method="spawn")
    received = sorted(results.get(timeout=60) for _ in range(2))
    assert received[0][1] == received[1][1] == "DictConfig"
    assert received[0][2:] == received[1][2:]
