"""Session 24's plots from this folder's CSVs (run from the repository root):
    .venv/bin/python benchmarks/results/h200_2026-12-04c/plot_session.py
served.png: throughput vs p99 of every served point (perf_analyzer's CSVs, calls B and D);
first_requests.png: the slowest of each wave of first requests after a start, warm-up at load
vs captures on first use (calls D, E, F)."""
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
POINTS = [  # (label, csv, marker): 5 s unless the label says otherwise
    ("B front 5 s c256 (first 5 s run)", "callB/len/perf_analyzer_5s.csv", "o"),
    ("B front 5 s c384/448", "callB/c5/perf_analyzer_5s.csv", "o"),
    ("B front, gRPC streams c448", "callB/s5/perf_analyzer_5s.csv", "s"),
    ("B direct c448", "callB/d5/perf_analyzer_5s.csv", "^"),
    ("D front 5 s c512", "callD/c5/perf_analyzer_5s.csv", "o"),
    ("D front, gRPC streams c512", "callD/s5/perf_analyzer_5s.csv", "s"),
    ("D direct c512", "callD/d5/perf_analyzer_5s.csv", "^"),
    ("B 2 s c256", "callB/len/perf_analyzer_2s.csv", "x"),
    ("B 10 s c256", "callB/len/perf_analyzer_10s.csv", "x"),
    ("D 20 s c256", "callD/l20/perf_analyzer_20s.csv", "x"),
]


def rows(path):
    with open(os.path.join(HERE, path)) as f:
        return list(csv.DictReader(f))


def served(ax):
    for label, path, marker in POINTS:
        r = rows(path)
        x = [float(v["p99 latency"]) / 1000 for v in r]
        y = [float(v["Inferences/Second"]) for v in r]
        ax.plot(x, y, marker=marker, linestyle="-" if len(r) > 1 else "", label=label)
    ax.axhline(5000, color="grey", lw=0.8, ls="--")
    ax.axvline(150, color="grey", lw=0.8, ls="--")
    ax.text(152, 5050, "target: >= 5,000 infer/s at p99 <= 150 ms (5 s)", fontsize=7, color="grey")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("infer/s (one utterance per request)")
    ax.set_title("served, GPU default, demo model + LM, beam 20 (H200, 2026-12-04)", fontsize=9)
    ax.legend(fontsize=6.5, loc="lower right")
    ax.grid(alpha=0.3)


def first(ax):
    runs = [("D", "callD/first_requests.csv"), ("E", "callE/first_requests.csv"), ("F", "callF/first_requests.csv")]
    bars, labels = [], []
    for call, path in runs:
        for r in rows(path):
            warm = r["label"].startswith("warm")
            bars.append((call, warm, f"{r['requests']}x{float(r['seconds']):g}s", float(r["max_ms"])))
    waves = list(dict.fromkeys(b[2] for b in bars))
    groups = [(c, w) for c in ("D", "E", "F") for w in (True, False)]
    width = 0.8 / len(groups)
    for gi, (c, w) in enumerate(groups):
        ys = [next(b[3] for b in bars if b[0] == c and b[1] == w and b[2] == wave) for wave in waves]
        ax.bar([i + gi * width for i in range(len(waves))], ys, width,
               label=f"call {c}, {'warm-up at load' if w else 'captures on first use'}",
               hatch="" if w else "//", alpha=0.85)
        labels = waves
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
    ax.set_xlabel("wave (requests x seconds), in order after the start")
    ax.set_ylabel("slowest request of the wave (ms)")
    ax.set_yscale("log")
    ax.set_title("first requests after a start (D, F: first server on a fresh machine compiles kernels)", fontsize=9)
    ax.legend(fontsize=6.5)
    ax.grid(alpha=0.3, axis="y")


for name, fn in (("served.png", served), ("first_requests.png", first)):
    fig, ax = plt.subplots(figsize=(8, 5))
    fn(ax)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, name), dpi=110)
    print("wrote", os.path.join(HERE, name))
