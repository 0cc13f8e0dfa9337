"""The patches package: its docstring lists every patch it installs, and the two patches no other test file covers
fix what they say (hubert_ctc's config field; the root logger's level). checkpoint_loading is tested in
test_checkpoint_loading.py, atomic_checkpoint_copies and finished_run in test_resume.py, gloo_gather in
test_distributed.py, no_weight_decay in test_weight_decay.py."""

import dataclasses
import logging
import subprocess
import sys

from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.models.hubert.hubert_asr import HubertCtcConfig

from mamba_hubert import patches


def test_docstring_lists_every_installed_patch():
    for patch in patches.PATCHES:
        name = patch.__name__.rsplit(".", 1)[1]
        assert f"`{name}`" in patches.__doc__, name
        assert "fairseq-fixed 0.12.3.1" in patch.__doc__ or "fairseq-fixed 0.12.3.1" in patches.__doc__


def test_hubert_ctc_config_gets_the_field_its_encoder_reads():
    assert "autoregressive" not in {f.name for f in dataclasses.fields(HubertCtcConfig)}  # fairseq's own lacks it
    patched = MODEL_DATACLASS_REGISTRY["hubert_ctc"]
    field = next(f for f in dataclasses.fields(patched) if f.name == "autoregressive")
    assert field.default is False and issubclass(patched, HubertCtcConfig)


def root_level_after(imports: str) -> int:
    code = f"import logging; {imports}; print(logging.getLogger().level)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_importing_the_plugin_undoes_fairseqs_debug_root_logger():
    assert root_level_after("import fairseq.models") == logging.DEBUG  # what fairseq does on its own
    assert root_level_after("import fairseq.models; import mamba_hubert") == logging.INFO


def test_root_logging_keeps_a_level_set_on_purpose():
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.WARNING)
        patches.root_logging.install()
        assert root.level == logging.WARNING
        root.setLevel(logging.DEBUG)
        patches.root_logging.install()
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_a_job_that_plots_prints_no_debug_lines(tmp_path):
    """What `make demo` does after its trainings (matplotlib's font search logs at DEBUG)."""
    code = ("from pathlib import Path; from mamba_hubert.demo.common import log, plot_curves; log('stage'); "
            "plot_curves({'run': {'valid': [{'valid_num_updates': 1, 'valid_uer': 50.0}]}}, 'valid_uer', 'valid', "
            f"'letter errors', Path({str(tmp_path / 'curve.png')!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    output = result.stdout + result.stderr
    assert "stage" in output and "DEBUG" not in output
    assert (tmp_path / "curve.png").stat().st_size > 1000
