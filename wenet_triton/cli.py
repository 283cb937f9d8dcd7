"""`wenet-triton`: one entry point for export, build, serve, transcribe, cer, bench."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from tqdm import tqdm

from wenet_triton import cli_client, cli_serving, cli_stream
from wenet_triton.audio.frontend import (
    AudioError,
    Fbank,
    check_waveform,
    expand_inputs,
    min_samples,
    read_audio,
    utt_id,
)
from wenet_triton.contract import ENGINES
from wenet_triton.decode.cer import cer_files, cer_report, cer_summary
from wenet_triton.decode.lm import LMError, estimate, text_to_ids
from wenet_triton.decode.options import from_args
from wenet_triton.decode.vocab import Vocab, read_vocab
from wenet_triton.engines import fp8, open_engine
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.engines.export import export_onnx
from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import check_model_dir
from wenet_triton.paths import default_model_dir
from wenet_triton.pipeline import Recognizer
from wenet_triton.streaming import streaming_recognizer

log = logging.getLogger("wenet_triton")


def _model_arg(p: argparse.ArgumentParser, required: bool = False):
    d = default_model_dir()
    p.add_argument("--model", default=None if required else d, required=required and d is None,
                   help="WeNet model dir (train.yaml, final.pt, units.txt|words.txt, global_cmvn)"
                   + (f"; default {d}" if d and not required else ""))


def _weights_args(p: argparse.ArgumentParser, lm: bool = False):
    p.add_argument("--beam-size", type=int, default=None,
                   help="CTC prefix beam / n-best size (default: the model's decoding.yaml, else 10)")
    if lm:
        p.add_argument("--lm", default=None, help="token n-gram LM (ARPA, .gz ok) fused into the "
                       "prefix beam search and rescoring; `none` turns off the model's "
                       "(default: the model's decoding.yaml, else none)")
        p.add_argument("--lm-weight", type=float, default=None,
                       help="LM weight in the prefix beam search (default: decoding.yaml, else 0.5)")
        p.add_argument("--lm-rescore-weight", type=float, default=None,
                       help="LM weight added in attention rescoring (default: decoding.yaml, else 0.5)")
    p.add_argument("--ctc-weight", type=float, default=None,
                   help="CTC weight in attention rescoring (default: train.yaml model_conf)")
    p.add_argument("--reverse-weight", type=float, default=None,
                   help="right-to-left decoder weight (default: train.yaml model_conf)")


def progress(iterable, total: int, desc: str):
    """tqdm on stderr when it is a terminal or the job is long; silent for short jobs."""
    return tqdm(iterable, total=total, desc=desc, unit="wav", file=sys.stderr,
                disable=total < 50 and not sys.stderr.isatty())


# -- commands ---------------------------------------------------------------------------------
def cmd_export(a):
    s = export_onnx(a.model, a.out, from_args(a).beam_size, a.ctc_weight, a.reverse_weight)
    for k, v in s.get("verification", {}).items():
        print(f"verified {k}: " + ", ".join(f"{n} max err {e:.2e}" for n, e in v.items()))
    print(f"wrote {a.out}/encoder.onnx, decoder.onnx, wenet_triton.json, units.txt")


def cmd_transcribe(a):
    if a.server:
        return cli_client.transcribe_remote(a)
    files = expand_inputs(a.wavs)
    if not files:
        sys.exit("transcribe: no audio files given")
    dec = from_args(a)
    if a.chunk_size:  # a model that cannot stream fails before any export
        check_model_dir(a.model)
    engine_dir = a.engine_dir or ensure_export(a.model, None, dec.beam_size, a.ctc_weight,
                                               a.reverse_weight)
    eng = open_engine(engine_dir, a.engine, a.device, a.dtype, a.model, a.threads)
    if a.engine_dir and a.beam_size is None:
        dec.beam_size = eng.settings.beam_size  # a given export fixes the beam
    if a.chunk_size:  # WeNet's simulate_streaming: chunk by chunk with caches
        rec = streaming_recognizer(eng, engine_dir, a.model, a.engine, a.chunk_size,
                                   a.left_chunks, dec, a.device, a.threads)
    else:
        rec = Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=dec)
    if rec.lm:
        print(f"# LM {dec.lm}: weight {dec.lm_weight} in the search, {dec.lm_rescore_weight} "
              f"in rescoring; beam {dec.beam_size}", file=sys.stderr)
    rate = rec.fbank.conf.sample_rate
    hyps, failed, audio_s = {}, 0, 0.0
    by_mode = {"ctc_greedy": {}, "ctc_prefix_beam": {}}  # the other decoding modes, for --ref
    t0 = time.time()
    bar = progress(range(0, len(files), a.batch_size), (len(files) + a.batch_size - 1) // a.batch_size,
                   "transcribe")
    for start in bar:
        batch = files[start:start + a.batch_size]
        wavs, names, paths = [], [], []
        for path in batch:
            try:
                wavs.append(_usable_audio(read_audio(path, rate), path, rec))
                names.append(utt_id(path))
                paths.append(path)
            except AudioError as e:
                print(f"error: {e}", file=sys.stderr)
                failed += 1
        if not wavs:
            continue
        results, errors = _recognize_each(rec, wavs, paths)
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        failed += len(errors)
        keep = [i for i, r in enumerate(results) if r is not None]
        audio_s += sum(len(wavs[i]) for i in keep) / rate
        names, results = [names[i] for i in keep], [results[i] for i in keep]
        for n, r in zip(names, results):
            hyps[n] = r.text
            texts = rec.mode_texts(r)
            for mode, h in by_mode.items():
                h[n] = texts[mode]
            print(f"{n}\t{r.text}", flush=True)
    wall = time.time() - t0
    print(_summary(len(hyps), failed, audio_s, wall), file=sys.stderr)
    if a.ref:
        print(cer_summary(a.ref, hyps) + " attention rescoring", file=sys.stderr)
        for mode, h in by_mode.items():
            lm = " + LM" if rec.lm and mode == "ctc_prefix_beam" else ""
            print(cer_summary(a.ref, h) + " " + mode.replace("_", " ") + lm, file=sys.stderr)
    if a.cer_json:
        if not a.ref:
            sys.exit("transcribe: --cer-json needs --ref")
        by_mode["attention_rescoring"] = hyps
        report = {m: cer_report(a.ref, h) for m, h in by_mode.items()}
        report.update(model=a.model, engine=a.engine, dtype=a.dtype, files=len(files),
                      decoding=rec.decoding.as_dict())
        with open(a.cer_json, "w") as f:
            json.dump(report, f, indent=1)
    if failed:
        sys.exit(1)


def _usable_audio(wav, path: str, rec):
    """The waveform, or AudioError naming the file: empty, non-finite, or shorter than one
    fbank frame (checked per file so that it costs no other file of its batch)."""
    wav = check_waveform(wav, path)
    need = min_samples(rec.fbank.conf)
    if len(wav) < need:
        raise AudioError(f"{path}: {len(wav)} samples is too short (one "
                         f"{rec.fbank.conf.frame_length_ms:g} ms frame needs {need})")
    return wav


def _recognize_each(rec, wavs, paths):
    """Recognize a batch; if it fails, each file alone, so one bad file costs only itself.
    -> (results with None where a file failed, error messages naming those files)."""
    try:
        return rec.recognize(wavs), []
    except Exception as e:  # noqa: BLE001 - retried per file below
        if len(wavs) == 1:
            return [None], [f"{paths[0]}: {e}"]
    results, errors = [], []
    for w, p in zip(wavs, paths):
        r, err = _recognize_each(rec, [w], [p])
        results += r
        errors += err
    return results, errors


def _summary(ok: int, failed: int, audio_s: float, wall: float) -> str:
    """'# N files, ...' with an RTF only when some audio was transcribed."""
    head = f"# {ok} files" + (f", {failed} failed" if failed else "")
    if not ok:
        return f"{head}, nothing transcribed ({wall:.2f} s wall)"
    return f"{head}, {audio_s:.1f} s audio, {wall:.2f} s wall, RTF {wall / audio_s:.4f}"


def cmd_lm(a):
    units_path = a.units or os.path.join(a.model or "", "units.txt")
    if not os.path.exists(units_path):
        sys.exit(f"lm: units file {units_path} not found (give --units or --model)")
    units = read_vocab(units_path)
    try:
        min_count = [int(x) for x in a.min_count.split(",")] if a.min_count else []
    except ValueError:
        sys.exit(f"lm: --min-count takes comma-separated integers, got {a.min_count!r}")
    t0 = time.time()
    try:
        sents, unk = text_to_ids(a.text, units, a.with_ids)
        print(f"# {len(sents):,} sentences, {sum(map(len, sents)):,} tokens"
              + (f", {unk:,} outside the units (<unk>)" if unk else ""), file=sys.stderr)
        lm = estimate(sents, len(units), a.order, min_count,
                      progress=lambda m: print(f"# {m} ({time.time() - t0:.0f} s)", file=sys.stderr))
    except LMError as e:
        sys.exit(f"lm: {e}")
    lm.write_arpa(a.out, units)
    print(f"wrote {a.out}: {lm} in {time.time() - t0:.0f} s")


def cmd_calibrate_fp8(a):
    files = expand_inputs(a.wavs)[: a.max_wavs]
    if not files:
        sys.exit("calibrate-fp8: no audio files given")
    spec = load_model_dir(a.model)
    fb = Fbank(spec.fbank)
    feats = []
    for path in progress(files, len(files), "fbank"):
        try:
            feats.append(fb(check_waveform(read_audio(path, spec.fbank.sample_rate), path)))
        except AudioError as e:
            print(f"error: {e} (left out)", file=sys.stderr)
    scales = fp8.calibrate(ASRModel.from_spec(spec), fp8.feats_batches(feats), a.device)
    scales["model"] = os.path.abspath(a.model)
    fp8.save(scales, a.out)
    print(f"wrote {a.out}: activation ranges of {len(scales['ffn'])} encoder FFNs from {scales['utterances']} "
          f"utterances ({scales['frames']} frames)")
    print(f"use them: WENET_TRITON_FP8_SCALES={a.out} wenet-triton serve|transcribe|bench ... (torch_cuda on a "
          "GPU with FP8 tensor cores)", file=sys.stderr)


def cmd_cer(a):
    r = cer_files(a.ref, a.hyp)
    print(f"CER {r['cer'] * 100:.2f}% ({r['errors']}/{r['chars']} chars, {r['utts']} utts)")
    if r["missing_in_hyp"]:
        print(f"{len(r['missing_in_hyp'])} reference utts missing in {a.hyp}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wenet-triton", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="export encoder.onnx/decoder.onnx (WeNet GPU I/O) and verify")
    _model_arg(e)
    e.add_argument("--out", required=True, help="output directory")
    _weights_args(e)
    e.set_defaults(func=cmd_export)

    t = sub.add_parser("transcribe", help="transcribe wav files (offline, or with --server over "
                       "gRPC); prints <utt>\\t<text>")
    _model_arg(t)
    cli_client.add_server_args(t)
    t.add_argument("wavs", nargs="+", help="wav/flac files, directories or globs")
    t.add_argument("--engine", default="onnxruntime", choices=ENGINES,
                   help="torch_cuda: fp16 GPU engine with fused kernels and CUDA graphs")
    t.add_argument("--engine-dir", help="use this export instead of the cached one")
    t.add_argument("--device", default="cpu", help="torch engine device (cpu, cuda)")
    t.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="torch: autocast dtype; torch_cuda: compute dtype (default float16)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all)")
    t.add_argument("--chunk-size", type=int, default=0,
                   help="decode chunk by chunk like WeNet's simulate_streaming (encoder frames "
                   "per chunk, e.g. 16; a causal U2++ model; engines onnxruntime, torch and "
                   "torch_cuda (its GPU chunk encoder needs --left-chunks > 0; with -1 the "
                   "PyTorch one runs on the GPU)); 0: full context")
    t.add_argument("--left-chunks", type=int, default=-1,
                   help="with --chunk-size: chunks of left context in the attention cache "
                   "(-1: all)")
    t.add_argument("--ref", help="Kaldi `text` file: print CER against it (attention rescoring, "
                   "CTC prefix beam and CTC greedy)")
    t.add_argument("--cer-json", help="with --ref: write the CER of each decoding mode here")
    _weights_args(t, lm=True)
    t.set_defaults(func=cmd_transcribe)

    m = sub.add_parser("lm", help="build a token n-gram LM (ARPA) from text for --lm",
                       description="Interpolated modified Kneser-Ney n-gram LM over the model's "
                       "units (characters), written as ARPA (.gz ok).")
    _model_arg(m)
    m.add_argument("--units", help="units.txt (default: the model's)")
    m.add_argument("--text", nargs="+", required=True, help="training text, one sentence per line")
    m.add_argument("--with-ids", action="store_true",
                   help="lines start with an utterance id (Kaldi `text`): drop it")
    m.add_argument("--order", type=int, default=5)
    m.add_argument("--min-count", default="1,3,3,3,3",
                   help="per order, fewest occurrences an n-gram needs to be kept (pruning)")
    m.add_argument("--out", required=True, help="ARPA file to write (.gz: gzip)")
    m.set_defaults(func=cmd_lm)

    q = sub.add_parser("calibrate-fp8", help="measure the encoder FFNs' activation ranges on audio for the "
                       "opt-in FP8 GEMMs (torch_cuda; WENET_TRITON_FP8_SCALES=<out>)",
                       description="Runs the model's encoder (PyTorch, fp32) over real audio and writes, per "
                       "encoder FFN, the largest |input| and |hidden| value: the static e4m3 scales of the "
                       "FP8 feed-forward GEMMs (wenet_triton/engines/fp8.py). Use audio like what will be "
                       "served; a few dozen utterances are enough.")
    _model_arg(q)
    q.add_argument("wavs", nargs="+", help="wav/flac files, directories or globs")
    q.add_argument("--out", required=True, help="scales JSON to write")
    q.add_argument("--max-wavs", type=int, default=200, help="use at most this many files (sorted)")
    q.add_argument("--device", default="cpu", help="where the encoder runs (cpu, cuda)")
    q.set_defaults(func=cmd_calibrate_fp8)

    c = sub.add_parser("cer", help="character error rate of a hypothesis text file")
    c.add_argument("ref")
    c.add_argument("hyp")
    c.set_defaults(func=cmd_cer)


    cli_serving.add_commands(sub, _model_arg, _weights_args)
    cli_stream.add_command(sub)
    return p


def main(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if (hasattr(a, "model") and a.model is None and a.command not in ("serve", "cer", "lm")
            and not getattr(a, "server", None)):
        p.error("--model is required (no default model found)")
    try:
        a.func(a)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, FileNotFoundError) as e:  # CheckpointError, AudioError are ValueErrors
        if a.verbose:
            raise
        sys.exit(f"wenet-triton {a.command}: error: {e}")


if __name__ == "__main__":
    main()
