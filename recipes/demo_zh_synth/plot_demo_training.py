"""Plot the demo model's training curves (dev greedy CER and losses over GPU minutes) from
train_log.jsonl files of successive stages (each stage goes on from the previous model).

  R=recipes/demo_zh_synth/results
  python recipes/demo_zh_synth/plot_demo_training.py $R/stage1 $R/stage2 $R/stage3/{a,b,c,d,e,f} \
      --labels 1 2 "3a (machine lost)" 3b 3c 3d 3e 3f --out models/demo_zh_synth/training.png
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="dirs with train_log.jsonl, in training order")
    ap.add_argument("--labels", nargs="*", help="one per dir (default: stage 1, 2, ...)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    offset = 0.0
    labels = a.labels or [f"stage {i}" for i in range(1, len(a.stages) + 1)]
    for label, d in zip(labels, a.stages):
        recs = [json.loads(line) for line in open(os.path.join(d, "train_log.jsonl"))]
        t = [offset + r["elapsed_s"] / 60 for r in recs]
        color = ax1.plot(t, [100 * r["dev_greedy_cer"] for r in recs], marker=".", label=label)[0].get_color()
        for key, style in (("ctc", "-"), ("att", "--")):
            ax2.plot(t, [r[key] for r in recs], style, color=color, label=f"{label} {key}" if key == "ctc" else None)
        offset = t[-1]
    ax1.set(xlabel="training minutes on one H200", ylabel="dev CER, CTC greedy (%)",
            title="dev greedy CER")
    ax2.set(xlabel="training minutes on one H200", ylabel="loss per utterance", yscale="log",
            title="training loss (CTC solid, attention dashed)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
