import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

from mamba_hubert.models import MambaHubertAsr, MambaHubertAsrConfig, MambaHubertConfig, MambaHubertModel
from mamba_hubert.models.param_count import kmeans_dictionary
from mamba_hubert.modules.layer_types import layer_type_names
from mamba_hubert.tasks import MambaHubertPretrainingConfig, MambaHubertPretrainingTask
from tests.fairseq_runs import SMALL_MODEL, TINY_CONV, make_tone_corpus, pretrain_overrides, train_fairseq_hubert

LAYER_TYPES = layer_type_names()
MAMBA_LAYER_TYPES = tuple(name for name in LAYER_TYPES if name not in ("transformer", "conformer"))  # with Mamba blocks

# Without a GPU, Triton's interpreter runs mamba-ssm's Mamba-2 kernels on CPU tensors (tests/triton_interpreter.py).
# Triton reads this when it decorates its own language functions, at its first import: so here, before any test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module, imported as when run as a script (its folder's machine.py importable)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(layer_type: str, **overrides) -> MambaHubertConfig:
    """A two-layer model small enough for unit tests; no dropout so outputs are deterministic."""
    fields = {
        "label_rate": 50, "layer_type": layer_type, "encoder_layers": 2, "encoder_embed_dim": 32,
        "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4, "conv_feature_layers": TINY_CONV,
        "extractor_mode": "layer_norm", "final_dim": 16, "dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0, "dropout_features": 0.0,
        "mamba_d_state": 8, "conv_pos": 16, "conv_pos_groups": 4, "depthwise_conv_kernel_size": 7,
    }
    fields.update(overrides)
    return MambaHubertConfig(**fields)


def tiny_model(layer_type: str, seed: int = 0, label_set_sizes: tuple[int, ...] = (10,),
               **overrides) -> MambaHubertModel:
    """`tiny_config`'s model with one label set (k-means dictionary) per entry of `label_set_sizes`."""
    torch.manual_seed(seed)
    task_cfg = HubertPretrainingConfig(data="unused", label_rate=50)
    return MambaHubertModel(tiny_config(layer_type, **overrides), task_cfg,
                            [kmeans_dictionary(size) for size in label_set_sizes])


# A downstream encoder small enough for unit tests (mamba_hubert_asr's head_* fields), no dropout.
SMALL_HEAD = {"head_layers": 2, "head_embed_dim": 32, "head_ffn_embed_dim": 64, "head_attention_heads": 4,
              "head_dropout": 0.0, "head_conv_pos": 16, "head_conv_pos_groups": 4,
              "head_depthwise_conv_kernel_size": 7, "head_mamba_d_state": 8}


def build_asr_model(checkpoint, corpus, seed: int = 0, **fields) -> MambaHubertAsr:
    """The model fairseq-hydra-train builds for `model._name=mamba_hubert_asr model.w2v_path=checkpoint`."""
    task = MambaHubertPretrainingTask(MambaHubertPretrainingConfig(
        data=str(corpus), label_dir=str(corpus), fine_tuning=True, labels=["ltr"], single_target=True,
        pad_audio=True, normalize=False, seed=1))
    torch.manual_seed(seed)
    cfg = MambaHubertAsrConfig(w2v_path=str(checkpoint), normalize=False, data=str(corpus), final_dropout=0.0,
                               dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, **fields)
    return MambaHubertAsr.build_model(cfg, task)


@pytest.fixture(params=LAYER_TYPES)
def layer_type(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run hundreds of small ops per chunk: with 2 threads on 2 shared cores, OpenMP hand-offs made
    them up to 100x slower whenever another process was busy. One thread keeps such a test file fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Real fairseq-hydra-train checkpoints that several test files start from, made once per session.

@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="session")
def mamba_hubert_checkpoint(tone_corpus, tmp_path_factory) -> Path:
    """A tiny ConBiMamba `mamba_hubert` pretrained for 2 updates on the tone corpus."""
    from mamba_hubert.demo.fairseq_tools import hydra_train

    root = tmp_path_factory.mktemp("mamba_hubert_run")
    hydra_train("pretrain/tiny_conbimamba", pretrain_overrides(tone_corpus, root / "ckpt", "optimization.max_update=2",
                                                               *SMALL_MODEL), root / "train.log")
    return root / "ckpt" / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def fairseq_hubert_checkpoint(tone_corpus, tmp_path_factory) -> Path:
    """fairseq's own `hubert` (its HuBERT Base recipe, made tiny) pretrained for 2 updates on the tone corpus."""
    return train_fairseq_hubert(tone_corpus, tmp_path_factory.mktemp("hubert_run"))
