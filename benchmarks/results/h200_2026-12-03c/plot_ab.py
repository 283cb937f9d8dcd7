"""Draws call3/bench.csv (the engine A/B of session 20): audio-s/s and the encoder's ms per
variant and round, each relative to the mean of session 19's defaults at that shape. `.venv/bin/python benchmarks/results/h200_2026-12-03c/plot_ab.py`"""
import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CALLS = {"call3": ("s19", {"s19": "session 19 defaults", "new": "+ first conv + CTC head",
                            "fp8": "+ FP8 FFNs"}),
         "call5": ("mv4", {"mv4": "LayerNorm kernels, first form", "mv1": "LayerNorm kernels, fewest vectors"})}
shapes = [("1", "10.0"), ("1", "20.0"), ("64", "10.0"), ("64", "20.0")]
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
for row, (call, (baseline, names)) in enumerate(CALLS.items()):
    rows = list(csv.DictReader(open(os.path.join(HERE, call, "bench.csv"))))
    for k, (key, label) in enumerate([("audio_s_per_s", "audio-s/s (encoder + decoder) / baseline"),
                                      ("enc_ms_p50", "encoder ms (p50) / baseline")]):
        ax = axes[row][k]
        base = {s: sum(float(r[key]) for r in rows if r["variant"] == baseline and (r["batch"], r["seconds"]) == s)
                / sum(1 for r in rows if r["variant"] == baseline and (r["batch"], r["seconds"]) == s)
                for s in shapes}
        for j, v in enumerate(names):
            for rnd, mark in (("1", "o"), ("2", "x")):
                ys = [float(r[key]) / base[s] for s in shapes for r in rows
                      if r["variant"] == v and r["round"] == rnd and (r["batch"], r["seconds"]) == s]
                if ys:
                    ax.scatter([i + 0.2 * (j - 1) for i in range(len(ys))], ys, marker=mark,
                               color=f"C{j}", label=f"{names[v]}, round {rnd}")
        ax.set_xticks(range(len(shapes)), [f"{b} x {float(s):g} s" for b, s in shapes])
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel(label)
        ax.set_title(call)
        ax.grid(True, which="both", alpha=0.3)
    axes[row][0].legend(fontsize=7)
fig.suptitle("AISHELL shape (12 x 256), torch_cuda fp16, one H200, 2026-12-03 (session 20)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "call3", "engine_ab.png"), dpi=110)
