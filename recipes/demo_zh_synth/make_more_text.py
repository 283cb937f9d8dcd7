"""More training sentences from the same distribution as ../shared/synth's text lists.

The shared lists are random word strings drawn from jieba's dictionary (all-CJK words of
frequency >= 20 whose characters are in the 3000-character unit set, weights freq^0.6,
3-12 words, at most 30 characters). This draws new ones with another seed, leaving out any
sentence of the dev or test lists, so the attention decoder sees more of the word list.
Needs jieba's dict.txt (the `jieba` package on PyPI ships it).

  python recipes/demo_zh_synth/make_more_text.py --dict dict.txt --units ../shared/synth/units.txt \
      --exclude ../shared/synth/dev.txt ../shared/synth/test.txt --num 150000 --out more.txt \
      --words-out words.txt   # the word list with weights, for composed sentences
Later (no dict.txt needed): --words words.txt instead of --dict/--units.
"""
from __future__ import annotations

import argparse
import itertools
import random


def load_words(dict_path, units_path):
    """The shared lists' word distribution: (words, weights) from jieba's dict.txt."""
    chars = {line.split()[0] for line in open(units_path, encoding="utf-8")}
    words, weights = [], []
    for line in open(dict_path, encoding="utf-8"):
        w, f, _ = line.split()
        if int(f) >= 20 and all("\u4e00" <= c <= "\u9fff" and c in chars for c in w):
            words.append(w)
            weights.append(int(f) ** 0.6)
    return words, weights


def read_words(path):
    """(words, weights) from a list written by --words-out."""
    pairs = [line.split() for line in open(path, encoding="utf-8")]
    return [w for w, _ in pairs], [float(x) for _, x in pairs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dict", help="jieba dict.txt (word freq pos)")
    ap.add_argument("--units")
    ap.add_argument("--words", help="instead of --dict/--units: a list written by --words-out")
    ap.add_argument("--exclude", nargs="*", default=[], help="text lists whose sentences to leave out")
    ap.add_argument("--num", type=int, default=150000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--prefix", default="more")
    ap.add_argument("--out", required=True)
    ap.add_argument("--words-out", help="also write the word list with its weights (word weight per line)")
    a = ap.parse_args(argv)
    if a.words:
        words, weights = read_words(a.words)
    elif a.dict and a.units:
        words, weights = load_words(a.dict, a.units)
    else:
        ap.error("give --dict and --units, or --words")
    if a.words_out:
        with open(a.words_out, "w", encoding="utf-8") as f:
            f.writelines(f"{w} {x!r}\n" for w, x in zip(words, weights))
    seen = {line.rstrip("\n").split(" ", 1)[1] for p in a.exclude for line in open(p, encoding="utf-8")}
    rng = random.Random(a.seed)
    cum = list(itertools.accumulate(weights))  # what choices() builds from weights on every call
    n = 0
    with open(a.out, "w", encoding="utf-8") as f:
        while n < a.num:
            s = "".join(rng.choices(words, cum_weights=cum, k=rng.randint(3, 12)))[:30]
            if s in seen:
                continue
            f.write(f"{a.prefix}_{n:06d} {s}\n")
            n += 1
    print(f"{len(words)} words; wrote {n} sentences to {a.out}")


if __name__ == "__main__":
    main()
