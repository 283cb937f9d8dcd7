#!/usr/bin/env python3
"""How far can attention rescoring go? CER of the best hypothesis in the CTC prefix-beam
n-best (the oracle), next to the top-1 and the rescored CER, through the onnxruntime export,
with the model's decoding.yaml (beam, LM) unless flags say otherwise.

    python recipes/demo_zh_synth/nbest_oracle.py                           # demo model, its LM, beam 20
    python recipes/demo_zh_synth/nbest_oracle.py --lm none --beam 50       # the model alone
"""
import argparse
import glob
import os

from wenet_triton import artifacts, decoding, engines
from wenet_triton.audio.frontend import read_audio
from wenet_triton.cli import default_model_dir
from wenet_triton.decode.cer import _chars, edit_distance, read_text
from wenet_triton.decode.vocab import Vocab
from wenet_triton.pipeline import Recognizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model_dir())
    p.add_argument("--beam", type=int, default=None, help="default: decoding.yaml, else 10")
    p.add_argument("--lm", default=None, help="ARPA LM, or none (default: decoding.yaml)")
    p.add_argument("--wav-dir", default="../shared/data/synth_test")
    p.add_argument("--ref", default=None, help="Kaldi text (default: <wav-dir>/text)")
    a = p.parse_args()
    dec = decoding.resolve(a.model, beam_size=a.beam, lm=a.lm)
    d = artifacts.ensure_export(a.model, None, dec.beam_size)
    eng = engines.open_engine(d, "onnxruntime")
    vocab = Vocab.from_engine_dir(d, eng.settings)
    rec = Recognizer(eng, vocab, decoding=dec)
    ref = read_text(a.ref or os.path.join(a.wav_dir, "text"))
    files = sorted(f for f in glob.glob(os.path.join(a.wav_dir, "*.wav"))
                   if os.path.basename(f)[:-4] in ref)
    chars = oracle = top1 = rescored = exact = 0
    for i in range(0, len(files), 10):
        batch = files[i:i + 10]
        for f, r in zip(batch, rec.recognize([read_audio(x) for x in batch])):
            truth = _chars(ref[os.path.basename(f)[:-4]])
            errs = [edit_distance(truth, _chars(vocab.text(h[0]))) for h in r.nbest]
            chars += len(truth)
            oracle += min(errs)
            top1 += errs[0]
            rescored += edit_distance(truth, _chars(r.text))
            exact += min(errs) == 0
    lm = f", LM {os.path.basename(dec.lm)}" if dec.lm else ""
    print(f"{len(files)} utts, beam {dec.beam_size}{lm}: n-best oracle CER {oracle / chars:.2%}, "
          f"prefix-beam top-1 {top1 / chars:.2%}, attention rescoring {rescored / chars:.2%}; "
          f"exact sentence in the n-best for {exact}/{len(files)}")


if __name__ == "__main__":
    main()
