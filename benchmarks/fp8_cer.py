"""What the opt-in FP8 encoder FFNs (wenet_triton/engines/fp8.py) cost in accuracy: the CER of
a model over a test set with its FFNs in 16/32 bits and in FP8, the scales calibrated on
separate utterances of the same set (the first --calib files; the CER is over the rest).

    .venv/bin/python -m benchmarks.fp8_cer --out fp8_cer.csv                       # CPU: the simulation
    python3 -m benchmarks.fp8_cer --engine torch_cuda --out fp8_cer_gpu.csv        # a Hopper GPU: the kernels

`--engine torch` (default, CPU): the fp32 PyTorch model, and the same model with its FFNs
computing as the FP8 path does (fp8.simulate: operands rounded to e4m3 at the calibrated
scales, fp32 sums). `--engine torch_cuda`: the GPU engine in fp16 with and without the FP8
FFNs (batches of --batch utterances take the FP8 path: at least fp8.MIN_ROWS encoder
frames). Default decoding of the model (decoding.yaml: LM, beam). One CSV row per variant:
CER (%), errors, characters, utterances, and how many transcripts equal the first variant's.
The demo model knows synthetic espeak-ng speech only: these are CERs on synth_test, not on
real Mandarin."""
import argparse
import csv
import os
import sys

from wenet_triton.audio.frontend import expand_inputs, read_audio, utt_id
from wenet_triton.decode.cer import cer, read_text
from wenet_triton.decode.options import resolve
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines import fp8, open_engine
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.pipeline import Recognizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "synth_test")


def measure(model_dir: str, wav_dir: str, text: str, calib: int, engine: str, batch: int,
            limit: int = 0, hyps_dir: str = ""):
    files = expand_inputs([wav_dir])
    if len(files) <= calib:
        raise SystemExit(f"fp8_cer: {len(files)} files in {wav_dir}, need more than --calib {calib}")
    cal, test = files[:calib], files[calib:]
    if limit:
        test = test[:limit]
    dec = resolve(model_dir)
    engine_dir = ensure_export(model_dir, None, dec.beam_size)
    device = "cuda" if engine == "torch_cuda" else "cpu"

    def recognizer(env_scales=None):
        if env_scales:
            os.environ["WENET_TRITON_FP8_SCALES"] = env_scales
        try:
            eng = open_engine(engine_dir, engine, device, None, model_dir)
        finally:
            os.environ.pop("WENET_TRITON_FP8_SCALES", None)
        return Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=dec)

    base = recognizer()
    rate = base.fbank.conf.sample_rate
    feats = [base.fbank(read_audio(p, rate)) for p in cal]
    model = base.engine.model if engine == "torch" else None
    if model is None:
        from wenet_triton.model.checkpoint import load_model_dir
        from wenet_triton.model.conformer import ASRModel
        model = ASRModel.from_spec(load_model_dir(model_dir))
    scales = fp8.calibrate(model, fp8.feats_batches(feats), "cpu")
    wavs = [read_audio(p, rate) for p in test]
    names = [utt_id(p) for p in test]

    def run(rec):
        out = []
        for i in range(0, len(wavs), batch):
            out += [r.text for r in rec.recognize(wavs[i:i + batch])]
            print(f"  {min(i + batch, len(wavs))}/{len(wavs)}", end="\r", file=sys.stderr, flush=True)
        return dict(zip(names, out))

    if engine == "torch":
        plain = run(base)
        with fp8.simulate(base.engine.model, scales):
            q8 = run(base)
        labels = ("fp32", "fp8_simulated")
    else:
        plain = run(base)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fp8_cer_scales.json")
        fp8.save(scales, path)
        q8 = run(recognizer(path))
        labels = ("fp16", "fp8")
    ref = read_text(text)
    rows = []
    for label, hyps in zip(labels, (plain, q8)):
        if hyps_dir:  # Kaldi text: `wenet-triton cer` or a diff against another run's
            os.makedirs(hyps_dir, exist_ok=True)
            with open(os.path.join(hyps_dir, f"{engine}_{label}.txt"), "w") as f:
                f.writelines(f"{u}\t{hyps[u]}\n" for u in names)
        rate_, errors, chars = cer((ref[u], hyps[u]) for u in names)
        rows.append({"model": os.path.basename(model_dir.rstrip("/")), "engine": engine, "variant": label,
                     "cer_pct": round(100 * rate_, 3), "errors": errors, "chars": chars, "utts": len(names),
                     "calib_utts": calib, "same_as_first": sum(plain[u] == hyps[u] for u in names)})
        print(f"{label:>14}: CER {100 * rate_:.3f} % ({errors}/{chars}), {rows[-1]['same_as_first']}/{len(names)} "
              f"transcripts as {labels[0]}", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "demo_zh_synth"))
    p.add_argument("--wavs", default=SHARED, help="a directory of wavs (sorted; the first --calib calibrate)")
    p.add_argument("--text", default=None, help="Kaldi text of the wavs (default: <wavs>/text)")
    p.add_argument("--calib", type=int, default=20)
    p.add_argument("--limit", type=int, default=0, help="score at most this many of the rest (0: all)")
    p.add_argument("--engine", default="torch", choices=["torch", "torch_cuda"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", help="CSV to write")
    p.add_argument("--hyps-dir", default="", help="also write each variant's transcripts here")
    a = p.parse_args(argv)
    rows = measure(a.model, a.wavs, a.text or os.path.join(a.wavs, "text"), a.calib, a.engine, a.batch, a.limit,
                   a.hyps_dir)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
