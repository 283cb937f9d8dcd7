#!/usr/bin/env python3
"""Pick the LM weights of a model's decoding.yaml on held-out audio: CER of the first pass
(prefix beam + LM) and of attention rescoring over a grid of search weight x rescoring
weight, through the onnxruntime export. Writes a CSV and a heatmap; prints the best pair.

Dev audio for the demo model (400 sentences of ../shared/synth/dev.txt, espeak-ng):
    head -400 ../shared/synth/dev.txt > /tmp/dev400.txt
    python ../shared/synth/gen.py system /tmp/dev400.txt /tmp/dev400 --wav --jobs 2
    python recipes/demo_zh_synth/tune_lm_weights.py --wav-dir /tmp/dev400 --out recipes/demo_zh_synth/results/lm
"""
import argparse
import csv
import glob
import os
import sys

import numpy as np

from wenet_triton import artifacts, decoding, engines
from wenet_triton.audio.frontend import pad_feats, read_audio
from wenet_triton.cli import default_model_dir
from wenet_triton.decode.cer import cer, read_text
from wenet_triton.decode.search import pick_rescored, rescoring_inputs
from wenet_triton.decode.vocab import Vocab
from wenet_triton.pipeline import Recognizer, search_batch


def floats(s):
    return [float(x) for x in s.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_dir())
    p.add_argument("--wav-dir", required=True, help="wavs and their Kaldi `text`")
    p.add_argument("--lm", default=None, help="ARPA LM (default: the model's decoding.yaml)")
    p.add_argument("--beam", type=int, default=None, help="default: decoding.yaml")
    p.add_argument("--search-weights", type=floats, default=floats("0.4,0.6,0.8,1.0"))
    p.add_argument("--rescore-weights", type=floats, default=floats("0,0.2,0.4,0.6,0.8,1.0,1.3"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default="lm_weights")
    a = p.parse_args()
    dec = decoding.resolve(a.model, beam_size=a.beam, lm=a.lm)
    if not dec.lm:
        sys.exit("no LM: give --lm or a model with one in decoding.yaml")
    d = artifacts.ensure_export(a.model, None, dec.beam_size)
    eng = engines.open_engine(d, "onnxruntime")
    s = eng.settings
    rec = Recognizer(eng, Vocab.from_engine_dir(d, s), decoding=dec)
    ref = read_text(os.path.join(a.wav_dir, "text"))
    files = sorted(f for f in glob.glob(os.path.join(a.wav_dir, "*.wav"))
                   if os.path.basename(f)[:-4] in ref)
    refs = [ref[os.path.basename(f)[:-4]] for f in files]
    print(f"{len(files)} utterances, beam {dec.beam_size}, LM {dec.lm}", file=sys.stderr)
    encs = []  # encoder outputs per batch, computed once
    for i in range(0, len(files), a.batch):
        x, lens = pad_feats([rec.fbank(read_audio(f)) for f in files[i:i + a.batch]])
        encs.append(eng.encode(x, lens))
    rows = []
    for sw in a.search_weights:
        nbest, scores, best = [], [], []
        for enc in encs:
            nb = search_batch(enc, dec.beam_size, s.blank, rec.lm, sw, dec.length_bonus)
            pad, hl, rpad, ctc = rescoring_inputs(nb, dec.beam_size, s.sos, s.eos)
            bi, sc = eng.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, hl, rpad, ctc)
            nbest += nb
            scores += list(sc)
            best += [int(i) for i in bi]
        first = cer(zip(refs, (rec.vocab.text(h[0][0]) for h in nbest)))[0]
        for rw in a.rescore_weights:
            hyps = [rec.vocab.text(h[pick_rescored(h, sc, bi, rw)][0])
                    for h, sc, bi in zip(nbest, scores, best)]
            rows.append({"search_weight": sw, "rescore_weight": rw, "first_pass_cer": first,
                         "rescoring_cer": cer(zip(refs, hyps))[0]})
        print(f"search weight {sw}: first pass {first:.2%}, rescoring "
              + " ".join(f"{r['rescore_weight']:g}:{r['rescoring_cer']:.2%}"
                         for r in rows if r["search_weight"] == sw), file=sys.stderr)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "lm_weights.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, a.search_weights, a.rescore_weights, os.path.join(a.out, "lm_weights.png"),
          f"{os.path.basename(os.path.normpath(a.model))}, {len(files)} utts, beam {dec.beam_size}")
    best = min(rows, key=lambda r: r["rescoring_cer"])
    print(f"best: lm_weight {best['search_weight']:g}, lm_rescore_weight {best['rescore_weight']:g}: "
          f"rescoring CER {best['rescoring_cer']:.2%} (first pass {best['first_pass_cer']:.2%}); "
          f"wrote {a.out}/lm_weights.csv, lm_weights.png")


def _plot(rows, sws, rws, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array([[next(r["rescoring_cer"] for r in rows if r["search_weight"] == sw
                           and r["rescore_weight"] == rw) * 100 for rw in rws] for sw in sws])
    fig, ax = plt.subplots(figsize=(1.1 * len(rws) + 2, 0.7 * len(sws) + 1.8))
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    for i in range(len(sws)):
        for j in range(len(rws)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] > grid.mean() else "black")
    ax.set_xticks(range(len(rws)), [f"{x:g}" for x in rws])
    ax.set_yticks(range(len(sws)), [f"{x:g}" for x in sws])
    ax.set_xlabel("lm_rescore_weight")
    ax.set_ylabel("lm_weight (search)")
    ax.set_title(f"attention rescoring CER %: {title}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
