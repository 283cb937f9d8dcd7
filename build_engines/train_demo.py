"""Train the demo U2++ model on synthetic Mandarin (espeak-ng) speech.

Two processes, run side by side on the GPU machine by build_engines/train_demo.sh:
  gen    synthesizes ../shared/synth text lists with the shared generator (gen.py) on all
         CPU cores, computes the serving front-end's fbank (kaldi-native-fbank) and writes
         shards of fp16 features + token ids (dev first, then train shards as they finish)
  train  waits for the dev shard and the first train shard, trains on whatever shards
         exist at the start of each epoch (so training starts while data is still being
         made), logs loss and dev greedy CER, snapshots the model, and stops at its time
         budget, writing WeNet model directories (fp32 and fp16 copies)

Both run on a CPU too (tiny settings) for a dry run:
  python build_engines/train_demo.py gen --espeak-dir system --synth-dir ../shared/synth \
      --out work/corpus --num-train 400 --num-dev 40 --shard-size 200 --jobs 2
  python build_engines/train_demo.py train --corpus work/corpus --out work/train --minutes 3 \
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from wenet_triton.cer import cer, read_text  # noqa: E402
from wenet_triton.checkpoint import load_model_dir, read_vocab  # noqa: E402
from wenet_triton.model import ASRModel  # noqa: E402
from wenet_triton.train import (DEMO_CONFIG, cmvn_stats, dynamic_chunk_size, greedy_ids,  # noqa: E402
                                spec_augment, u2_loss, warmup_cosine, write_model_dir)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ---------------------------------------------------------------- corpus generation
_W = {}


def _init_worker(synth_dir, espeak_dir, units):
    sys.path.insert(0, synth_dir)
    import gen  # the shared generator: deterministic audio per utterance id

    from wenet_triton.frontend import Fbank
    _W.update(gen=gen, espeak=espeak_dir, fbank=Fbank(), units=units)


def _make(item):
    uid, text = item
    _, x = _W["gen"].synth(_W["espeak"], uid, text)
    feats = _W["fbank"](x.astype(np.float32) / 32768.0).astype(np.float16)
    ids = np.array([_W["units"].get(c, 1) for c in text if not c.isspace()], np.int16)
    return uid, feats, ids, len(x)


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
            shard = {"uids": [r[0] for r in res], "feats": [torch.from_numpy(r[1]) for r in res],
                     "ids": [torch.from_numpy(r[2]) for r in res],
                     "texts": [t for _, t in items]}
            torch.save(shard, path + ".tmp")
            os.replace(path + ".tmp", path)  # the trainer only sees complete shards
            done_s += sum(r[3] for r in res) / 16000
            el = time.time() - t0
            log(f"gen {name}: {len(res)} utts; total {done_s / 3600:.1f} h audio in {el:.0f} s "
                f"({done_s / el:.0f}x real time)")
    open(os.path.join(a.out, "DONE"), "w").write("ok\n")


# ---------------------------------------------------------------- training
class Corpus:
    """Shards held on the training device; batches by a padded-frames budget."""

    def __init__(self, corpus_dir, device):
        self.dir, self.device = corpus_dir, device
        self.loaded, self.feats, self.ids, self.frames = set(), [], [], []

    def refresh(self):
        new = 0
        for p in sorted(glob.glob(os.path.join(self.dir, "train_*.pt"))):
            if p in self.loaded:
                continue
            s = torch.load(p, weights_only=True)
            self.feats += [f.to(self.device) for f in s["feats"]]
            self.ids += [i.long().to(self.device) for i in s["ids"]]
            self.frames += [f.shape[0] for f in s["feats"]]
            self.loaded.add(p)
            new += len(s["feats"])
        return new

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
        x, lens = pad([f.to(device) for f in dev["feats"][i:i + bs]], device)
        for ids, ref in zip(greedy_ids(model, x, lens), dev["texts"][i:i + bs]):
            pairs.append((ref, model.spec.ids_to_text(ids)))
    model.train()
    return cer(pairs)[0], pairs[:2]


def cmd_train(a):
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls (no bf16: see #4)
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    rng, gen = random.Random(a.seed), torch.Generator().manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train_log.jsonl"), "a")

    while not (os.path.exists(os.path.join(a.corpus, "dev.pt"))
               and glob.glob(os.path.join(a.corpus, "train_*.pt"))):
        time.sleep(2)
    dev = torch.load(os.path.join(a.corpus, "dev.pt"), weights_only=True)
    corpus = Corpus(a.corpus, device)
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
        new = corpus.refresh()
        if new:
            log(f"loaded {new} more utts ({len(corpus.feats)} in all)")
        epoch += 1
        for batch in corpus.batches(a.max_frames, rng):
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
                       "lr": lr, "utts": len(corpus.feats), "dev_greedy_cer": round(rate, 4),
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
               "train_utts": len(corpus.feats), "dev_greedy_cer": round(rate, 4),
               "params_M": round(n_params / 1e6, 2), "peak_lr": a.peak_lr, "warmup": a.warmup,
               "max_frames": a.max_frames, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=1)
    log("summary", json.dumps(summary))
    open(os.path.join(a.out, "DONE"), "w").write(stop + "\n")


# ---------------------------------------------------------------- fp32 vs fp16 accuracy
def cmd_eval(a):
    """CER of each decoding mode on the dev shard with the eager fp32 model and the fp16
    GPU engine (torch_cuda), from the same features; and how many transcripts agree."""
    from wenet_triton.engines import TorchEngine
    from wenet_triton.export import export_settings
    from wenet_triton.gpu_engine import CudaEngine
    from wenet_triton.pipeline import Recognizer, Vocab

    spec = load_model_dir(a.model)
    model = ASRModel.from_spec(spec)
    settings = export_settings(spec, model, a.beam_size, None, None)
    dev = torch.load(os.path.join(a.corpus, "dev.pt"), weights_only=True)
    feats = [f.float().numpy() for f in dev["feats"]]
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
    t.add_argument("--init", help="model dir to go on from (its train.yaml, CMVN and weights)")
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
    elif a.cmd == "gen":
        import shutil
        os.makedirs(a.out, exist_ok=True)
        shutil.copyfile(os.path.join(a.synth_dir, "units.txt"), os.path.join(a.out, "units.txt"))
        cmd_gen(a)
    else:
        cmd_train(a)


if __name__ == "__main__":
    main()
