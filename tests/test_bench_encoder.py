"""The encoder benchmark's aggregation over rounds (pure bookkeeping: no model is timed here)."""

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_encoder")


def _case(seconds: float, rtf: float | None, round_index: int, status: str = "ok") -> dict:
    measured = rtf is not None
    return {"kind": "inference", "model": "m", "path": "long", "seconds": seconds, "round": round_index,
            "status": status, "rtf": rtf, "time_s": rtf * seconds if measured else None,
            "cpu_s": 2 * rtf * seconds if measured else None, "peak_mb": 100.0 + round_index if measured else None,
            "rss_peak_mb": 500.0 if measured else None}


def test_median_over_rounds_takes_each_cases_median_and_range(bench):
    cases = [_case(10, rtf, i) for i, rtf in enumerate([0.13, 0.20, 0.12])] + [
        _case(60, 0.15, 0), _case(60, None, 1, status="failed (boom)"), _case(60, 0.11, 2)]
    merged = {c["seconds"]: c for c in bench.median_over_rounds(cases)}
    assert merged[10]["rtf"] == pytest.approx(0.13) and merged[10]["rtf_range"] == (0.12, 0.20)
    assert merged[10]["rounds"] == 3 and merged[10]["peak_mb"] == pytest.approx(101.0)
    assert merged[60]["rounds"] == 2 and merged[60]["rtf"] == pytest.approx(0.13)  # failed round left out


def test_a_case_that_never_ran_keeps_its_status(bench):
    merged = bench.median_over_rounds([_case(300, None, r, status="skipped (budget)") for r in range(2)])
    assert merged == [{**_case(300, None, 0, status="skipped (budget)"), "rounds": 0}]
