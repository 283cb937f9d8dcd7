#!/usr/bin/env python3
"""CPU cost per utterance of the serving path's CPU stages: fbank (kaldi-native-fbank),
the C++ CTC prefix beam search (beam 10; and with the model's decoding.yaml beam and LM
when it has one) and the packing of rescoring inputs, on fixed-length utterances through
the onnxruntime export of a model (default: the demo model)."""
import argparse
import glob
import os
import time

import numpy as np

from wenet_triton.audio.frontend import read_audio
from wenet_triton.decode import options as decoding
from wenet_triton.decode import search
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines import artifacts, open_engine
from wenet_triton.paths import default_model_dir
from wenet_triton.pipeline import Recognizer


def per_utt_ms(fn, n_utts, reps=5):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps / n_utts * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=default_model_dir())
    p.add_argument("--wav-dir", default="../shared/data/synth_test")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--count", type=int, default=16)
    a = p.parse_args()
    d = artifacts.ensure_export(a.model, None, 10)
    eng = open_engine(d, "onnxruntime")
    s = eng.settings
    knf = Recognizer(eng, Vocab.from_engine_dir(d, s)).fbank  # kaldi-native-fbank (the default)
    n = int(a.seconds * 16000)
    wavs = [np.resize(read_audio(f), n).astype(np.float32)
            for f in sorted(glob.glob(os.path.join(a.wav_dir, "*.wav")))[: a.count]]
    feats = [knf(w) for w in wavs]
    enc = eng.encode(np.stack(feats), np.array([f.shape[0] for f in feats], np.int32))
    lp, ix, ln = enc["beam_log_probs"], enc["beam_log_probs_idx"], enc["encoder_out_lens"].reshape(-1)
    nbest = search.ctc_prefix_beam_search_batch(lp, ix, ln, s.beam_size, s.blank)
    rows = [("fbank (kaldi-native-fbank)", per_utt_ms(lambda: [knf(w) for w in wavs], len(wavs))),
            ("CTC prefix beam search (C++)", per_utt_ms(
                lambda: search.ctc_prefix_beam_search_batch(lp, ix, ln, s.beam_size, s.blank), len(wavs))),
            ("rescoring inputs", per_utt_ms(
                lambda: search.rescoring_inputs(nbest, s.beam_size, s.sos, s.eos), len(wavs)))]
    dec = decoding.resolve(a.model)
    if dec.lm:  # the model's decoding: its beam (the export's top-k) with and without its LM
        d2 = artifacts.ensure_export(a.model, None, dec.beam_size)
        e2 = open_engine(d2, "onnxruntime").encode(
            np.stack(feats), np.array([f.shape[0] for f in feats], np.int32))
        lm = decoding.load_lm(dec.lm, Vocab.from_engine_dir(d2, s).tokens)
        args = (e2["beam_log_probs"], e2["beam_log_probs_idx"], ln, dec.beam_size, s.blank)
        rows[2:2] = [(f"  beam {dec.beam_size}, no LM", per_utt_ms(
                         lambda: search.ctc_prefix_beam_search_batch(*args), len(wavs))),
                     (f"  beam {dec.beam_size} + LM ({os.path.basename(dec.lm)})", per_utt_ms(
                         lambda: search.ctc_prefix_beam_search_batch(*args, lm, dec.lm_weight), len(wavs)))]
    print(f"{len(wavs)} utterances of {a.seconds:g} s, {np.mean([len(h[0][0]) for h in nbest]):.1f} tokens each")
    for name, ms in rows:
        print(f"{name:<32} {ms:7.3f} ms per utterance")


if __name__ == "__main__":
    main()
