"""Train the demo U2++ model on synthetic Mandarin (espeak-ng) speech.

Two processes, run side by side on the GPU machine by recipes/demo_zh_synth/train_demo.sh:
  gen    synthesizes ../shared/synth text lists with the shared generator (gen.py) on all
         CPU cores, computes the serving front-end's fbank (kaldi-native-fbank) and writes
         shards of fp16 features + token ids (dev first, then train shards as they finish)
  train  waits for the dev shard and the first train shard, trains on whatever shards
         exist at the start of each epoch (so training starts while data is still being
         made), logs loss and dev greedy CER, snapshots the model, and stops at its time
         budget, writing WeNet model directories (fp32 and fp16 copies)

Both run on a CPU too (tiny settings) for a dry run:
  python recipes/demo_zh_synth/train_demo.py gen --espeak-dir system --synth-dir ../shared/synth \
      --out work/corpus --num-train 400 --num-dev 40 --shard-size 200 --jobs 2
  python recipes/demo_zh_synth/train_demo.py train --corpus work/corpus --out work/train --minutes 3 \
      --device cpu --tiny
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import time

import numpy as np
import torch
from make_more_text import read_words  # this script's folder (on sys.path when run as a script)

from wenet_triton.decode.cer import cer, read_text
from wenet_triton.decode.vocab import Vocab, read_vocab
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.train import (
    DEMO_CONFIG,
    cmvn_stats,
    dynamic_chunk_size,
    greedy_ids,
    spec_augment,
    u2_loss,
    warmup_cosine,
    write_model_dir,
)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- corpus generation
_W = {}


def _init_worker(synth_dir, espeak_dir, units):
    sys.path.insert(0, synth_dir)
    import gen  # the shared generator: deterministic audio per utterance id

    _W.update(gen=gen, espeak=espeak_dir, units=units)


def _make(item):
    uid, text = item
    _, x = _W["gen"].synth(_W["espeak"], uid, text)
    ids = np.array([_W["units"].get(c, 1) for c in text if not c.isspace()], np.int16)
    return uid, x, ids, len(x)


def read_list(path, limit):
    items = list(read_text(path).items())
    return items[:limit] if limit else items


def cmd_gen(a):
    from multiprocessing import Pool

    os.makedirs(a.out, exist_ok=True)
    units = {tok: i for i, tok in enumerate(read_vocab(os.path.join(a.synth_dir, "units.txt")))}
    jobs = [("dev", read_list(os.path.join(a.synth_dir, "dev.txt"), a.num_dev))]
    train = [it for name in a.train_list for it in read_list(os.path.join(a.synth_dir, name), 0)]
    train = train[:a.num_train] if a.num_train else train
    jobs += [(f"train_{i // a.shard_size:04d}", train[i:i + a.shard_size])
             for i in range(0, len(train), a.shard_size)]
    t0, done_s = time.time(), 0.0
    with Pool(a.jobs, initializer=_init_worker,
              initargs=(os.path.abspath(a.synth_dir), a.espeak_dir, units)) as pool:
        for name, items in jobs:
            path = os.path.join(a.out, name + ".pt")
            if os.path.exists(path):
                continue
            res = pool.map(_make, items, chunksize=8)
            shard = {"uids": [r[0] for r in res], "wavs": [torch.from_numpy(r[1]) for r in res],
                     "ids": [torch.from_numpy(r[2]) for r in res],
                     "texts": [t for _, t in items]}
            torch.save(shard, path + ".tmp")
            os.replace(path + ".tmp", path)  # the trainer only sees complete shards
            done_s += sum(r[3] for r in res) / 16000
            el = time.time() - t0
            log(f"gen {name}: {len(res)} utts; total {done_s / 3600:.1f} h audio in {el:.0f} s "
                f"({done_s / el:.0f}x real time)")
    open(os.path.join(a.out, "DONE"), "w").write("ok\n")


# ---------------------------------------------------------------- composed sentences
# Rare words are where the model errs (multi-character words of rank > 10 000 in the word
# list: ~25% of their characters wrong vs 5% for the top 1 000), and espeak-ng synthesis of
# whole sentences is too slow to show each of the 70 000 words often. So the compose workers
# together synthesize the whole word list in one voice (words separated by commas, cut at the
# pauses; each worker a share, then all read all), then assemble new random sentences from
# those clips in milliseconds each, with gen.py's silence, gain and noise; then the next
# voice. A model trained on real sentences only recognises such composed audio almost as
# well as real sentences (30 dev sentences: 23.9% vs 22.4% CER).
def _espeak(espeak_dir, text, voice, speed, pitch):
    import io
    import subprocess
    import wave
    exe = ["espeak-ng"] if espeak_dir == "system" else [os.path.join(espeak_dir, "espeak-ng"), "--path=" + espeak_dir]
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(espeak_dir, "lib"))
    out = subprocess.run(exe + ["-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, env=env, check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32), w.getframerate()


def _silent_runs(x, min_len):
    """(start, end) of runs of digital silence (|x| <= 2) at least min_len samples long."""
    z = np.concatenate([[0], (np.abs(x) <= 2).astype(np.int8), [0]])
    d = np.diff(z)
    return [(a, b) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)) if b - a >= min_len]


def _trim(x):
    """x without its leading and trailing digital silence (all of it if silent)."""
    nz = np.flatnonzero(np.abs(x) > 2)
    return x[nz[0]:nz[-1] + 1] if len(nz) else x


def split_at_pauses(x, sr, n):
    """Cut espeak-ng's audio of n comma-separated words into n clips at its n-1 longest
    pauses (trimmed); None unless those pauses are clearly longer than any inside a word."""
    runs = sorted(_silent_runs(x, int(0.02 * sr)), key=lambda r: r[0] - r[1])
    inner = [r for r in runs if r[0] > 0 and r[1] < len(x)]
    cuts, rest = inner[:n - 1], inner[n - 1:]
    if len(cuts) < n - 1 or (cuts and (cuts[-1][1] - cuts[-1][0]) < max(0.07 * sr, 1.4 * max(
            [b - a for a, b in rest], default=0))):
        return None
    bounds = [0] + [v for c in sorted(cuts) for v in c] + [len(x)]
    clips = [_trim(x[bounds[i]:bounds[i + 1]]) for i in range(0, len(bounds), 2)]
    return None if any(np.all(np.abs(c) <= 2) for c in clips) else clips


def _to_16k(x, sr):
    n = int(round(len(x) * 16000 / sr))
    return np.interp(np.arange(n) * sr / 16000, np.arange(len(x)), x).astype(np.float32)


def word_bank(espeak_dir, words, voice, speed, pitch, chunk=20, part=(0, 1)):
    """{word index: 16 kHz clip} in one voice for chunks part[0], part[0] + part[1], ... of the
    list (all of it by default); a chunk whose pauses do not split cleanly is synthesized word
    by word."""
    bank, word_by_word = {}, 0
    for i in range(part[0] * chunk, len(words), part[1] * chunk):
        group = list(range(i, min(i + chunk, len(words))))
        x, sr = _espeak(espeak_dir, "，".join(words[j] for j in group), voice, speed, pitch)
        clips = split_at_pauses(x, sr, len(group))
        if clips is None:
            clips, word_by_word = [], word_by_word + len(group)
            for j in group:
                y, sr = _espeak(espeak_dir, words[j], voice, speed, pitch)
                clips.append(_trim(y))
        for j, c in zip(group, clips):
            bank[j] = _to_16k(c, sr)
    return bank, word_by_word


def compose(bank, idx, rng, gap_ms):
    """One utterance from word clips, finished like gen.py: leading/trailing silence, gain,
    white or brown noise at 8-40 dB SNR."""
    parts = []
    for k, j in enumerate(idx):
        if k:
            parts.append(np.zeros(int(16 * (gap_ms + rng.uniform(0, 15))), np.float32))
        parts.append(bank[j])
    x = np.concatenate([np.zeros(rng.integers(800, 6400))] + parts + [np.zeros(rng.integers(800, 6400))])
    x *= 10 ** (rng.uniform(-12, 3) / 20)
    p = np.mean(x ** 2) + 1e-9
    nz = rng.standard_normal(len(x))
    if rng.random() < 0.5:
        nz = np.cumsum(nz)
        c = np.concatenate([[0.0], np.cumsum(nz)])  # minus a 400-sample moving average
        lo, hi = np.clip(np.arange(len(nz)) - 200, 0, len(nz)), np.clip(np.arange(len(nz)) + 200, 0, len(nz))
        nz -= (c[hi] - c[lo]) / 400
    nz *= np.sqrt(p / (np.mean(nz ** 2) + 1e-9) / 10 ** (rng.uniform(8, 40) / 10))
    return np.clip(np.round(x + nz), -32768, 32767).astype(np.int16)


def shared_bank(a, words, k, wid, voice, deadline=float("inf")):
    """Voice k's clips of every word, synthesized by all compose workers together: each
    writes its share of the list to OUT/banks, then reads everyone's. None when stopped or
    past the deadline (e.g. a worker died)."""
    d = os.path.join(a.out, "banks")
    os.makedirs(d, exist_ok=True)
    part, single = word_bank(a.espeak_dir, words, *voice, part=(wid, a.jobs))
    idx = np.array(sorted(part), dtype=np.int64)
    clips = [np.clip(np.round(part[j]), -32768, 32767).astype(np.int16) for j in idx]
    offs = np.cumsum([0] + [len(c) for c in clips])
    path = os.path.join(d, f"v{k:04d}_{wid:02d}.npz")
    np.savez(path + ".tmp.npz", idx=idx, offs=offs, data=np.concatenate(clips) if clips else np.zeros(0, np.int16))
    os.replace(path + ".tmp.npz", path)
    paths = [os.path.join(d, f"v{k:04d}_{w:02d}.npz") for w in range(a.jobs)]
    while not all(os.path.exists(p) for p in paths):
        if os.path.exists(os.path.join(a.out, "STOP")) or time.time() > deadline:
            return None, single
        time.sleep(0.5)
    bank = [None] * len(words)
    for p in paths:
        z = np.load(p)
        data, offs = z["data"].astype(np.float32), z["offs"]
        for n, j in enumerate(z["idx"]):
            bank[j] = data[offs[n]:offs[n + 1]]
    old = os.path.join(d, f"v{k - 2:04d}_{wid:02d}.npz")  # every worker has long read it
    if os.path.exists(old):
        os.remove(old)
    return bank, single


def _random_sentence(rng, cum, lens, max_chars=30):
    """Word indices of one sentence drawn like the shared lists (3-12 words by weight), ending
    before the word that would pass their 30-character cap (a clip cannot be cut)."""
    idx = []
    for j in np.searchsorted(cum, rng.random(int(rng.integers(3, 13)))):
        if lens[idx].sum() + lens[j] > max_chars:
            break
        idx.append(int(j))
    return idx


def _compose_worker(args):
    a, wid, words, weights, units, excluded = args
    sys.path.insert(0, os.path.abspath(a.synth_dir))
    import gen
    rng = np.random.default_rng(a.seed * 1000 + wid)
    cum = np.cumsum(weights) / np.sum(weights)
    deadline, n_shard, k = time.time() + a.minutes * 60, 0, 0
    lens = np.array([len(w) for w in words])
    while time.time() < deadline and not os.path.exists(os.path.join(a.out, "STOP")):
        vr = np.random.default_rng([a.seed, k])  # the same voice k in every worker
        v = gen.VARIANTS[vr.integers(len(gen.VARIANTS))]
        voice = ("cmn" + ("+" + v if v else ""), int(vr.integers(120, 230)), int(vr.integers(15, 85)))
        t0 = time.time()
        bank, single = shared_bank(a, words, k, wid, voice, deadline)
        if bank is None:
            break
        log(f"compose worker {wid}: voice {k} ({' '.join(map(str, voice))}) for {len(words)} words "
            f"ready in {time.time() - t0:.0f} s ({single} of its share synthesized one by one)")
        k += 1
        until = min(deadline, time.time() + a.bank_minutes * 60)
        while time.time() < until and not os.path.exists(os.path.join(a.out, "STOP")):
            wavs, ids, texts = [], [], []
            while len(wavs) < a.shard_size:
                gap = 10 * int(rng.integers(0, 6))  # gen.py's -g (word gap, 10 ms units)
                idx = _random_sentence(rng, cum, lens)
                text = "".join(words[j] for j in idx)
                if not idx or text in excluded:
                    continue
                wavs.append(torch.from_numpy(compose(bank, idx, rng, gap)))
                ids.append(torch.tensor([units.get(c, 1) for c in text], dtype=torch.int16))
                texts.append(text)
            while len(glob.glob(os.path.join(a.out, "comp_*.pt"))) >= a.max_pending:
                if time.time() > deadline or os.path.exists(os.path.join(a.out, "STOP")):
                    return n_shard
                time.sleep(0.5)  # the trainer has not taken the last ones yet
            path = os.path.join(a.out, f"comp_{wid:02d}_{n_shard:05d}.pt")
            torch.save({"wavs": wavs, "ids": ids, "texts": texts}, path + ".tmp")
            os.replace(path + ".tmp", path)
            n_shard += 1
    return n_shard


def cmd_compose(a):
    from multiprocessing import Pool

    os.makedirs(a.out, exist_ok=True)
    units = {tok: i for i, tok in enumerate(read_vocab(os.path.join(a.synth_dir, "units.txt")))}
    words, weights = read_words(os.path.join(a.synth_dir, "words.txt"))
    if a.num_words:  # the most likely words only (a quick dry run)
        keep = sorted(np.argsort(weights)[::-1][:a.num_words])
        words, weights = [words[i] for i in keep], [weights[i] for i in keep]
    excluded = {t for name in ("dev.txt", "test.txt") if os.path.exists(os.path.join(a.synth_dir, name))
                for t in read_text(os.path.join(a.synth_dir, name)).values()}
    log(f"compose: {a.jobs} workers, {len(words)} words, {len(excluded)} dev/test sentences excluded")
    with Pool(a.jobs) as pool:
        shards = pool.map(_compose_worker, [(a, i, words, weights, units, excluded) for i in range(a.jobs)])
    log(f"compose: {sum(shards)} shards written")


# ---------------------------------------------------------------- training
def shard_feats(shard, fbank, batch=256):
    """A shard's fbank (fp16, on the fbank's device): stored features, or computed from its
    int16 waveforms in length-sorted batches (the serving front-end's torch fbank)."""
    if "feats" in shard:
        return [f.to(fbank.device) for f in shard["feats"]]
    wavs, out = shard["wavs"], [None] * len(shard["wavs"])
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    for k in range(0, len(order), batch):
        grp = order[k:k + batch]
        feats, lens = fbank.batch_tensor([wavs[i].numpy().astype(np.float32) / 32768.0 for i in grp])
        for i, f, n in zip(grp, feats, lens.tolist()):
            out[i] = f[:n].half().clone()  # a normal tensor (not an inference one)
    return out


class Corpus:
    """Shards held on the training device; batches by a padded-frames budget. Real shards
    (train_*.pt) stay; composed shards (comp_*.pt) are deleted once loaded, and the oldest
    are dropped beyond max_composed utterances."""

    def __init__(self, corpus_dir, device, composed_dirs=(), max_composed=400000):
        from wenet_triton.audio.torch_fbank import TorchFbank

        self.dir, self.device, self.composed_dirs = corpus_dir, device, [corpus_dir, *composed_dirs]
        self.fbank = TorchFbank(device=str(device))
        self.max_composed = max_composed
        self.loaded, self.real, self.comp = set(), ([], []), []
        self.composed_seen = 0
        self.feats, self.ids, self.frames = [], [], []

    @property
    def n_comp(self):
        return sum(len(ids) for _, ids in self.comp)

    def _comp_files(self):
        return [p for d in self.composed_dirs for p in glob.glob(os.path.join(d, "comp_*.pt"))]

    def pending(self):
        return bool(self._comp_files()) or any(
            p not in self.loaded for p in glob.glob(os.path.join(self.dir, "train_*.pt")))

    def refresh(self):
        new_real = new_comp = 0
        for p in sorted(glob.glob(os.path.join(self.dir, "train_*.pt"))):
            if p in self.loaded:
                continue
            s = torch.load(p, weights_only=True)
            self.real[0].extend(shard_feats(s, self.fbank))
            self.real[1].extend(i.long().to(self.device) for i in s["ids"])
            self.loaded.add(p)
            new_real += len(s["ids"])
        for p in sorted(self._comp_files(), key=os.path.getmtime):  # oldest first
            s = torch.load(p, weights_only=True)
            os.remove(p)
            self.comp.append((shard_feats(s, self.fbank), [i.long().to(self.device) for i in s["ids"]]))
            new_comp += len(s["ids"])
        while self.n_comp > self.max_composed and len(self.comp) > 1:
            self.comp.pop(0)
        self.composed_seen += new_comp
        if new_real or new_comp:
            self.feats = self.real[0] + [f for c in self.comp for f in c[0]]
            self.ids = self.real[1] + [i for c in self.comp for i in c[1]]
            self.frames = [f.shape[0] for f in self.feats]
        return new_real, new_comp

    def batches(self, max_frames, rng):
        order = sorted(range(len(self.frames)), key=lambda i: (self.frames[i], rng.random()))
        out, cur, longest = [], [], 0
        for i in order:
            longest2 = max(longest, self.frames[i])
            if cur and longest2 * (len(cur) + 1) > max_frames:
                out.append(cur)
                cur, longest2 = [], self.frames[i]
            cur.append(i)
            longest = longest2
        if cur:
            out.append(cur)
        rng.shuffle(out)
        return out


def pad(feats, device):
    lens = torch.tensor([f.shape[0] for f in feats], device=device)
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).float()
    return x, lens


def dev_cer(model, dev, device, bs=64):
    model.eval()
    pairs = []
    for i in range(0, len(dev["feats"]), bs):
        x, lens = pad(dev["feats"][i:i + bs], device)
        for ids, ref in zip(greedy_ids(model, x, lens), dev["texts"][i:i + bs]):
            pairs.append((ref, Vocab(model.spec.vocab, model.spec.eos).text(ids)))
    model.train()
    return cer(pairs)[0], pairs[:2]


def cmd_train(a):
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls (no bf16: see #4)
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)  # the other cores synthesize; more threads only contend
    rng, gen = random.Random(a.seed), torch.Generator().manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train_log.jsonl"), "a")

    while not (os.path.exists(os.path.join(a.corpus, "dev.pt"))
               and glob.glob(os.path.join(a.corpus, "train_*.pt"))):
        time.sleep(2)
    dev = torch.load(os.path.join(a.corpus, "dev.pt"), weights_only=True)
    corpus = Corpus(a.corpus, device, a.composed_dir, a.max_composed)
    dev["feats"] = shard_feats(dev, corpus.fbank)
    corpus.refresh()
    if a.init:  # go on from a model: its config and CMVN
        import yaml
        config = yaml.safe_load(open(os.path.join(a.init, "train.yaml"), encoding="utf-8"))
        config.pop("output_dim", None)
        cmvn = json.load(open(os.path.join(a.init, "global_cmvn")))
    else:
        cmvn = cmvn_stats([f.float() for f in corpus.feats[:4000]])
        config = json.loads(json.dumps(DEMO_CONFIG))
    if a.tiny:  # CPU dry run
        config["encoder_conf"].update(output_size=64, linear_units=128, num_blocks=2)
        config["decoder_conf"].update(linear_units=128, num_blocks=1)
    units_path = os.path.join(a.corpus, "units.txt")
    spec_dir = write_model_dir(os.path.join(a.out, "model_fp32"), config, units_path, cmvn)
    spec = load_model_dir(spec_dir, load_weights=False)
    model = ASRModel(spec)
    if a.init:
        model.load_wenet_state_dict(load_model_dir(a.init).state_dict)
        log(f"initialised from {a.init}")
    model = model.to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {n_params / 1e6:.2f} M parameters; {len(corpus.feats)} train utts loaded")
    mc = config["model_conf"]
    sa = config["dataset_conf"]["spec_aug_conf"]
    fill = model.encoder.global_cmvn.mean
    opt = torch.optim.Adam(model.parameters(), lr=a.peak_lr, betas=(0.9, 0.98), eps=1e-9)
    budget = a.minutes * 60
    t0 = time.time()
    step, epoch, t_warm = 0, 0, None
    agg = {"loss": 0.0, "ctc": 0.0, "att": 0.0, "n": 0}
    stop = None
    while stop is None:
        new_real, new_comp = corpus.refresh()
        if new_real or new_comp:
            log(f"loaded {new_real} real + {new_comp} composed utts ({len(corpus.real[0])} real, "
                f"{corpus.n_comp} composed held)")
        epoch += 1  # a pass over what is loaded, cut short when new shards are waiting
        for k, batch in enumerate(corpus.batches(a.max_frames, rng)):
            if k >= a.refresh_every and corpus.pending():
                break
            elapsed = time.time() - t0
            if elapsed > budget:
                stop = "time budget"
                break
            if step == a.warmup:
                t_warm = elapsed
            progress = 0.0 if t_warm is None else (elapsed - t_warm) / max(budget - t_warm, 1)
            lr = warmup_cosine(progress, step, a.peak_lr, a.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            x, lens = pad([corpus.feats[i] for i in batch], device)
            chunk = 0
            if not a.no_augment:
                x = spec_augment(x, lens, fill, gen, sa["num_f_mask"], sa["max_f"],
                                 sa["num_t_mask"], sa["max_t"])
                chunk = dynamic_chunk_size(model.encoder.embed.output_frames(int(lens.max())), gen)
            out = u2_loss(model, x, lens, [corpus.ids[i] for i in batch], mc["ctc_weight"],
                          mc["reverse_weight"], mc["lsm_weight"], chunk)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
            if torch.isfinite(gnorm):
                opt.step()
            step += 1
            for k in ("loss", "ctc", "att"):
                agg[k] += out[k].detach()  # summed on the device: no sync per step
            agg["n"] += 1
            if step % a.eval_every == 0:
                rate, ex = dev_cer(model, dev, device)
                rec = {"step": step, "epoch": epoch, "elapsed_s": round(time.time() - t0, 1),
                       "lr": lr, "utts": len(corpus.feats), "composed_seen": corpus.composed_seen,
                       "dev_greedy_cer": round(rate, 4),
                       **{k: round(float(agg[k]) / agg["n"], 3) for k in ("loss", "ctc", "att")}}
                agg = {"loss": 0.0, "ctc": 0.0, "att": 0.0, "n": 0}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log(json.dumps(rec, ensure_ascii=False), "| e.g.", ex[0][1][:30])
                write_model_dir(os.path.join(a.out, "snapshot"), config, units_path, cmvn,
                                model.state_dict(), half=True)
                if step >= a.abort_step and rate > 0.95:
                    stop = f"not learning: dev greedy CER {rate:.3f} at step {step}"
                    break
    log("stopped:", stop)
    rate, _ = dev_cer(model, dev, device)
    write_model_dir(os.path.join(a.out, "model_fp32"), config, units_path, cmvn,
                    model.state_dict())
    write_model_dir(os.path.join(a.out, "model"), config, units_path, cmvn,
                    model.state_dict(), half=True)
    summary = {"stopped": stop, "steps": step, "epochs": epoch, "minutes": round((time.time() - t0) / 60, 2),
               "train_utts": len(corpus.real[0]), "composed_utts": corpus.composed_seen,
               "dev_greedy_cer": round(rate, 4), "init": a.init,
               "params_M": round(n_params / 1e6, 2), "peak_lr": a.peak_lr, "warmup": a.warmup,
               "max_frames": a.max_frames, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=1)
    log("summary", json.dumps(summary))
    open(os.path.join(a.out, "DONE"), "w").write(stop + "\n")


# ---------------------------------------------------------------- fp32 vs fp16 accuracy
def cmd_eval(a):
    """CER of each decoding mode on the dev shard with the eager fp32 model and the fp16
    GPU engine (torch_cuda), from the same features; and how many transcripts agree."""
    from wenet_triton.audio.torch_fbank import TorchFbank
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import TorchEngine
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.pipeline import Recognizer

    spec = load_model_dir(a.model)
    model = ASRModel.from_spec(spec)
    settings = export_settings(spec, model, a.beam_size, None, None)
    dev = torch.load(os.path.join(a.corpus, "dev.pt"), weights_only=True)
    feats = [f.float().cpu().numpy() for f in shard_feats(dev, TorchFbank(device="cuda"))]
    engines = {"eager_fp32": lambda: TorchEngine(model, settings, "cuda", None),
               "torch_cuda_fp16": lambda: CudaEngine(model, settings, "cuda", "float16")}
    report, texts = {"model": a.model, "utts": len(feats)}, {}
    for name, make in engines.items():
        rec = Recognizer(make(), Vocab(spec.vocab, spec.eos))
        res = []
        for i in range(0, len(feats), a.batch_size):
            res += rec.recognize_feats(feats[i:i + a.batch_size])
        texts_of = [rec.mode_texts(r) for r in res]
        modes = {m: [t[m] for t in texts_of] for m in texts_of[0]}
        report[name] = {m: round(cer(zip(dev["texts"], h))[0], 4) for m, h in modes.items()}
        texts[name] = modes["attention_rescoring"]
        log(name, json.dumps(report[name]))
    same = sum(x == y for x, y in zip(texts["eager_fp32"], texts["torch_cuda_fp16"]))
    report["identical_rescored_transcripts"] = same
    json.dump(report, open(a.out, "w"), indent=1)
    log(json.dumps(report))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="synthesize audio and write fbank shards")
    g.add_argument("--espeak-dir", default="system", help="dir with espeak-ng, lib/, espeak-ng-data/ or 'system'")
    g.add_argument("--synth-dir", default="../shared/synth", help="gen.py, units.txt, train.txt, dev.txt")
    g.add_argument("--out", required=True)
    g.add_argument("--train-list", nargs="+", default=["train.txt"],
                   help="text lists in --synth-dir, synthesized in this order")
    g.add_argument("--num-train", type=int, default=0, help="0 = all of the lists")
    g.add_argument("--num-dev", type=int, default=200)
    g.add_argument("--shard-size", type=int, default=4000)
    g.add_argument("--jobs", type=int, default=os.cpu_count())
    c = sub.add_parser("compose", help="random sentences assembled from per-voice word clips")
    c.add_argument("--espeak-dir", default="system")
    c.add_argument("--synth-dir", default="../shared/synth", help="gen.py, units.txt, words.txt")
    c.add_argument("--out", required=True, help="where comp_*.pt shards go (the trainer deletes them)")
    c.add_argument("--jobs", type=int, default=4)
    c.add_argument("--minutes", type=float, default=20.0, help="stop after this long (or at OUT/STOP)")
    c.add_argument("--bank-minutes", type=float, default=1.5, help="compose this long, then a new voice")
    c.add_argument("--shard-size", type=int, default=2000)
    c.add_argument("--max-pending", type=int, default=6, help="shards waiting for the trainer at most")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--num-words", type=int, default=0, help="0 = the whole word list")
    t = sub.add_parser("train", help="train on the shards (while gen is still adding more)")
    t.add_argument("--corpus", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    t.add_argument("--device", default="cuda")
    t.add_argument("--peak-lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=1000)
    t.add_argument("--max-frames", type=int, default=64000, help="padded fbank frames per batch")
    t.add_argument("--grad-clip", type=float, default=5.0)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--abort-step", type=int, default=3000, help="stop if dev CER > 95%% by then")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=4, help="torch CPU threads of the trainer")
    t.add_argument("--init", help="model dir to go on from (its train.yaml, CMVN and weights)")
    t.add_argument("--composed-dir", nargs="*", default=[], help="more dirs where compose writes comp_*.pt")
    t.add_argument("--max-composed", type=int, default=400000, help="composed utterances held at most")
    t.add_argument("--refresh-every", type=int, default=200,
                   help="steps after which waiting shards are loaded")
    t.add_argument("--tiny", action="store_true", help="tiny model for a CPU dry run")
    t.add_argument("--no-augment", action="store_true",
                   help="no SpecAugment, full context (e.g. to check it can overfit a few utts)")
    e = sub.add_parser("eval", help="dev-shard CER: eager fp32 vs the fp16 GPU engine")
    e.add_argument("--model", required=True)
    e.add_argument("--corpus", required=True)
    e.add_argument("--out", required=True, help="JSON report")
    e.add_argument("--beam-size", type=int, default=10)
    e.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args(argv)
    if a.cmd == "eval":
        cmd_eval(a)
    elif a.cmd == "compose":
        cmd_compose(a)
    elif a.cmd == "gen":
        import shutil
        os.makedirs(a.out, exist_ok=True)
        shutil.copyfile(os.path.join(a.synth_dir, "units.txt"), os.path.join(a.out, "units.txt"))
        cmd_gen(a)
    else:
        cmd_train(a)


if __name__ == "__main__":
    main()
