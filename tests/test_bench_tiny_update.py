"""The tiny-update benchmark's own plumbing: the rate read from fairseq's log skips start-up, the table's ratio, and a
--demo that is not a finished demo run is refused before any training; its numbers are in benchmarks/RESULTS.md."""

import json

import pytest

from tests.conftest import load_benchmark


def train_inner(update: int, ups: float) -> str:
    record = {"epoch": 1, "ups": f"{ups}", "num_updates": f"{update}"}
    return f"[2026-12-05 10:15:26,251][train_inner][INFO] - {json.dumps(record)}"


def test_updates_per_second_is_the_median_after_start_up():
    bench = load_benchmark("bench_tiny_update")
    log = "\n".join([train_inner(10, 0.5), train_inner(50, 0.7), train_inner(60, 4.0), train_inner(70, 5.0),
                     train_inner(80, 9.0)])
    assert bench.updates_per_second(log) == 5.0


def test_table_gives_the_log_mel_over_cnn_ratio():
    bench = load_benchmark("bench_tiny_update")
    meta = {"command": "python benchmarks/bench_tiny_update.py", "cpu": "cpu", "torch": "2", "updates": 300,
            "wall_s": 1.0}
    table = bench.markdown({"tiny_conbimamba": {"pretraining": {"cnn": 3.0, "fbank": 4.5}}}, meta)
    assert "| tiny_conbimamba | pretraining | 3.00 | 4.50 | 1.50 |" in table


def test_refuses_a_directory_that_is_not_a_demo_run(tmp_path, capsys):
    bench = load_benchmark("bench_tiny_update")
    with pytest.raises(SystemExit):
        bench.main(["--demo", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "train.tsv is missing: --demo must be a finished `make demo` run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
