"""Plot the demo model's training curves (dev greedy CER and losses over GPU minutes) from
train_log.jsonl files of successive stages (each stage goes on from the previous model).

  python build_engines/plot_demo_training.py build_engines/results/demo_train/stage1 \
      build_engines/results/demo_train/stage2 --out models/demo_zh_synth/training.png
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="dirs with train_log.jsonl, in training order")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0.0
    for i, d in enumerate(a.stages, 1):
        recs = [json.loads(line) for line in open(os.path.join(d, "train_log.jsonl"))]
        t = [offset + r["elapsed_s"] / 60 for r in recs]
        ax1.plot(t, [100 * r["dev_greedy_cer"] for r in recs], marker=".", label=f"stage {i}")
        for key, style in (("ctc", "-"), ("att", "--")):
            ax2.plot(t, [r[key] for r in recs], style, label=f"stage {i} {key}")
        offset = t[-1]
    ax1.set(xlabel="training minutes on one H200", ylabel="dev CER, CTC greedy (%)",
            title="dev greedy CER")
    ax2.set(xlabel="training minutes on one H200", ylabel="loss per utterance", yscale="log",
            title="training loss (CTC, attention)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
