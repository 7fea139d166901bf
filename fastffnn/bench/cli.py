"""``python -m fastffnn bench``: the options, and the loop over shapes, batches and modes."""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from .. import __version__
from .._runtime import ensure_loaded
from . import peers, report, timing

SHAPES = [(300, 100, 2), (300, 300, 5), (784, 256, 10), (1024, 1024, 16), (4096, 4096, 1000)]
BATCHES = [1, 32, 1024, 16384]
GPU_BATCHES = BATCHES + [65536]

DEFAULTS = dict(shapes=None, batches=None, block_s=0.1, blocks=7, idle_wait=30.0, skip="")
QUICK = dict(shapes="300x100x2,784x256x10", batches="1,32,1024", block_s=0.02, blocks=3, idle_wait=2.0,
             skip="compile,compile-ro")
SMOKE = dict(shapes="300x100x2", batches="1,32", block_s=0.002, blocks=2, idle_wait=0.0,
             skip="compile,compile-ro")

USAGE = """
examples:
  python -m fastffnn bench --quick                      # under a minute: two shapes, no torch.compile
  python -m fastffnn bench --threads 2 --csv r.csv --plot r.png
  python -m fastffnn bench --shapes 300x100x2 --batches 1,32 --modes train --impls eager,fastffnn-step
  python -m fastffnn bench --device cuda                # CUDA events; adds batch 65536
  python -m fastffnn bench --device cuda --tiers general,fused --quick   # both CUDA tiers (gpu_check.sh)
  python -m fastffnn bench --sklearn --threads 2 --csv sk.csv --plot sk.png  # against scikit-learn's MLPClassifier
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fastffnn bench", description=__doc__ + "\n\n" + (peers.__doc__ or ""),
                                epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--shapes", default=None, help="comma-separated INxHIDxOUT (default: the five issue shapes); "
                   "more hidden widths, such as 784x256x256x10, time FastMLP against the stock nn.Sequential")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes; 1 is a 1-D input "
                   "(default 1,32,1024,16384, plus 65536 on a GPU)")
    p.add_argument("--modes", default=",".join(peers.MODES),
                   help="any of " + ", ".join(peers.MODES) + " (default all; see the modes above)")
    p.add_argument("--impls", default=None, help=f"comma-separated subset of {peers.STOCK + peers.FAST} "
                   "(default: all that apply; 'eager' is always timed, every ratio needs it)")
    p.add_argument("--skip", default=None, help="implementations to leave out, e.g. compile")
    p.add_argument("--tiers", default="", help="CUDA: time each FastFFNN implementation in each of these "
                   "tiers (general, fused, auto), e.g. general,fused (default: the current tier only)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads (default: torch's, {torch.get_num_threads()} here)")
    p.add_argument("--block-s", type=float, default=None, help="seconds per timed block (default 0.1)")
    p.add_argument("--blocks", type=int, default=None, help="timed blocks per implementation (default 7)")
    p.add_argument("--idle-wait", type=float, default=None,
                   help="seconds to wait for other processes to leave the CPUs before each point (default 30)")
    p.add_argument("--max-gflop", type=float, default=None,
                   help="skip points whose training step needs more GFLOP (default 400 on the CPU, no limit on GPU)")
    p.add_argument("--csv", default=None, help="write one row per point and implementation to this file")
    p.add_argument("--append", action="store_true", help="append to --csv instead of overwriting it")
    p.add_argument("--plot", default=None, help="write a PNG of speedup over eager against batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="two shapes, batches 1-1024, no torch.compile: < 1 minute")
    p.add_argument("--smoke", action="store_true", help="one shape, two batches, a few calls each: checks it runs")
    p.add_argument("--sklearn", action="store_true", help="fastffnn.sklearn.MLPClassifier against scikit-learn's "
                   "on digits and make_classification (its own options: bench --sklearn --help)")
    args = p.parse_args(argv)
    # An option given on the command line wins; else the preset's value; else the default.
    preset = SMOKE if args.smoke else QUICK if args.quick else {}
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    return args


def _parse_list(text: str, what: str, conv, allow_empty: bool = False):
    try:
        values = [conv(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"fastffnn bench: could not read --{what} {text!r}") from None
    if not values and not allow_empty:
        raise SystemExit(f"fastffnn bench: --{what} {text!r} names nothing")
    return values


def _shape(text: str) -> tuple[int, ...]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) < 3 or min(parts) < 1:
        raise ValueError(text)
    return parts  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    if "--sklearn" in (argv if argv is not None else sys.argv[1:]):
        from . import sklearn_bench
        return sklearn_bench.main(argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("fastffnn bench: --device cuda, but torch sees no GPU", file=sys.stderr)
        return 2
    shapes = _parse_list(",".join("x".join(map(str, s)) for s in SHAPES) if args.shapes is None else args.shapes,
                         "shapes", _shape)
    batches = _parse_list(",".join(map(str, GPU_BATCHES if device.type == "cuda" else BATCHES))
                          if args.batches is None else args.batches, "batches", int)
    modes = _parse_list(args.modes, "modes", str)
    if any(b < 1 for b in batches) or not set(modes) <= set(peers.MODES):
        print(f"fastffnn bench: batches must be >= 1 and modes among {', '.join(peers.MODES)}", file=sys.stderr)
        return 2
    wanted = set(_parse_list(args.impls, "impls", str)) if args.impls else None
    skipped = set(_parse_list(args.skip, "skip", str, allow_empty=True))
    unknown = ((wanted or set()) | skipped) - set(peers.STOCK + peers.FAST)
    if unknown:
        print(f"fastffnn bench: unknown implementations {sorted(unknown)}; known: {peers.STOCK + peers.FAST}",
              file=sys.stderr)
        return 2
    cuda_only = sorted((wanted or set()) & set(peers.CUDA_ONLY))
    if cuda_only and device.type != "cuda":
        print(f"fastffnn bench: {', '.join(cuda_only)} runs on CUDA only (its CUDA graphs); this run is on "
              f"{device.type}", file=sys.stderr)
        return 2
    tiers = _parse_list(args.tiers, "tiers", str, allow_empty=True)
    if tiers and (device.type != "cuda" or not set(tiers) <= {"auto", "general", "fused"}):
        print("fastffnn bench: --tiers takes general, fused or auto, and only with --device cuda", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"fastffnn bench: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    max_gflop = args.max_gflop if args.max_gflop is not None else (400.0 if device.type == "cpu" else float("inf"))
    ensure_loaded()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # every implementation computes in full FP32

    name = timing.device_name(device)
    meta = {"device": device.type, "device_name": name, "threads": threads if device.type == "cpu" else "",
            "torch": torch.__version__, "fastffnn": __version__, "python": platform.python_version(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"fastffnn {__version__} bench on {name} ({device.type}"
          f"{f', {threads} threads' if device.type == 'cpu' else ''}), torch {torch.__version__}, "
          f"{meta['timestamp']}")
    print(f"median and IQR over {args.blocks} interleaved blocks of >= {args.block_s} s; "
          f"'x peer' = peer time / this time (higher is faster); noisy = IQR > "
          f"{timing.NOISY_IQR:.0%} of the median")
    timer = timing.BlockTimer(device, threads)
    all_rows: list[dict] = []
    failures = 0
    for shape in shapes:
        for batch in batches:
            gflop = 6 * batch * sum(a * b for a, b in zip(shape[:-1], shape[1:])) / 1e9
            if gflop > max_gflop:
                print(f"\n{','.join(map(str, shape)):>14}  batch {batch:<6} skipped: a training step is "
                      f"{gflop:.0f} GFLOP, over --max-gflop {max_gflop:g}")
                continue
            for mode in modes:
                point = peers.Point(shape, batch, mode, device)
                names = peers.with_tiers([n for n in peers.available(point)
                                          if n == "eager" or ((wanted is None or n in wanted) and n not in skipped)],
                                         tiers)
                idle, load = timing.wait_for_idle(args.idle_wait) if device.type == "cpu" else (True, None)
                rows, failed = run_point(point, names, timer, args, meta, not idle, load)
                failures += failed
                if rows:
                    report.print_point(rows)
                    all_rows += rows
                    if args.csv:
                        report.write_csv(args.csv, rows, append=args.append or len(all_rows) > len(rows))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.plot and all_rows:
        title = f"fastffnn {__version__} vs eager PyTorch {torch.__version__}, {name}" + (
            f", {threads} threads" if device.type == "cpu" else "")
        if report.plot(args.plot, all_rows, title):
            print(f"\nplot: {args.plot}")
        else:
            print("\nplot skipped: matplotlib is not installed (pip install matplotlib)")
    if args.csv and all_rows:
        print(f"csv: {args.csv}")
    if failures:
        print(f"\n{failures} implementation(s) disagreed with eager and were not timed", file=sys.stderr)
        return 1
    return 0


def run_point(point, names, timer, args, meta, busy, load):
    """Builds and checks every implementation at one point, then times those that agree with eager."""
    torch.manual_seed(args.seed)
    stock = peers.stock_model(point.shape).to(point.device, point.dtype)
    x, y, gold = point.make_inputs(args.seed)
    initial = [p.detach().clone() for p in stock.parameters()]
    runners, compile_s = {}, {}
    if any(peers.split_tier(n)[0] in peers.COMPILED for n in names):
        # each point compiles afresh, as a loop at one batch size would: no dynamic shapes carried over from the
        # points before, and no recompile limit reached across them (past it, dynamo would run eager code)
        torch._dynamo.reset()
    previous_tier = None
    if any(peers.split_tier(n)[1] for n in names):
        from ..tier import cuda_tier

        previous_tier = cuda_tier()
    try:
        for name in names:
            runners[name] = peers.build(name, point, stock, x, y, gold)
            compile_s[name] = runners[name].compile_s
        stats, failed = _check_and_time(point, names, runners, timer, args, initial)
    finally:
        if previous_tier is not None:
            from ..tier import set_cuda_tier

            set_cuda_tier(previous_tier)
    return report.point_rows(meta, point, stats, compile_s, busy, load), failed


def _check_and_time(point, names, runners, timer, args, initial):
    failed = 0
    reference = runners["eager"]
    for name in names:
        if name == "eager":
            continue
        if runners[name].setup:
            runners[name].setup()
        problem = peers.check(name, runners[name], reference, point, initial)
        if problem:
            print(f"  {name} at {point.shape} batch {point.batch} {point.mode}: NOT timed, disagrees with eager: "
                  f"{problem}", file=sys.stderr)
            del runners[name]
            failed += 1
    stats = timing.measure({n: r.fn for n, r in runners.items()}, timer, args.block_s, args.blocks,
                           setups={n: r.setup for n, r in runners.items() if r.setup})
    for name, runner in runners.items():
        steps = runner.extra.get("steps_per_call", 1)
        if steps != 1:  # fit: several steps per call, reported per step
            st = stats[name]
            stats[name] = timing.Stats(st.median / steps, st.q1 / steps, st.q3 / steps, st.blocks,
                                       st.calls_per_block * steps)
    return stats, failed
