#!/usr/bin/env python3
"""Several perf_analyzer runs (its -f CSVs) on one plot: throughput against p99 latency, one
line per run with a point per concurrency (labelled), the 150 ms p99 target as a line.

    .venv/bin/python -m benchmarks.plot_pa_runs --out pa.png \\
        "new=benchmarks/results/h200_2026-12-02/fused_ab/pa_5s_new.csv" \\
        "6623f55=benchmarks/results/h200_2026-12-02/fused_ab/pa_5s_old.csv"
"""
import argparse
import csv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=CSV (perf_analyzer -f output)")
    p.add_argument("--out", required=True)
    p.add_argument("--target-ms", type=float, default=150.0)
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, run in enumerate(a.runs):
        label, path = run.split("=", 1)
        with open(path) as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["Concurrency"]))
        tput = [float(r["Inferences/Second"]) for r in rows]
        p99 = [float(r["p99 latency"]) / 1e3 for r in rows]
        ax.plot(p99, tput, "o-", color=f"C{k}", label=label)
        for r, x, y in zip(rows, p99, tput):
            ax.annotate(f"c{r['Concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(a.target_ms, color="grey", ls=":", lw=1, label=f"target p99 {a.target_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (infer/s)")
    if a.title:
        ax.set_title(a.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(a.out)


if __name__ == "__main__":
    main()
