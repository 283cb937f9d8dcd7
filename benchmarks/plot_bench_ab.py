"""Plot an A/B of `wenet-triton bench` runs made in one call on one machine: audio seconds per
second (encoder + decoder) and encoder ms per (batch x seconds) cell, each run a line.

    .venv/bin/python benchmarks/plot_bench_ab.py --out ab.png \\
        ce91acc=old1/bench.csv ce91acc=old2/bench.csv 82a1dd1=new1/bench.csv 82a1dd1=new2/bench.csv

LABEL=PATH pairs; runs with the same label share a colour (repeats of one build)."""
import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _rows(path, engine):
    with open(path) as f:
        return [r for r in csv.DictReader(f) if engine == "any" or r["engine"] == engine]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=bench.csv")
    p.add_argument("--engine", default="torch_cuda", help="rows of this engine; 'any': every row of each CSV "
                   "(one engine per CSV, e.g. an A/B of two engine variants)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="torch_cuda engine, A/B on one H200")
    a = p.parse_args(argv)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colours = {}
    for spec in a.runs:
        label, path = spec.split("=", 1)
        rows = _rows(path, a.engine)
        if not rows:
            raise SystemExit(f"{path}: no rows for engine {a.engine}")
        cells = [f"{int(r['batch'])}x{float(r['seconds']):g}s" for r in rows]
        first = label not in colours
        c = colours.setdefault(label, f"C{len(colours)}")
        kw = dict(color=c, marker="o", alpha=0.8, label=label if first else "_")
        axes[0].plot(cells, [float(r["audio_s_per_s"]) for r in rows], **kw)
        axes[1].plot(cells, [float(r["enc_ms_p50"]) for r in rows], **kw)
    axes[0].set_ylabel("audio s per s (encoder + decoder)")
    axes[1].set_ylabel("encoder ms (p50)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("batch x audio")
        ax.tick_params(axis="x", rotation=60)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
