"""What prebuilt kernel wheels were built against, and whether this machine matches it.

    python gpu_kernels_info.py record DIR --arch 90 --builds builds.tsv --nvcc "release 13.0, V13.0.88"
    python gpu_kernels_info.py match DIR [--capability 9.0]

`record` (scripts/gpu_kernels.sh, in the build venv) writes DIR/build_info.json: torch version and git_version, CUDA
version, Python tag, compute capability, the newest glibc symbol version the wheels' libraries need, each wheel's size
and sha256 and each build's CPU and wall seconds. `match` (scripts/gpu_check.sh, in the check's venv) exits 0 when the
running torch, Python and glibc (and --capability, where a GPU is there to ask) fit those wheels, else 1 with the
difference; a wheel built against another torch would fail to load or misbehave, so it is then built from its sdist.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import zipfile
from pathlib import Path

INFO = "build_info.json"


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def torch_build() -> dict:
    import torch  # here, not at the top: `match` must report a torch that does not import, not crash on it

    return {"torch": torch.__version__, "torch_git_version": torch.version.git_version, "cuda": torch.version.cuda}


def glibc_needed(wheel: Path) -> str:
    """The newest GLIBC_x.y symbol version any shared library in the wheel asks for ("" if none)."""
    versions = set()
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".so"):
                versions.update(re.findall(rb"GLIBC_(2\.\d+)", archive.read(name)))
    return max((v.decode() for v in versions), key=lambda v: tuple(map(int, v.split("."))), default="")


def record(directory: Path, arch: str, builds: Path, nvcc: str) -> dict:
    wheels = sorted(directory.glob("*.whl"))
    times = {}
    for line in builds.read_text().splitlines():
        package, wall_s, user_s, sys_s = line.split("\t")
        times[package] = {"wall_s": float(wall_s), "cpu_s": round(float(user_s) + float(sys_s), 1)}
    glibc = max((glibc_needed(w) for w in wheels), key=lambda v: tuple(map(int, v.split("."))) if v else (0,))
    info = {
        **torch_build(), "python_tag": python_tag(), "compute_capability": f"{arch[:-1]}.{arch[-1]}", "nvcc": nvcc,
        "glibc_needed": glibc,
        "wheels": [{"file": w.name, "bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
                   for w in wheels],
        "builds": times,
    }
    (directory / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def mismatches(info: dict, capability: str | None) -> list[str]:
    """What of this machine differs from what the wheels were built against (empty: they fit)."""
    try:
        here = torch_build()
    except ImportError as error:
        return [f"torch does not import: {error}"]
    here["python_tag"] = python_tag()
    keys = ["torch_git_version", "cuda", "python_tag"]
    if capability is not None:
        here["compute_capability"] = capability
        keys.append("compute_capability")
    found = [f"{key}: built for {info[key]}, here {here[key]}" for key in keys if info[key] != here[key]]
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]  # "glibc 2.39"
    if info["glibc_needed"] and tuple(map(int, glibc.split("."))) < tuple(map(int, info["glibc_needed"].split("."))):
        found.append(f"glibc: the wheels need {info['glibc_needed']}, here {glibc}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("record")
    make.add_argument("directory", type=Path)
    make.add_argument("--arch", required=True, help="the sm number built for, e.g. 90")
    make.add_argument("--builds", type=Path, required=True, help="package, wall, user and sys seconds per line")
    make.add_argument("--nvcc", required=True)
    check = commands.add_parser("match")
    check.add_argument("directory", type=Path)
    check.add_argument("--capability", help="the GPU's, e.g. 9.0; left out where there is no GPU to ask")
    args = parser.parse_args(argv)
    if args.command == "record":
        info = record(args.directory, args.arch, args.builds, args.nvcc)
        print(json.dumps({k: v for k, v in info.items() if k != "wheels"}, indent=2))
        return 0
    info_file = args.directory / INFO
    if not info_file.is_file():
        print(f"no prebuilt kernels: {info_file} is missing")
        return 1
    found = mismatches(json.loads(info_file.read_text()), args.capability)
    print("\n".join(found) if found else "the prebuilt kernels fit this machine")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
