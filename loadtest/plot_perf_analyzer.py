#!/usr/bin/env python3
"""Plot perf_analyzer CSVs (its -f output): throughput vs p50/p99 latency, one line per file.

    python3 -m loadtest.plot_perf_analyzer out/perf_analyzer_5s.csv other.csv --out pa.png
"""
import argparse
import csv
import os


def read(path):
    rows = list(csv.DictReader(open(path)))
    rows.sort(key=lambda r: int(r["Concurrency"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csvs", nargs="+")
    p.add_argument("--labels", help="comma-separated labels (default: file names)")
    p.add_argument("--out", default="perf_analyzer.png")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = a.labels.split(",") if a.labels else [os.path.basename(c)[:-4] for c in a.csvs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (path, label) in enumerate(zip(a.csvs, labels)):
        rows = read(path)
        thr = [float(r["Inferences/Second"]) for r in rows]
        for q, style in (("p50 latency", "-o"), ("p99 latency", "--s")):
            ax.plot(thr, [float(r[q]) / 1000 for r in rows], style, color=f"C{i}", label=f"{label} {q[:3]}")
        for r, x in zip(rows, thr):
            ax.annotate(r["Concurrency"], (x, float(r["p99 latency"]) / 1000), fontsize=7)
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("perf_analyzer (labels: concurrency)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
