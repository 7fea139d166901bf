"""The benchmark's outputs: a readable table, CSV rows tagged with where and when, and a PNG plot."""

from __future__ import annotations

import csv
import os
from typing import Iterable

from .peers import STOCK
from .timing import Stats


def peer_medians(stats: dict[str, Stats]) -> dict[str, float]:
    """The median seconds per call of each stock peer timed at this point."""
    return {peer: stats[peer].median for peer in STOCK if peer in stats}


def point_rows(meta: dict, point, stats: dict[str, Stats], compile_s: dict[str, float], busy: bool,
               load: float | None) -> list[dict]:
    """The CSV rows of one point: one per implementation, with its speedup over every stock peer."""
    peers = peer_medians(stats)
    rows = []
    for name, s in stats.items():
        row = dict(meta)
        row.update({
            "shape": ",".join(map(str, point.shape)), "batch": point.batch, "mode": point.mode,
            "dtype": str(point.dtype).replace("torch.", ""), "impl": name,
            "median_us": round(s.median * 1e6, 3), "q1_us": round(s.q1 * 1e6, 3), "q3_us": round(s.q3 * 1e6, 3),
            "iqr_us": round(s.iqr * 1e6, 3), "examples_per_s": round(point.batch / s.median, 1),
            "blocks": s.blocks, "calls_per_block": s.calls_per_block, "noisy": int(s.noisy),
            "machine_busy": int(busy), "others_load": "" if load is None else round(load, 3),
            "compile_s": "" if compile_s.get(name) is None else round(compile_s[name], 3),
        })
        for peer in STOCK:
            row[f"x_{peer}"] = round(peers[peer] / s.median, 4) if peer in peers else ""
        rows.append(row)
    return rows


def print_point(rows: list[dict], out=None) -> None:
    """The table of one point: µs per call, IQR, examples/s and the speedup over each stock peer."""
    import sys

    out = out or sys.stdout
    first = rows[0]
    flags = " (machine busy: timings may be off)" if first["machine_busy"] else ""
    print(f"\n{first['shape']:>14}  batch {first['batch']:<6} {first['mode']:<8}{flags}", file=out)
    peers = [p for p in STOCK if first.get(f"x_{p}") != ""]
    head = f"  {'implementation':<16}{'median µs':>12}{'IQR µs':>10}{'examples/s':>13}"
    head += "".join(f"{'x ' + p:>17}" for p in peers) + "  notes"
    print(head, file=out)
    for r in rows:
        line = f"  {r['impl']:<16}{r['median_us']:>12.1f}{r['iqr_us']:>10.1f}{r['examples_per_s']:>13.0f}"
        line += "".join(f"{r[f'x_{p}']:>17.2f}" for p in peers)
        notes = []
        if r["noisy"]:
            notes.append("noisy")
        if r["compile_s"] != "":
            notes.append(f"compile {r['compile_s']:.1f} s")
        print(line + ("  " + ", ".join(notes) if notes else ""), file=out)
    out.flush()


def write_csv(path: str, rows: Iterable[dict], append: bool = False) -> None:
    rows = list(rows)
    if not rows:
        return
    fields = list(rows[0])
    exists = append and os.path.exists(path) and os.path.getsize(path) > 0
    with open(path, "a" if exists else "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if not exists:
            w.writeheader()
        w.writerows(rows)


def plot(path: str, rows: list[dict], title: str) -> bool:
    """Speedup over eager against batch size, one panel per shape; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    ncols = min(3, len(shapes))
    nrows = -(-len(shapes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows + 1.0), squeeze=False, sharey=True)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(shapes):]:
        ax.set_visible(False)
    for ax, shape in zip(flat, shapes):
        lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in rows:
            if r["shape"] == shape and r["impl"] != "eager" and r["x_eager"] != "":
                lines.setdefault((r["impl"], r["mode"]), []).append((int(r["batch"]), float(r["x_eager"])))
        for (impl, mode), pts in sorted(lines.items()):
            pts.sort()
            style = "-" if mode == "train" else "--"
            marker = "o" if impl.startswith("fastffnn") else "x"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker, label=f"{impl} ({mode})",
                    alpha=1.0 if impl.startswith("fastffnn") else 0.5)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"({shape})")
        ax.set_xlabel("batch")
        ax.grid(True, which="both", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("× eager (higher is faster)")
    handles, labels = flat[0].get_legend_handles_labels()
    for ax in flat[1:len(shapes)]:
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.9 / (3.4 * nrows + 1.0) + 0.04, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
