"""Writes gpu_check.json and gpu_check.md in the check's output folder, from the steps scripts/gpu_check.sh
recorded (steps.tsv), the tests' JUnit files and bench_gpu.py's results."""

import argparse
import json
from pathlib import Path
from xml.etree import ElementTree

JUNIT = {"test fp16 bf16": "test_low_precision.xml", "test cuda path": "test_cuda_path.xml"}


def read_steps(out: Path) -> list[dict]:
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, log = line.split("\t")
        step = {"name": name, "status": status, "seconds": float(seconds), "log": log or None}
        junit = out / "logs" / JUNIT.get(name, "none")
        if not status.startswith("skipped") and junit.is_file():
            suite = ElementTree.parse(junit).getroot()
            suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
            step["tests"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
        steps.append(step)
    return steps


def markdown(report: dict) -> str:
    lines = ["# GPU check", "", f"Result: {report['result']}; {report['total_s']:.0f} s in all.", "",
             f"Prebuilt kernels: {report['prebuilt']}.", "",
             "| step | status | seconds | tests (failed, errors, skipped) |", "|---|---|---|---|"]
    for step in report["steps"]:
        tests = step.get("tests")
        counts = f"{tests['tests']} ({tests['failures']}, {tests['errors']}, {tests['skipped']})" if tests else ""
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']:.1f} | {counts} |")
    if report["stopped_before"]:
        lines += ["", f"No CUDA device: stopped before {report['stopped_before']}."]
    bench = report.get("bench")
    if bench:
        lines += ["", "## bench_gpu.py", "", (Path(report["out"]) / "bench" / "results.md").read_text()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stopped-before", default="", help="the CUDA step the check stopped before, if any")
    parser.add_argument("--total-s", type=float, required=True)
    parser.add_argument("--prebuilt", default="not tried", help="whether the prebuilt kernel wheels were used, and why")
    args = parser.parse_args(argv)
    steps = read_steps(args.out)
    failed = [s["name"] for s in steps if s["status"] != "ok" and s["status"] != "skipped (--skip-install)"]
    result = ("failed: " + ", ".join(failed) if failed
              else f"no CUDA device, stopped before {args.stopped_before}" if args.stopped_before else "passed")
    bench_file = args.out / "bench" / "results.json"
    report = {"result": result, "total_s": args.total_s, "stopped_before": args.stopped_before or None,
              "prebuilt": args.prebuilt, "out": str(args.out), "steps": steps,
              "bench": json.loads(bench_file.read_text()) if bench_file.is_file() else None}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"[gpu_check] {result}; wrote {args.out}/gpu_check.json, gpu_check.md")


if __name__ == "__main__":
    main()
