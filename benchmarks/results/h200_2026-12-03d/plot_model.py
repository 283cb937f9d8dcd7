"""Draws the model-level table of session 21's one run (call1/bench.csv: torch_cuda, two
rounds; call1/peer.jsonl: WeNet v2.2.1's own eager code, fp32 and fp16 autocast, same machine):
audio seconds per second (encoder + decoder) per shape, log scale, and the speed-up over WeNet
eager fp16. `.venv/bin/python benchmarks/results/h200_2026-12-03d/plot_model.py`"""
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ours = {}
for r in csv.DictReader(open(os.path.join(HERE, "call1", "bench.csv"))):
    if r["variant"].startswith("default"):
        ours.setdefault((int(r["batch"]), float(r["seconds"])), []).append(float(r["audio_s_per_s"]))
peer = {}
for line in open(os.path.join(HERE, "call1", "peer.jsonl")):
    r = json.loads(line)
    peer[(r["engine"], int(r["batch"]), float(r["seconds"]))] = r["audio_s_per_s"]
shapes = sorted(s for s in ours if ("wenet_eager_fp16", *s) in peer)
labels = [f"{b} x {s:g} s" for b, s in shapes]
series = [("torch_cuda (this project, fp16)", [max(ours[s]) for s in shapes], "tab:blue"),
          ("WeNet v2.2.1 eager fp16 autocast", [peer[("wenet_eager_fp16", *s)] for s in shapes], "tab:orange"),
          ("WeNet v2.2.1 eager fp32", [peer[("wenet_eager_fp32", *s)] for s in shapes], "tab:gray")]
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
w = 0.27
for k, (name, ys, color) in enumerate(series):
    ax.bar([i + (k - 1) * w for i in range(len(shapes))], ys, w, label=name, color=color)
ax.set_yscale("log")
ax.set_xticks(range(len(shapes)), labels, rotation=30)
ax.set_ylabel("audio seconds per second (encoder + decoder)")
ax.set_title("AISHELL-1 shape (12 x 256), random weights, one H200")
ax.legend(fontsize=8)
ratio = [a / b for a, b in zip(series[0][1], series[1][1])]
ax2.bar(range(len(shapes)), ratio, color="tab:blue")
for i, v in enumerate(ratio):
    ax2.text(i, v, f"{v:.1f}x", ha="center", va="bottom", fontsize=8)
ax2.set_xticks(range(len(shapes)), labels, rotation=30)
ax2.set_ylabel("speed-up over WeNet eager fp16")
ax2.set_title("same run, same machine (2026-12-03)")
fig.tight_layout()
fig.savefig(os.path.join(HERE, "model_level.png"), dpi=110)
print("wrote", os.path.join(HERE, "model_level.png"))
