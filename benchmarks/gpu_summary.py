"""Writes $OUT/SUMMARY.md from what benchmarks/gpu_check.sh left in $OUT: the GPU, the versions, each step's
verdict, the CUDA tests' counts (from the JUnit XML) and failures, and the benchmark table.

    python benchmarks/gpu_summary.py OUT
"""

from __future__ import annotations

import csv
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def test_counts(xml_path: Path) -> tuple[str, list[str]]:
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return "no JUnit XML (the tests did not run, or were killed before writing it)", []
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    failed = [f"{case.get('classname', '')}::{case.get('name', '')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    line = (f"{passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped "
            f"(of {total['tests']})")
    return line, failed


def bench_table(csv_path: Path) -> str:
    """The benchmark's CSV (``python -m fastffnn bench``) as one table row per point and implementation."""
    try:
        rows = list(csv.DictReader(csv_path.open()))
    except OSError:
        return "(no benchmark CSV)"
    if not rows:
        return "(the benchmark wrote no rows)"
    out = ["| shape | batch | mode | implementation | median µs | × eager | × compile |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        def ratio(key):
            return f"{float(r[key]):.2f}" if r.get(key) else ""
        out.append(f"| {r['shape']} | {r['batch']} | {r['mode']} | {r['impl']} | {float(r['median_us']):.1f} | "
                   f"{ratio('x_eager')} | {ratio('x_compile')} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "gpu-check-out")
    steps = [line.split("|", 3) for line in read(out / "steps.txt").splitlines() if line.count("|") >= 3]
    tests, failed = test_counts(out / "cuda_tests.xml")
    lines = ["# GPU check", "", "## Machine", "", "```", read(out / "gpu.txt"), read(out / "versions.txt"), "```", "",
             "## Steps", "", "| step | verdict | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {name} | {verdict} | {secs} | {detail.replace('|', '/')} |" for name, verdict, secs, detail in steps]
    lines += ["", "## CUDA tests", "", tests]
    if failed:
        lines += ["", "Failed:", ""] + [f"- `{name}`" for name in failed[:50]]
        if len(failed) > 50:
            lines.append(f"- ... and {len(failed) - 50} more")
    lines += ["", "## Benchmark (median µs per call, CUDA events)", "", bench_table(out / "gpu_bench.csv"), ""]
    (out / "SUMMARY.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
