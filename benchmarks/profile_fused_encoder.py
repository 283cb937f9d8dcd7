#!/usr/bin/env python3
"""Where the fused encoder model's time goes on the GPU (fbank + engine + output copies),
per dynamic-batch size; reads a rendered repository (gpu_serve.sh start makes /tmp/repo_gpu)."""
import argparse
import glob
import json
import os

import numpy as np

from wenet_triton.audio.frontend import read_audio
from wenet_triton.audio.torch_fbank import TorchFbank
from wenet_triton.bench import gpu_ms
from wenet_triton.contract import FbankConf
from wenet_triton.engines import open_engine


def timed(fn):
    """(mean ms, one output) of fn on the GPU."""
    return gpu_ms(fn), fn()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repo", default="/tmp/repo_gpu")
    p.add_argument("--wav-dir", default=".device_serve/wavs")
    p.add_argument("--seconds", type=float, default=5)
    a = p.parse_args()
    vdir = os.path.join(a.repo, "encoder", "1")
    eng = open_engine(vdir, "torch_cuda", device="cuda", dtype="float16", model_dir=os.path.join(vdir, "model"))
    conf = FbankConf(**json.load(open(os.path.join(vdir, "wenet_triton.json")))["fbank"])
    fb = TorchFbank(conf, "cuda")
    n = int(a.seconds * 16000)
    base = [np.resize(read_audio(f), n).astype(np.float32) for f in sorted(glob.glob(a.wav_dir + "/*.wav"))]
    print(f"{'batch':>5} {'fbank':>7} {'encode':>7} {'to_cpu':>7} {'total':>7} ms  (per utt total)")
    for B in (1, 8, 32, 64):
        wavs = [base[i % len(base)] for i in range(B)]
        t_fb, (x, l) = timed(lambda: fb.batch_tensor(wavs))
        t_enc, outs = timed(lambda: eng.encode_tensors(x, l))
        t_cpu, _ = timed(lambda: [t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy() for t in outs])
        tot = t_fb + t_enc + t_cpu
        print(f"{B:>5} {t_fb:7.2f} {t_enc:7.2f} {t_cpu:7.2f} {tot:7.2f}     ({tot / B:.2f})")


if __name__ == "__main__":
    main()
