#!/usr/bin/env python3
"""Several stream sweeps (loadtest.stream_sweep CSVs) on one plot: chunk latency p99 against
concurrent real-time streams, a filled marker where no stream fell behind, an open one where
some did; the 150 ms target as a line.

    .venv/bin/python -m benchmarks.plot_stream_runs --out streams.png \
        "morning=benchmarks/results/h200_2026-12-01/streaming_640ms/stream_sweep.csv" \
        "afternoon=benchmarks/results/h200_2026-12-01b/served_streams_v2/streams_640ms/stream_sweep.csv"
"""
import argparse
import csv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=CSV")
    p.add_argument("--out", required=True)
    p.add_argument("--target-ms", type=float, default=150.0)
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts = set()
    for k, run in enumerate(a.runs):
        label, path = run.split("=", 1)
        rows = list(csv.DictReader(open(path)))
        n = [int(r["streams"]) for r in rows]
        counts.update(n)
        p99 = [float(r["chunk_p99_ms"]) for r in rows]
        ok = [int(r["behind"]) == 0 and int(r["failed"]) == 0 for r in rows]
        color = f"C{k}"
        ax.plot(n, p99, "-", color=color, label=f"{label} ({rows[0]['chunk_ms'].rstrip('0').rstrip('.')} ms chunks)")
        ax.scatter([x for x, g in zip(n, ok) if g], [y for y, g in zip(p99, ok) if g], color=color, zorder=3)
        ax.scatter([x for x, g in zip(n, ok) if not g], [y for y, g in zip(p99, ok) if not g],
                   facecolors="none", edgecolors=color, zorder=3)
    ax.axhline(a.target_ms, color="grey", ls=":", lw=1, label=f"target p99 {a.target_ms:g} ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(counts), [str(c) for c in sorted(counts)])  # a narrow range has no power of 2
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("concurrent real-time streams (open marker: some fell behind real time)")
    ax.set_ylabel("chunk latency p99 (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(a.out)


if __name__ == "__main__":
    main()
