"""The demo model's corpus tools (recipes/demo_zh_synth/train_demo.py, make_more_text.py): cutting
espeak-ng audio at its pauses, composed utterances, the word list round trip, GPU-style
fbank of waveform shards against the serving front-end."""
import os
import sys

import numpy as np
import pytest
import torch

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "demo_zh_synth")
sys.path.insert(0, RECIPE)
import make_more_text  # noqa: E402
import train_demo  # noqa: E402

SR = 22050


def _word(rng, seconds, closures):
    """A voiced stretch with short digital silences inside (stop closures)."""
    x = rng.normal(0, 3000, int(seconds * SR)).astype(np.float32)
    for at in closures:
        x[int(at * SR):int((at + 0.04) * SR)] = 0
    return x


def _sentence(words, pause_s):
    z = np.zeros(int(pause_s * SR), np.float32)
    parts = [z]
    for w in words:
        parts += [w, z]
    return np.concatenate(parts)


def test_split_at_pauses_recovers_words_between_long_pauses():
    rng = np.random.default_rng(0)
    words = [_word(rng, 0.4, [0.15]), _word(rng, 0.6, [0.1, 0.3]), _word(rng, 0.3, [])]
    clips = train_demo.split_at_pauses(_sentence(words, 0.17), SR, 3)
    assert clips is not None and len(clips) == 3
    for c, w in zip(clips, words):
        nz = np.flatnonzero(np.abs(w) > 2)
        np.testing.assert_array_equal(c, w[nz[0]:nz[-1] + 1])  # trimmed, closures kept


def test_split_at_pauses_refuses_ambiguous_audio():
    rng = np.random.default_rng(1)
    words = [_word(rng, 0.4, [0.15]), _word(rng, 0.5, [0.2])]
    # pauses no longer than the closures inside words: no clean cut
    assert train_demo.split_at_pauses(_sentence(words, 0.04), SR, 2) is None
    # fewer pauses than words
    assert train_demo.split_at_pauses(_sentence(words, 0.17), SR, 3) is None


def test_compose_joins_clips_with_gaps_and_noise_like_gen():
    rng = np.random.default_rng(2)
    bank = [rng.normal(0, 3000, n).astype(np.float32) for n in (4000, 6000, 5000)]
    for seed in range(20):
        r = np.random.default_rng(seed)
        y = train_demo.compose(bank, [0, 2, 1, 0], r, gap_ms=30)
        assert y.dtype == np.int16
        speech = sum(len(bank[i]) for i in [0, 2, 1, 0])
        # + 3 gaps of 30-45 ms + lead and tail of 800-6400 samples each
        assert speech + 3 * 480 + 1600 <= len(y) <= speech + 3 * 720 + 12800
        # noise fills the silence: 8-40 dB below the speech, never digital zeros
        assert np.abs(y[:400].astype(np.float64)).max() > 0


def test_word_list_round_trip_gives_the_same_sentences(tmp_path):
    units = tmp_path / "units.txt"
    units.write_text("<blank> 0\n<unk> 1\n" + "".join(f"{c} {i + 2}\n" for i, c in enumerate("天地人和山水")),
                     encoding="utf-8")
    d = tmp_path / "dict.txt"
    d.write_text("天地 300 n\n人 5000 n\n和 900 c\n山水 40 n\n天外 100 n\n地 19 n\n", encoding="utf-8")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    make_more_text.main(["--dict", str(d), "--units", str(units), "--num", "50", "--out", str(a),
                         "--words-out", str(tmp_path / "words.txt")])
    words = (tmp_path / "words.txt").read_text(encoding="utf-8").split()
    assert words[0::2] == ["天地", "人", "和", "山水"]  # "天外" has a char outside the units, "地" freq < 20
    make_more_text.main(["--words", str(tmp_path / "words.txt"), "--num", "50", "--out", str(b)])
    assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")


def test_waveform_shards_get_the_serving_fbank():
    from wenet_triton.audio.frontend import Fbank
    from wenet_triton.audio.torch_fbank import TorchFbank

    rng = np.random.default_rng(3)
    wavs = [torch.from_numpy((rng.normal(0, 2000, n)).astype(np.int16)) for n in (16000, 9000, 23456)]
    feats = train_demo.shard_feats({"wavs": wavs}, TorchFbank(), batch=2)
    ref = Fbank()
    for w, f in zip(wavs, feats):
        r = ref(w.numpy().astype(np.float32) / 32768.0)
        assert f.dtype == torch.float16 and f.shape == r.shape
        assert np.abs(f.float().numpy() - r).max() < 0.02  # fp16 storage of log-mel values ~5-20


@pytest.mark.parametrize("n", [1, 3])
def test_corpus_evicts_oldest_composed_shards(tmp_path, n):
    def shard(k, length):
        return {"wavs": [torch.zeros(length, dtype=torch.int16) + i for i in range(k)],
                "ids": [torch.tensor([5, 6], dtype=torch.int16)] * k, "texts": ["ab"] * k}
    torch.save(shard(4, 8000), tmp_path / "train_0000.pt")
    c = train_demo.Corpus(str(tmp_path), torch.device("cpu"), max_composed=5)
    for i in range(n):
        torch.save(shard(3, 4000 + 100 * i), tmp_path / f"comp_00_{i:05d}.pt")
        os.utime(tmp_path / f"comp_00_{i:05d}.pt", (1000 + i, 1000 + i))
    real, comp = c.refresh()
    assert (real, comp) == (4, 3 * n)
    assert not list(tmp_path.glob("comp_*.pt"))  # taken and deleted
    # at most 5 composed held: of three shards of 3 only the newest stays
    assert c.n_comp == 3 and len(c.feats) == 4 + 3
    assert c.frames[-1] == c.fbank.num_frames(4000 + 100 * (n - 1))
    assert c.frames[0] == c.fbank.num_frames(8000)  # real shards are kept


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="needs espeak-ng")
def test_shared_bank_equals_one_worker_synthesizing_everything(tmp_path):
    import argparse
    import threading

    words = ["世界", "中国", "银行", "好", "人民代表大会", "山水", "天地", "和平"] * 3
    a = argparse.Namespace(espeak_dir="system", out=str(tmp_path), jobs=2)
    voice = ("cmn+m3", 170, 50)
    got = {}
    threads = [threading.Thread(target=lambda w=w: got.update({w: train_demo.shared_bank(a, words, 0, w, voice)[0]}))
               for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    whole, _ = train_demo.word_bank("system", words, *voice, chunk=20)
    for w in range(2):
        assert len(got[w]) == len(words)
        for j, clip in enumerate(got[w]):  # every worker reads every share, stored as int16
            np.testing.assert_allclose(clip, np.round(whole[j]), atol=0.5)
