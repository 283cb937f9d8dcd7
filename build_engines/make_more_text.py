"""More training sentences from the same distribution as ../shared/synth's text lists.

The shared lists are random word strings drawn from jieba's dictionary (all-CJK words of
frequency >= 20 whose characters are in the 3000-character unit set, weights freq^0.6,
3-12 words, at most 30 characters). This draws new ones with another seed, leaving out any
sentence of the dev or test lists, so the attention decoder sees more of the word list.
Needs jieba's dict.txt (the `jieba` package on PyPI ships it).

  python build_engines/make_more_text.py --dict dict.txt --units ../shared/synth/units.txt \
      --exclude ../shared/synth/dev.txt ../shared/synth/test.txt --num 150000 --out more.txt
"""
from __future__ import annotations

import argparse
import random


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dict", required=True, help="jieba dict.txt (word freq pos)")
    ap.add_argument("--units", required=True)
    ap.add_argument("--exclude", nargs="*", default=[], help="text lists whose sentences to leave out")
    ap.add_argument("--num", type=int, default=150000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--prefix", default="more")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    chars = {line.split()[0] for line in open(a.units, encoding="utf-8")}
    words, weights = [], []
    for line in open(a.dict, encoding="utf-8"):
        w, f, _ = line.split()
        if int(f) >= 20 and all("\u4e00" <= c <= "\u9fff" and c in chars for c in w):
            words.append(w)
            weights.append(int(f) ** 0.6)
    seen = {line.rstrip("\n").split(" ", 1)[1] for p in a.exclude for line in open(p, encoding="utf-8")}
    rng = random.Random(a.seed)
    n = 0
    with open(a.out, "w", encoding="utf-8") as f:
        while n < a.num:
            s = "".join(rng.choices(words, weights=weights, k=rng.randint(3, 12)))[:30]
            if s in seen:
                continue
            f.write(f"{a.prefix}_{n:06d} {s}\n")
            n += 1
    print(f"{len(words)} words; wrote {n} sentences to {a.out}")


if __name__ == "__main__":
    main()
