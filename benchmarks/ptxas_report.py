"""Summarises nvcc's `-Xptxas -v` output: registers, shared memory and spills per kernel.

Usage: python benchmarks/ptxas_report.py BUILD_LOG   (exit status 1 if any kernel spills)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys


def demangle(names: list[str]) -> list[str]:
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return [re.sub(r"\(anonymous namespace\)::|fastffnn::cuda::|c10::", "", n) for n in out]


def main(path: str) -> int:
    rows, kernel, spills = [], None, (0, 0)
    for line in open(path, errors="replace"):
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            spills = (int(m.group(1)), int(m.group(2)))
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line.strip())
        if m and kernel:
            rows.append((kernel, int(m.group(1)), int(m.group(2) or 0), spills))
            kernel, spills = None, (0, 0)
    spilling = 0
    for (mangled, regs, smem, (st, ld)), name in zip(rows, demangle([r[0] for r in rows])):
        flag = "  SPILLS" if st or ld else ""
        spilling += bool(flag)
        print(f"  regs {regs:>3}  smem {smem:>6} B  spills {st}/{ld}  {name[:110]}{flag}")
    print(f"{len(rows)} kernels, {spilling} with spills")
    return 1 if spilling or not rows else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
