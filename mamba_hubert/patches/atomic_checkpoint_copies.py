"""Atomic checkpoint copies for fairseq's `save_checkpoint` (fairseq-fixed 0.12.3.1).

fairseq writes the first file of a save (e.g. `checkpoint_1_500.pt`, or `checkpoint_best.pt`) atomically: to
`<name>.tmp`, then a rename. It then copies that file onto the others (`checkpoint_best.pt`,
`checkpoint_last.pt`) with `PathManager.copy`, i.e. `shutil.copyfile`, which truncates the destination and
rewrites it in place: a run killed during that copy leaves a truncated `checkpoint_last.pt`, the very file a
restarted run resumes from, and fairseq does not fall back to an older checkpoint.

`install()` hands fairseq's `checkpoint_utils` a PathManager whose `copy` writes `<destination>.tmp` in the
destination's folder, flushes it to disk and renames it over the destination, so a reader (or a restarted
run) sees either the old complete file or the new complete one. Paths that need ioPath (remote storage) keep
fairseq's own copy.
"""

import os
import shutil

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager


def atomic_copy(src_path: str, dst_path: str) -> str:
    """Copies `src_path` to `dst_path` so that `dst_path` is never seen half written; returns `dst_path`."""
    tmp_path = dst_path + ".tmp"
    try:
        with open(src_path, "rb") as src, open(tmp_path, "wb") as tmp:
            shutil.copyfileobj(src, tmp, length=16 * 1024 * 1024)
            tmp.flush()
            os.fsync(tmp.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp_path, dst_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return dst_path


class AtomicCopyPathManager(PathManager):
    """fairseq's PathManager, with `copy` done through a temporary file and a rename for local paths."""

    @staticmethod
    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return PathManager.copy(src_path, dst_path, overwrite=overwrite)
        if not overwrite and os.path.exists(dst_path):
            return False
        atomic_copy(src_path, dst_path)
        return True


def install() -> None:
    """Makes fairseq's checkpoint copies atomic (see the module docstring); idempotent."""
    checkpoint_utils.PathManager = AtomicCopyPathManager
