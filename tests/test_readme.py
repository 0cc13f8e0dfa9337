"""The README's code cannot go stale: its Python example runs, verbatim but for the two paths, on a real
fairseq-hydra-train checkpoint; its install block is the list of commands scripts/setup_venv.sh runs, its GPU line
the one the plugin prints (INSTALL_CUDA); every tool, flag, config and make target it names exists."""

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from mamba_hubert.ops.selective_scan import INSTALL_CUDA

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def marked_block(text: str, marker: str) -> str:
    """The fenced code block that follows the line `<!-- {marker}: ... -->`."""
    match = re.search(rf"^<!-- {re.escape(marker)}:[^\n]*-->\n```\w*\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no code block marked <!-- {marker}: ... -->"
    return match.group(1)


def commands(script: str) -> list[str]:
    """Shell commands with continuation lines joined, comments and blank lines dropped, whitespace normalised."""
    joined = re.sub(r"\\\n", " ", script)
    lines = (line.split(" #")[0] if not line.lstrip().startswith("#") else "" for line in joined.splitlines())
    return [" ".join(shlex.split(line)) for line in lines if line.strip()]


def setup_venv_pip_commands() -> list[str]:
    """setup_venv.sh's `pip install` commands (its `pip` is the venv's), as a user types them: no -q, no upgrade of
    pip itself, the fairseq line without the `if` that skips it when fairseq is already there."""
    found = []
    for command in commands((ROOT / "scripts" / "setup_venv.sh").read_text()):
        start = command.find("pip install")
        if start < 0 or "--upgrade pip" in command:
            continue
        prefix = command[:start].strip()
        command = command[start:].replace(" -q", "")
        found.append(f"{prefix} {command}" if prefix and "=" in prefix else command)
    return found


def test_install_block_is_what_setup_venv_runs():
    readme = commands(marked_block(README.read_text(), "install"))
    expected = setup_venv_pip_commands()
    assert len(expected) >= 6, expected
    missing = [c for c in expected if c not in readme]
    extra = [c for c in readme if c not in expected]
    assert not missing and not extra, (f"README's install block and scripts/setup_venv.sh differ: missing from the "
                                       f"README {missing}, not in setup_venv.sh {extra}")
    assert readme == expected, "README's install block runs setup_venv.sh's commands in another order"


def test_install_versions_in_the_text_are_the_pins():
    text = README.read_text()
    section = text[text.index("## Installing into your own fairseq environment"):text.index("<!-- install:")]
    pins = dict(re.findall(r"([\w-]+)==([\w.]+)", (ROOT / "scripts" / "setup_venv.sh").read_text()))
    named = dict(re.findall(r"\b(torch|fairseq-fixed|hydra-core|omegaconf)\s+(\d[\w.]*\d)", section))
    assert set(named) == {"torch", "fairseq-fixed", "hydra-core", "omegaconf"}, named
    assert named == {name: pins[name] for name in named}
    assert "numpy < 2.5" in section and '"numpy<2.5"' in (ROOT / "scripts" / "setup_venv.sh").read_text()
    assert "Python 3.11" in section and "PYTHON:-python3.11" in (ROOT / "scripts" / "setup_venv.sh").read_text()


def test_gpu_install_line_is_the_one_the_plugin_prints():
    (line,) = commands(marked_block(README.read_text(), "install-gpu"))
    assert line == " ".join(shlex.split(INSTALL_CUDA.split(" (")[0]))


def test_python_example_runs_on_a_real_checkpoint(mamba_hubert_checkpoint, tone_corpus, tmp_path):
    example = marked_block(README.read_text(), "python")
    assert example.count('"checkpoint_best.pt"') == 1 and example.count('"audio.wav"') == 1
    audio = tone_corpus / "wav" / "valid0.wav"
    code = example.replace('"checkpoint_best.pt"', repr(str(mamba_hubert_checkpoint))).replace(
        '"audio.wav"', repr(str(audio)))
    # a fresh interpreter, as a user's; the repository first on sys.path, so this checkout's package is imported
    result = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"README's Python example failed:\n{result.stderr[-3000:]}"
    shape = re.findall(r"torch\.Size\(\[(\d+), (\d+), (\d+)\]\)", result.stdout)
    assert shape, f"README's Python example printed no feature shape: {result.stdout!r}"
    batch, frames, dim = map(int, shape[-1])
    assert batch == 1 and dim == 64  # SMALL_MODEL's encoder_embed_dim
    assert frames == pytest.approx(len(sf.read(audio)[0]) / 320, abs=2)  # 50 Hz frames


def console_scripts() -> dict[str, str]:
    setup = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(mamba-hubert-[\w-]+)=([\w.]+):main"', setup))


def help_text(module: str) -> str:
    main = importlib.import_module(module).main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    return out.getvalue()


def test_every_tool_flag_config_and_target_named_exists():
    text = README.read_text()
    tools = console_scripts()
    for code in re.findall(r"^```bash\n(.*?)^```$", text, re.DOTALL | re.MULTILINE):
        for command in commands(code):
            words = command.split()
            if words[0] == "make":
                targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE)
                assert words[1] in targets, command
            elif words[0].startswith("mamba-hubert-"):
                assert words[0] in tools, f"{words[0]} is not a console script in setup.py"
                usage = help_text(tools[words[0]])
                for flag in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
                    assert re.search(rf"(?<![\w-]){flag}(?![\w-])", usage), f"{words[0]} has no {flag}"
            elif words[0] == "fairseq-hydra-train":
                config_dir, name = words[words.index("--config-dir") + 1], words[words.index("--config-name") + 1]
                assert (ROOT / config_dir / f"{name}.yaml").is_file(), command
    # configs named in comments (`--config-name a, b or c`) exist too
    for name in re.findall(r"\b(?:tiny|base)_\w+", text):
        assert list((ROOT / "examples" / "config").rglob(f"{name}.yaml")), f"no config {name}.yaml"
    # the pages it links to exist
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        assert link.startswith("https://") or (ROOT / link).is_file(), f"README links to a missing {link}"
