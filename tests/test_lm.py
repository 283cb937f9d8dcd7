"""The n-gram LM (wenet_triton/lm.py) and its fusion into the CTC prefix beam search."""
import math
import random
from collections import Counter

import numpy as np
import pytest
from conftest import reference, shared_path

V_TOY = 300


def _toy_corpus(n=3000, seed=0):
    """Random sentences of 400 random 'words' (1-4 tokens of 2..V_TOY-1), Zipf-weighted."""
    rng = random.Random(seed)
    words = [[rng.randrange(2, V_TOY) for _ in range(rng.randint(1, 4))] for _ in range(400)]
    weights = [1 / (k + 1) for k in range(len(words))]
    return [[t for w in rng.choices(words, weights, k=rng.randint(1, 7)) for t in w]
            for _ in range(n)]


def _reference_kn(sents, V, order):
    """Textbook interpolated modified Kneser-Ney (Chen & Goodman), by dictionaries."""
    bos, eos = V, V + 1
    counts = [Counter() for _ in range(order + 1)]
    for s in sents:
        seq = [bos] + s + [eos]
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                g = tuple(seq[i:i + n])
                if g[-1] != bos:
                    counts[n][g] += 1
    kn = [None] * (order + 1)
    kn[order] = dict(counts[order])
    for n in range(order - 1, 0, -1):
        kn[n] = {g: (c if g[0] == bos else sum(1 for h in counts[n + 1] if h[1:] == g))
                 for g, c in counts[n].items()}
    for w in list(range(V)) + [eos]:
        kn[1].setdefault((w,), 0)
    D = [None]
    for n in range(1, order + 1):
        nn = [sum(1 for c in kn[n].values() if c == i) for i in (1, 2, 3, 4)]
        assert min(nn) > 0, "corpus too small for the discount formula"
        y = nn[0] / (nn[0] + 2 * nn[1])
        D.append([1 - 2 * y * nn[1] / nn[0], 2 - 3 * y * nn[2] / nn[1], 3 - 4 * y * nn[3] / nn[2]])

    def disc(n, c):
        return min(c, D[n][0] if c < 2 else D[n][1] if c < 3 else D[n][2])

    def prob(ctx, w):
        n = len(ctx) + 1
        lower = prob(ctx[1:], w) if n > 1 else 1.0 / (V + 1)
        cont = {g: c for g, c in kn[n].items() if g[:-1] == ctx}
        tot = sum(cont.values())
        if tot == 0:
            return lower
        c = cont.get(ctx + (w,), 0)
        gamma = sum(disc(n, x) for x in cont.values()) / tot
        return (c - disc(n, c)) / tot + gamma * lower

    return prob


def test_kneser_ney_matches_the_textbook_formula():
    from wenet_triton.decode.lm import estimate

    V, order = V_TOY, 3
    sents = _toy_corpus()
    lm = estimate(sents, V, order)
    ref = _reference_kn(sents, V, order)
    rng = random.Random(1)
    seen = [tuple(s[i:i + 2]) for s in sents[:200] for i in range(len(s) - 1)]
    contexts = rng.sample(seen, 20) + [(V, s[0]) for s in sents[:5]] + [(0, 1), (V, 1), (5, 5)]
    worst = 0.0
    for ctx in contexts:
        for w in list(range(V)) + [V + 1]:
            worst = max(worst, abs(math.exp(lm.logp(ctx, w)) - ref(ctx, w)))
    assert worst < 1e-9


@pytest.mark.parametrize("min_count", [(), (1, 2, 4, 6)])
def test_every_context_sums_to_one(min_count):
    from wenet_triton.decode.lm import estimate

    V = V_TOY
    sents = _toy_corpus()
    lm = estimate(sents, V, 4, min_count)
    for ctx in [(V,), (0, 1), (V, 5, 6)] + [tuple(s[:3]) for s in sents[:10]] + \
            [(V,) + tuple(s[:2]) for s in sents[10:20]]:
        total = sum(math.exp(lm.logp(ctx, w)) for w in list(range(V)) + [V + 1])
        assert abs(total - 1) < 1e-9, (ctx, total)


def test_pruning_keeps_frequent_ngrams_and_arpa_round_trips(tmp_path):
    from wenet_triton.decode.lm import NgramLM, estimate

    V = V_TOY
    sents = _toy_corpus()
    full, pruned = estimate(sents, V, 4), estimate(sents, V, 4, (1, 3, 3, 3))
    sizes = lambda m: [len(c) for c in m.tables()[0]]  # noqa: E731
    assert sizes(pruned)[0] == sizes(full)[0] and sizes(pruned)[1:] < sizes(full)[1:]
    units = ["<blank>", "<unk>"] + [f"u{i}" for i in range(2, V)]
    path = str(tmp_path / "lm.arpa.gz")
    pruned.write_arpa(path, units)
    back = NgramLM.from_arpa(path, units)
    for s in sents[:50]:
        assert back.sentence_logp(s) == pytest.approx(pruned.sentence_logp(s), abs=1e-4)


def test_arpa_back_off_semantics(tmp_path):
    """A hand-written ARPA file: present n-grams read directly, absent ones back off."""
    from wenet_triton.decode.lm import NgramLM

    path = tmp_path / "tiny.arpa"
    path.write_text("\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-99\t<s>\t-0.5\n-0.5\ta\t-0.3\n"
                    "-0.7\tb\n-0.9\t</s>\n\n\\2-grams:\n-0.2\t<s> a\n-0.1\ta b\n\n\\end\\\n")
    lm = NgramLM.from_arpa(str(path), ["<blank>", "a", "b"])
    bos, eos, a, b = 3, 4, 1, 2
    ln10 = math.log(10)
    assert lm.logp((bos,), a) == pytest.approx(-0.2 * ln10)
    assert lm.logp((bos,), b) == pytest.approx((-0.5 - 0.7) * ln10)  # bow(<s>) + P(b)
    assert lm.logp((a,), b) == pytest.approx(-0.1 * ln10)
    assert lm.logp((a,), eos) == pytest.approx((-0.3 - 0.9) * ln10)
    assert lm.logp((b,), a) == pytest.approx(-0.5 * ln10)            # b has no back-off weight
    assert lm.sentence_logp([a, b]) == pytest.approx((-0.2 - 0.1 - 0.9) * ln10)


def test_bad_arpa_and_wrong_units_get_clear_errors(tmp_path):
    from wenet_triton.decode.lm import LMError, NgramLM

    bad = tmp_path / "bad.arpa"
    bad.write_text("hello\n")
    with pytest.raises(LMError, match="not an ARPA file"):
        NgramLM.from_arpa(str(bad), ["<blank>", "a"])
    other = tmp_path / "other.arpa"
    other.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\tx\n-1\ty\n-1\t</s>\n\n\\end\\\n")
    with pytest.raises(LMError, match="use this model's units"):
        NgramLM.from_arpa(str(other), ["<blank>", "a", "b"])
    with pytest.raises(LMError, match="cannot read"):
        NgramLM.from_arpa(str(tmp_path / "missing.arpa"), ["<blank>"])


@pytest.fixture(scope="module")
def synth_lm():
    """A 4-gram over the shared models' units from the shared training text."""
    from wenet_triton.decode.lm import estimate, text_to_ids
    from wenet_triton.decode.vocab import read_vocab

    units = read_vocab(shared_path("synth", "units.txt"))
    sents, unk = text_to_ids([shared_path("synth", "train.txt")], units, with_ids=True)
    assert unk == 0 and len(sents) == 120000
    return estimate(sents[:30000], len(units), 4, (1, 2, 2, 2)), units


def _reference_topk(name):
    dec, npz = reference(name)
    utts = sorted(dec["utts"])
    return dec, utts, [npz(u) for u in utts]


def test_lm_search_python_and_cpp_agree_and_weight_zero_is_wenets(synth_lm):
    from wenet_triton.decode.native import prefix_beam_search_batch
    from wenet_triton.decode.search import ctc_prefix_beam_search_lm

    lm, _ = synth_lm
    dec, utts, refs = _reference_topk("u2pp_conformer")
    T = max(len(r["ctc_topk_idx"]) for r in refs)
    v = np.full((len(refs), T, 10), -1e9, np.float32)
    i = np.zeros((len(refs), T, 10), np.int64)
    lens = np.array([len(r["ctc_topk_idx"]) for r in refs], np.int32)
    for b, r in enumerate(refs):
        v[b, :lens[b]], i[b, :lens[b]] = r["ctc_topk_values"], r["ctc_topk_idx"]
    for w, bonus in [(0.0, 0.0), (0.7, 0.0), (1.5, 0.5), (-0.3, 0.0)]:
        native = prefix_beam_search_batch(v, i, lens, 10, 0, lm, w, bonus)
        assert native is not None, "C++ search failed to build"
        for b, u in enumerate(utts):
            py = ctc_prefix_beam_search_lm(refs[b]["ctc_topk_values"], refs[b]["ctc_topk_idx"],
                                           lens[b], lm, w, bonus, 10)
            assert [h[0] for h in native[b]] == [h[0] for h in py]
            np.testing.assert_allclose([h[1:] for h in native[b]], [h[1:] for h in py], atol=1e-9)
            # the LM score of each hypothesis is its sentence log-prob with </s>
            for h in native[b]:
                assert h[2] == pytest.approx(lm.sentence_logp(h[0]), abs=1e-9)
            if w == 0:
                assert [list(h[0]) for h in native[b]] == [h[0] for h in dec["utts"][u]["nbest"]]


def test_lm_changes_the_nbest_towards_likely_text(synth_lm):
    """With weight the first hypothesis' LM score can only rise, its CTC score only fall."""
    from wenet_triton.decode.search import ctc_prefix_beam_search_batch

    lm, _ = synth_lm
    _, _, refs = _reference_topk("u2pp_conformer")
    changed = 0
    for r in refs:
        n = len(r["ctc_topk_idx"])
        args = (r["ctc_topk_values"][None], r["ctc_topk_idx"][None], [n], 10, 0, lm)
        plain, fused = (ctc_prefix_beam_search_batch(*args, w)[0][0] for w in (0.0, 2.0))
        assert fused[2] >= plain[2] - 1e-9 and fused[1] <= plain[1] + 1e-9
        changed += fused[0] != plain[0]
    assert changed > 0


def test_decoding_yaml_is_validated(tmp_path):
    from wenet_triton.decode.options import resolve

    (tmp_path / "decoding.yaml").write_text("beam_size: 20\nlm_wieght: 0.3\n")
    with pytest.raises(ValueError, match="unknown option.*lm_wieght"):
        resolve(str(tmp_path))
    (tmp_path / "decoding.yaml").write_text("beam_size: many\n")
    with pytest.raises(ValueError, match="beam_size must be int"):
        resolve(str(tmp_path))
    (tmp_path / "decoding.yaml").write_text("beam_size: 20\nlm: nowhere.arpa\n")
    with pytest.raises(FileNotFoundError, match="nowhere.arpa"):
        resolve(str(tmp_path))
    d = resolve(str(tmp_path), lm="none", beam_size=12)
    assert d.lm is None and d.beam_size == 12
