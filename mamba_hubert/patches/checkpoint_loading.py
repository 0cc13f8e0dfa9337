"""Safe loading of fairseq checkpoints under torch >= 2.6, whose `torch.load` unpickles with weights_only=True
(fairseq-fixed 0.12.3.1 calls `torch.load` without `weights_only`).

fairseq calls `torch.load` without `weights_only`, so under torch >= 2.6 its checkpoints fail to load: their
pickles name classes outside torch's default allow-list. Setting TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD would
switch pickle safety off for every load; `install()` instead extends the allow-list with the plain-data
classes that fairseq checkpoints hold (found by disassembling checkpoints written by fairseq-hydra-train):

- `fairseq.data.dictionary.Dictionary`: `task_state` of hubert_pretraining / hubert_ctc checkpoints;
- `argparse.Namespace`: the `args` of checkpoints from fairseq's pre-hydra versions;
- numpy scalars, dtypes and arrays: values in `extra_state` / `args` of some fairseq checkpoints;
- omegaconf containers (DictConfig, ListConfig, their nodes and metadata, with `typing.Any`, the builtin
  types they record as element/key types and the `collections.defaultdict` resolver cache) and
  `fairseq.distributed.utils._TensorPlaceholder`: in multi-process training rank 0 loads the checkpoint
  and broadcasts it to the other ranks through torch.save/torch.load, after fairseq has turned `cfg` into
  a DictConfig and swapped tensors for placeholders.

Each of these rebuilds data only (attribute dicts, containers, numeric values); none runs code named by
the file. A pickle naming anything else (e.g. `os.system` through `__reduce__`) is still refused.

`install()` also wraps `fairseq.checkpoint_utils.load_checkpoint_to_cpu` so that a refused or corrupt file
raises `CheckpointLoadError` naming the file and the offending globals instead of torch's pickle errors.
"""

import argparse
import collections
import logging
import os
import pickle
import re
import sys
import traceback
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# How torch's weights_only unpickler names a refused global (not allowed / module blocked).
_UNSAFE_GLOBAL_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
)
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation of torch.load|$)", re.DOTALL)
# Errors about the path itself, whose own message is already clear.
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_installed = False


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be loaded: truncated, corrupt, or not a torch checkpoint."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"cannot load checkpoint {path}: {reason}")


class UnsafeCheckpointError(CheckpointLoadError):
    """A checkpoint whose pickle names globals outside the allow-list; it was not unpickled."""

    def __init__(self, path: str, offending: list[str]) -> None:
        self.offending = offending
        names = ", ".join(offending) or "an unknown global"
        super().__init__(
            path,
            f"refused to unpickle it: it references {names}, which is not on the allow-list of the plain-data "
            f"classes fairseq checkpoints contain. Unpickling it could run arbitrary code. If you trust the file "
            f"and the class only holds data, allow it with torch.serialization.add_safe_globals([...]).",
        )


def _numpy_globals() -> list[Callable | tuple[Callable, str]]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    found: list[Callable | tuple[Callable, str]] = [np.dtype, np.ndarray]
    # Each dtype instance is of its own class (numpy.dtypes.Float64DType, ...): the unpickler's BUILD
    # step checks that class, so every one of them must be listed.
    found += sorted({type(np.dtype(t)) for t in np.sctypeDict.values()}, key=lambda c: c.__name__)
    for name in ("scalar", "_reconstruct"):
        # Pickles written under numpy 1.x name numpy.core.*, under numpy 2 numpy._core.*: accept both spellings.
        function = getattr(multiarray, name)
        found += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    return found


def _omegaconf_globals() -> list[Callable]:
    from omegaconf import base, dictconfig, listconfig, nodes

    node_classes = [c for c in vars(nodes).values() if isinstance(c, type) and issubclass(c, nodes.Node)]
    return [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata, *node_classes,
            typing.Any, collections.defaultdict, dict, list, int, float, str, bool]


def allowed_globals() -> list[Callable | tuple[Callable, str]]:
    """Everything `install()` adds to torch's weights_only allow-list (see the module docstring)."""
    from fairseq.data.dictionary import Dictionary
    from fairseq.distributed.utils import _TensorPlaceholder

    return [Dictionary, _TensorPlaceholder, argparse.Namespace, *_numpy_globals(), *_omegaconf_globals()]


def _offending_globals(path: str, error: BaseException) -> list[str]:
    """Globals of the checkpoint outside the allow-list: a static scan of its pickle, else torch's message."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (best effort on a file that already failed: legacy format, corrupt zip)
        found = []
    if found:
        return sorted(found)
    names = {m.group(1) for pattern in _UNSAFE_GLOBAL_PATTERNS for m in pattern.finditer(str(error))}
    # torch's message drops the "builtins." of builtins (exec, eval, ...).
    return sorted(name if "." in name else f"builtins.{name}" for name in names)


def _is_broken_name(name: str) -> bool:
    """True for a global that cannot exist (a truncated name, an attribute its loaded module lacks).

    A truncated pickle can cut a GLOBAL's name short; that is corruption, not an attack. Modules that are not
    imported yet are not imported here (importing runs their code), so such names count as real.
    """
    module, _, attribute = name.rpartition(".")
    if not module or not all(part.isidentifier() for part in name.split(".")):
        return True
    loaded = sys.modules.get(module)
    return loaded is not None and not hasattr(loaded, attribute)


def _detail(error: BaseException) -> str:
    """The informative part of a torch.load error, on one line."""
    text = str(error).strip()
    match = _UNPICKLER_DETAIL.search(text)
    if match:
        text = match.group(1)
    return " ".join(text.split()) or "unexpected end of file"


def _raised_by_torch_load(error: BaseException) -> bool:
    load_code = torch.serialization.load.__code__
    return any(frame.f_code is load_code for frame, _ in traceback.walk_tb(error.__traceback__))


def explain_load_error(path: str, error: BaseException) -> CheckpointLoadError:
    """The CheckpointLoadError to raise for an exception that torch.load raised on `path`."""
    detail = f"{type(error).__name__}: {_detail(error)}"
    if isinstance(error, pickle.UnpicklingError):
        offending = _offending_globals(path, error)
        if offending and not all(_is_broken_name(name) for name in offending):
            return UnsafeCheckpointError(path, offending)
        if offending:
            detail = f"its pickle names {', '.join(offending)}, which cannot exist"
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    return CheckpointLoadError(path, f"the file ({size} bytes) is truncated, corrupt or not a torch checkpoint "
                                     f"({detail})")


def load(path: str, map_location: Any = "cpu") -> Any:
    """`torch.load` with weights_only=True and the allow-list, raising CheckpointLoadError for bad files."""
    install()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except _PATH_ERRORS:
        raise  # the OS message already names the file
    except Exception as e:
        raise explain_load_error(path, e) from e


def _wrap_load_checkpoint_to_cpu() -> None:
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "_mamba_hubert_safe", False):
        return

    def load_checkpoint_to_cpu(path: str, arg_overrides: dict | None = None, load_on_all_ranks: bool = False) -> dict:
        try:
            return original(path, arg_overrides=arg_overrides, load_on_all_ranks=load_on_all_ranks)
        except _PATH_ERRORS:
            raise
        except Exception as e:
            # Only failures inside torch.load are about the file; later errors (upgrading the state) pass as is.
            if not _raised_by_torch_load(e):
                raise
            raise explain_load_error(path, e) from e

    load_checkpoint_to_cpu.__doc__ = original.__doc__
    load_checkpoint_to_cpu._mamba_hubert_safe = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def install() -> None:
    """Allow-list fairseq's checkpoint classes for weights_only loading and make load errors clear; idempotent."""
    global _installed
    if _installed:
        return
    torch.serialization.add_safe_globals(allowed_globals())
    _wrap_load_checkpoint_to_cpu()
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        logger.warning("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: fairseq's torch.load calls unpickle checkpoints "
                       "without restrictions, so a malicious checkpoint can run code. Unset it: the plugin's "
                       "allow-list loads fairseq checkpoints without it.")
    _installed = True
