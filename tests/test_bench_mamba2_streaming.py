"""The Mamba-2 vs Mamba-1 and the streaming benchmarks' own plumbing (a fresh process per case, tables, JSON) on
tiny settings; their numbers are in benchmarks/RESULTS.md."""

import json

from tests.conftest import load_benchmark


def test_mamba2_benchmark_reports_a_ratio_per_case(tmp_path):
    bench = load_benchmark("bench_mamba2")
    assert bench.main(["--out", str(tmp_path), "--dims", "32", "--lengths", "40", "--threads", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [c["status"] for c in results["cases"]] == ["ok"] * 4
    assert [(r["mode"], r["length"]) for r in results["ratios"]] == [("inference", 40), ("train", 40)]
    assert all(r["time_ratio"] > 0 for r in results["ratios"])
    assert "| inference | 32 | 40 |" in (tmp_path / "results.md").read_text()


def test_streaming_benchmark_reports_each_chunk_size(tmp_path):
    bench = load_benchmark("bench_streaming")
    argv = ["--out", str(tmp_path), "--models", "mamba2_small_iter1", "--chunk-ms", "250", "1000", "--seconds", "2"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())["models"]["mamba2_small_iter1"]
    assert result["status"] == "ok"
    assert [(row["chunk_ms"], row["chunks"]) for row in result["rows"]] == [(250, 8), (1000, 2)]
    assert all(row["max_ms"] >= row["mean_ms"] > 0 and row["rtf"] > 0 for row in result["rows"])
