"""benchmarks/gpu_check.sh where no GPU is: it must say why it stopped, never claim a pass, and fit its budget."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run(tmp_path, path_dirs):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PATH=os.pathsep.join(map(str, path_dirs)),
               PYTHON=os.environ.get("PYTHON", __import__("sys").executable), CUDA_HOME=str(tmp_path / "no-cuda"))
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def no_gpu(tmp_path) -> Path:
    """A folder whose nvidia-smi fails, first on PATH: no GPU, also on a machine that has one."""
    fake = tmp_path / "no-gpu"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    return fake


def test_without_a_gpu_it_stops_and_says_so(tmp_path):
    r = run(tmp_path, [no_gpu(tmp_path), "/usr/bin", "/bin"])
    assert r.returncode == 2, r.stdout + r.stderr
    steps = (tmp_path / "out" / "steps.txt").read_text()
    assert "environment|not run|" in steps and "no GPU visible" in steps
    assert "passed" not in steps
    assert "no GPU visible" in (tmp_path / "out" / "SUMMARY.md").read_text()


def test_without_nvcc_it_refuses_to_build_a_cpu_only_extension(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'name, driver_version, memory.total [MiB], compute_cap'\necho 'Fake GPU, 1.0, 1 MiB, 9.0'\n")
    smi.chmod(0o755)
    r = run(tmp_path, [fake, "/usr/bin", "/bin"])
    assert r.returncode == 2, r.stdout + r.stderr
    steps = (tmp_path / "out" / "steps.txt").read_text()
    assert "environment|failed|" in steps and "nvcc not found" in steps
    assert not (tmp_path / "out" / "build.log").exists()


def test_the_step_budgets_fit_one_call_of_the_gpu_machine():
    # one command may run 10 minutes; the steps' timeouts must leave room for starting up and the summary
    text = SCRIPT.read_text()
    full = quick = 0
    for m in re.finditer(r"run_limited (\d+|\"\$\(budget (\d+) (\d+)\)\")", text):
        if m.group(2):
            a, b = int(m.group(2)), int(m.group(3))
        else:
            a = b = int(m.group(1))
        # the sanitizer's timeout runs once per tool: twice in a full run, once with --quick
        times = 2 if "SANITIZER" in text[max(0, m.start() - 200):m.start()] else 1
        full += a * times
        quick += b
    assert 0 < full < 540, full
    assert 0 < quick < 540, quick


def test_the_summary_tabulates_the_benchmark_csv(tmp_path):
    # gpu_summary.py reads the CSV of `python -m fastffnn bench`, the one benchmark harness.
    import importlib.util

    from fastffnn.bench import report

    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    from fastffnn.bench.peers import Point
    from fastffnn.bench.timing import Stats

    import torch

    point = Point((300, 100, 2), 32, "train", torch.device("cpu"))
    stats = {"eager": Stats(40e-6, 39e-6, 41e-6, 5, 100), "fastffnn[fused]": Stats(10e-6, 9e-6, 11e-6, 5, 100)}
    rows = report.point_rows({"device": "cuda"}, point, stats, {}, False, None)
    report.write_csv(str(tmp_path / "b.csv"), rows, append=False)
    table = summary.bench_table(tmp_path / "b.csv")
    assert "| 300,100,2 | 32 | train | fastffnn[fused] | 10.0 | 4.00 |  |" in table, table
    assert summary.bench_table(tmp_path / "missing.csv") == "(no benchmark CSV)"


TARGETS = ROOT / "benchmarks" / "gpu_targets.sh"


def test_the_targets_script_without_a_gpu_stops_and_says_so(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PATH=os.pathsep.join([str(no_gpu(tmp_path)), "/usr/bin", "/bin"]))
    r = subprocess.run(["bash", str(TARGETS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no GPU visible" in r.stdout, r.stdout + r.stderr


def test_the_targets_script_fits_one_call_and_asks_the_benchmark_for_what_it_has():
    """Its timeouts leave room in a 10-minute call, and each benchmark run names shapes, batches and
    implementations that `python -m fastffnn bench` knows (a typo would cost a GPU session its comparison)."""
    from fastffnn.bench import cli, peers

    text = TARGETS.read_text()
    budgets = [int(m) for m in re.findall(r"run_limited (\d+)", text)]
    budgets += [int(m) for m in re.findall(r"^bench \w+ (\d+)", text, re.M)]
    assert len(budgets) == 3 and sum(budgets) < 540, budgets
    runs = re.findall(r"^bench (\w+) \d+ (.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert [name for name, _ in runs] == ["issue13", "issue12"]
    for name, args in runs:
        words = args.replace("\\\n", " ").split()
        options = dict(zip(words[::2], words[1::2]))
        assert set(options) == {"--shapes", "--batches", "--impls"}, (name, options)
        assert all(cli._shape(s) for s in options["--shapes"].split(","))
        assert all(int(b) >= 1 for b in options["--batches"].split(","))
        assert set(options["--impls"].split(",")) <= set(peers.STOCK + peers.FAST), name
