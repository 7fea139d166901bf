"""The benchmark runs end to end, writes tagged CSV rows and a plot, and refuses to time a wrong implementation.

These tests check the benchmark's machinery, never its timings: benchmarks
are scripts (``python -m fastffnn bench``), not timed tests.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastffnn
from fastffnn.bench import cli, peers, timing

ROOT = Path(__file__).resolve().parent.parent


def test_sklearn_mode_fits_both_estimators_and_writes_csv_and_plot(tmp_path, capsys):
    """bench --sklearn: both estimators on the same data, for the same epochs, side by side."""
    pytest.importorskip("sklearn")
    out_csv, out_png = tmp_path / "sk.csv", tmp_path / "sk.png"
    rc = cli.main(["--sklearn", "--smoke", "--batches", "1,auto", "--repeats", "2", "--csv", str(out_csv),
                   "--plot", str(out_png)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = list(csv.DictReader(out_csv.open()))
    assert {(r["batch"], r["impl"]) for r in rows} == {(b, i) for b in ("1", "auto")
                                                       for i in ("scikit-learn float64", "fastffnn float32")}
    for r in rows:
        assert r["dataset"] == "classification" and r["epochs"] == "1" and r["repeats"] == "2"
        assert r["sklearn"] and r["torch"]
        assert float(r["fit_s"]) > 0 and 0 <= float(r["test_accuracy"]) <= 1
        assert float(r["examples_per_s"]) == pytest.approx(int(r["n_train"]) / float(r["fit_s"]), rel=1e-2)
        base = next(float(b["fit_s"]) for b in rows if b["batch"] == r["batch"] and b["impl"].startswith("scikit"))
        assert float(r["x_sklearn"]) == pytest.approx(base / float(r["fit_s"]), rel=1e-2)
        best = next(float(b["fit_s_min"]) for b in rows if b["batch"] == r["batch"] and b["impl"].startswith("scikit"))
        assert float(r["x_sklearn_best"]) == pytest.approx(best / float(r["fit_s_min"]), rel=1e-2)
    pytest.importorskip("matplotlib")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_run_writes_tagged_csv_and_plot(tmp_path, capsys):
    out_csv, out_png = tmp_path / "bench.csv", tmp_path / "bench.png"
    rc = cli.main(["--smoke", "--csv", str(out_csv), "--plot", str(out_png)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = list(csv.DictReader(out_csv.open()))
    cpu_impls = {"eager", "eager-ce", "eager+fused", "eager-ce+fused", "fastffnn", "fastffnn+fused", "fastffnn+adam",
                 "fastffnn-step", "fastffnn-fit"}
    assert {r["impl"] for r in rows if r["mode"] == "train"} == cpu_impls  # compile is left out of --smoke
    assert {r["impl"] for r in rows if r["mode"] == "forward"} == {"eager", "fastffnn"}
    for mode in ("grad-forward", "forward-backward"):  # the drop-in's two halves, against eager alone
        assert {r["impl"] for r in rows if r["mode"] == mode} == {"eager", "fastffnn"}
    assert {(r["batch"], r["mode"]) for r in rows} == {(b, m) for b in ("1", "32") for m in peers.MODES}
    for r in rows:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["fastffnn"] == fastffnn.__version__
        assert r["timestamp"] and r["device_name"] and int(r["threads"]) >= 1
        assert float(r["median_us"]) > 0 and float(r["q1_us"]) <= float(r["median_us"]) <= float(r["q3_us"])
        assert float(r["x_eager"]) == pytest.approx(
            next(float(e["median_us"]) for e in rows
                 if e["impl"] == "eager" and (e["batch"], e["mode"]) == (r["batch"], r["mode"]))
            / float(r["median_us"]), rel=1e-3)
    assert "fastffnn-step" in printed and "x eager" in printed
    pytest.importorskip("matplotlib")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _plant_a_bug(monkeypatch, impl, corrupt):
    """Makes peers.build give `impl` a model that `corrupt` has changed: a wrong answer the check must catch."""
    real_build = peers.build

    def build_with_a_bug(name, point, stock, x, y, gold):
        runner = real_build(name, point, stock, x, y, gold)
        if name == impl:
            with torch.no_grad():
                corrupt(runner.model)
        return runner

    monkeypatch.setattr(peers, "build", build_with_a_bug)


def test_a_wrong_implementation_is_not_timed(monkeypatch, capsys):
    _plant_a_bug(monkeypatch, "fastffnn", lambda m: m.W.bias[0].add_(0.5))
    rc = cli.main(["--smoke", "--batches", "32", "--modes", "forward,train"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("fastffnn at (300, 100, 2) batch 32") == 2 and "NOT timed" in err


def test_compile_peer_is_checked_and_its_compile_time_reported(capsys):
    pytest.importorskip("torch._inductor")
    rc = cli.main(["--shapes", "8x6x3", "--batches", "4", "--modes", "forward", "--impls", "compile",
                   "--block-s", "0.001", "--blocks", "2", "--idle-wait", "0"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert re.search(r"^  compile .* compile \d+\.\d s$", printed, re.M), printed


def test_reduce_overhead_compile_is_a_cuda_peer_only(capsys):
    """torch.compile(mode="reduce-overhead") differs from the compile peer by its CUDA graphs alone: listed at CUDA
    points (forward and train), left out of CPU points, and asked for on the CPU it is a one-line error."""
    for mode in ("forward", "train"):
        assert "compile-ro" in peers.available(peers.Point((4, 5, 3), 2, mode, torch.device("cuda")))
        assert "compile-ro" not in peers.available(peers.Point((4, 5, 3), 2, mode, torch.device("cpu")))
        assert "compile" in peers.available(peers.Point((4, 5, 3), 2, mode, torch.device("cpu")))
    assert cli.main(["--device", "cpu", "--impls", "compile-ro", "--idle-wait", "0"]) == 2
    assert "compile-ro runs on CUDA only" in capsys.readouterr().err


def test_each_point_with_a_compiled_peer_compiles_afresh(monkeypatch):
    """torch._dynamo.reset() before a point's compiled peers are built (and only then): dynamo's recompile limit
    is never reached across points, where it would silently time eager code as torch.compile."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    built = []

    def build(name, point, stock, x, y, gold):
        built.append((name, len(resets)))
        return peers.Runner(lambda: None, stock)

    monkeypatch.setattr(peers, "build", build)
    monkeypatch.setattr(cli, "_check_and_time", lambda *a: ({}, 0))
    point = peers.Point((4, 5, 3), 2, "train", torch.device("cpu"))
    for names in (["eager", "compile"], ["eager", "fastffnn"], ["eager", "compile"]):
        cli.run_point(point, names, None, cli.parse_args(["--seed", "0"]), {}, False, None)
    assert built == [("eager", 1), ("compile", 1), ("eager", 1), ("fastffnn", 1), ("eager", 2), ("compile", 2)]


def test_measure_reports_median_and_iqr_per_function():
    timer = timing.BlockTimer(torch.device("cpu"), 1)
    stats = timing.measure({"a": lambda: None, "b": lambda: sum(range(2000))}, timer, block_s=0.001, blocks=5)
    for s in stats.values():
        assert s.blocks == 5 and s.calls_per_block >= 1 and 0 < s.q1 <= s.median <= s.q3
    assert stats["b"].median > stats["a"].median


def test_bad_options_give_a_one_line_error(capsys):
    assert cli.main(["--impls", "eager,nope", "--idle-wait", "0"]) == 2
    assert "unknown implementations ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--shapes", "300x100"])


def test_python_m_fastffnn_bench_help():
    proc = subprocess.run([sys.executable, "-m", "fastffnn", "bench", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--quick", "--smoke", "--shapes", "--batches", "--modes", "--device", "--csv", "--plot"):
        assert flag in proc.stdout


def test_tiers_time_each_fastffnn_implementation_once_per_tier(monkeypatch):
    # The CUDA tier comparison of gpu_check.sh, run here through the CPU build:
    # each FastFFNN implementation once per tier, the tier set before every
    # timed block (and the check), and the user's setting restored afterwards.
    from fastffnn import tier as tier_mod

    assert peers.with_tiers(["eager", "fastffnn", "fastffnn+fused"], ["general", "fused"]) == [
        "eager", "fastffnn[general]", "fastffnn[fused]", "fastffnn+fused[general]", "fastffnn+fused[fused]"]
    assert peers.split_tier("fastffnn+fused[fused]") == ("fastffnn+fused", "fused")
    assert peers.split_tier("eager") == ("eager", None)

    seen = []
    real_measure = timing.measure

    def recording_fn(name, fn):
        def call():
            seen.append((name, tier_mod.cuda_tier()))
            return fn()
        return call

    def measure(fns, timer, block_s, blocks, warmup=2, setups=None):
        return real_measure({n: recording_fn(n, f) for n, f in fns.items()}, timer, block_s, blocks, warmup, setups)

    monkeypatch.setattr(timing, "measure", measure)
    before = tier_mod.set_cuda_tier("auto")
    try:
        point = peers.Point((8, 6, 3), 4, "train", torch.device("cpu"))
        args = cli.parse_args(["--block-s", "0.0005", "--blocks", "3"])
        names = peers.with_tiers(["eager", "fastffnn", "fastffnn+fused"], ["general", "fused"])
        rows, failed = cli.run_point(point, names, timing.BlockTimer(point.device, 1), args, {}, False, None)
        assert failed == 0
        assert {r["impl"] for r in rows} == set(names)
        for name, tier in seen:
            if name != "eager":  # stock PyTorch runs in whichever tier was last set: it has none
                assert tier == peers.split_tier(name)[1], (name, tier)
        assert {n for n, _ in seen} == set(names)
        assert tier_mod.cuda_tier() == "auto"
    finally:
        tier_mod.set_cuda_tier(before)


def test_tiers_need_cuda(capsys):
    assert cli.main(["--device", "cpu", "--tiers", "general", "--idle-wait", "0"]) == 2
    assert "--tiers" in capsys.readouterr().err


def test_a_deep_shape_times_fastmlp_against_the_stock_sequential(tmp_path, capsys):
    out_csv = tmp_path / "deep.csv"
    rc = cli.main(["--shapes", "20x16x12x3", "--batches", "1,8", "--modes", "forward,train",
                   "--impls", "eager,fastffnn,fastffnn+fused,fastffnn-step,fastffnn-fit", "--block-s", "0.002", "--blocks", "2",
                   "--idle-wait", "0", "--skip", "compile", "--csv", str(out_csv)])
    assert rc == 0, capsys.readouterr()
    rows = list(csv.DictReader(out_csv.open()))
    assert {r["shape"] for r in rows} == {"20,16,12,3"}
    assert {r["impl"] for r in rows if r["mode"] == "train"} == {"eager", "fastffnn", "fastffnn+fused",
                                                                  "fastffnn-step", "fastffnn-fit"}


def test_a_wrong_deep_model_is_not_timed(monkeypatch, capsys):
    _plant_a_bug(monkeypatch, "fastffnn-step", lambda m: m[2].weight.mul_(-1))  # the middle layer
    rc = cli.main(["--shapes", "20x16x12x3", "--batches", "8", "--modes", "train", "--impls", "eager,fastffnn-step",
                   "--block-s", "0.002", "--blocks", "2", "--idle-wait", "0", "--skip", "compile"])
    assert rc == 1 and "NOT timed" in capsys.readouterr().err


def test_a_fit_that_does_not_train_is_not_timed(monkeypatch, capsys):
    """fastffnn-fit is checked through its one-step call: a fit that leaves the weights alone is refused."""
    real_build = peers.build

    def build(name, point, stock, x, y, gold):
        runner = real_build(name, point, stock, x, y, gold)
        if name == "fastffnn-fit":
            runner.extra["check_fn"] = lambda: None
        return runner

    monkeypatch.setattr(peers, "build", build)
    rc = cli.main(["--shapes", "20x16x3", "--batches", "1", "--modes", "train", "--impls", "eager,fastffnn-fit",
                   "--block-s", "0.002", "--blocks", "2", "--idle-wait", "0", "--skip", "compile"])
    assert rc == 1 and "fastffnn-fit" in capsys.readouterr().err


def test_fit_rows_per_call_stay_bounded():
    # fastffnn-fit repeats the batch fit_steps(batch) times in memory: at most 16,384 rows, or one batch
    from fastffnn.bench.peers import fit_steps
    for batch in (1, 2, 7, 32, 200, 1024, 16384, 65536):
        steps = fit_steps(batch)
        assert 1 <= steps <= 1024 and steps * batch <= max(16384, batch)
    assert fit_steps(1) == 1024 and fit_steps(65536) == 1
