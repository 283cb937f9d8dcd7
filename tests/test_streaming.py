"""Streaming (chunk-by-chunk) decoding against WeNet v2.2.1's own streaming decode
(../shared/reference/u2pp_conformer/streaming.json, streaming_<config>/*.npz)."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import model_dir, shared_path, wav_path
from test_search import nbest_close

from wenet_triton.audio.frontend import Fbank, read_audio
from wenet_triton.audio.streaming import (
    FrameFbank,
    FrameWindower,
    SampleFramer,
    StreamingFbank,
    StreamingFeatures,
    accept_many,
    window_bounds,
)
from wenet_triton.audio.torch_fbank import TorchFbank
from wenet_triton.contract import STREAMING_ENCODER_INPUTS, STREAMING_ENCODER_OUTPUTS
from wenet_triton.decode.cer import cer
from wenet_triton.decode.vocab import Vocab
from wenet_triton.engines import OnnxEngine
from wenet_triton.engines.export import export_onnx
from wenet_triton.engines.streaming import (
    ChunkRunner,
    CudaChunkBackend,
    DeviceChunkRunner,
    EncoderState,
    OnnxChunkBackend,
    TorchChunkBackend,
    _dummy_chunk_inputs,
    encode_chunked,
    export_chunk_encoder,
    open_chunk_runner,
)
from wenet_triton.model.checkpoint import CheckpointError, load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import streaming_settings
from wenet_triton.pipeline import Recognizer
from wenet_triton.streaming import StreamDecoder, StreamingRecognizer, feature_windows

CONFIGS = ["chunk16_left-1", "chunk8_left4", "chunk4_left-1"]
NAME = "u2pp_conformer"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CPU is shared; one torch thread is faster than two fighting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sref():
    with open(shared_path("reference", NAME, "streaming.json")) as f:
        return json.load(f)


def feats_of(utt):
    return np.load(shared_path("reference", NAME, f"{utt}.npz"))["feats"]


def chunked_ref(config, utt):
    return np.load(shared_path("reference", NAME, f"streaming_{config}", f"{utt}.npz"))


def geometry(sref, config):
    c = sref["configs"][config]
    return c["decoding_chunk_size"], c["num_decoding_left_chunks"]


@pytest.fixture(scope="module")
def model():
    return ASRModel.from_spec(load_model_dir(model_dir(NAME)))


@pytest.fixture(scope="module")
def u2pp_export(tmp_path_factory, sref):
    d = str(tmp_path_factory.mktemp("stream_export"))
    export_onnx(model_dir(NAME), d, beam_size=sref["beam_size"], ctc_weight=sref["ctc_weight"],
                reverse_weight=sref["reverse_weight"], verify=False)
    return d


@pytest.fixture(scope="module")
def chunked(model, sref):
    """(config, backend) -> (utts, encoder dict) of our chunk encoder on the stored feats
    (backend torch, or torch_cuda run on the CPU: fp32, no CUDA kernels, no graphs)."""
    cache = {}

    def get(config, n_utts, backend="torch"):
        key = config, backend
        if key not in cache or len(cache[key][0]) < n_utts:
            c, left = geometry(sref, config)
            run = open_chunk_runner(backend, model, c, left, sref["beam_size"])
            utts = sorted(sref["configs"][config]["utts"])[:n_utts]
            cache[key] = utts, encode_chunked(
                run, [feature_windows(feats_of(u), run.settings) for u in utts])
        utts, enc = cache[key]
        return utts[:n_utts], enc
    return get


def run_staggered(runner, windows, slots=4):
    """A server's view: streams join one per step (so they are at different offsets, with
    caches of different fill and lengths), at most `slots` at a time -> chunk_out per stream."""
    todo, active, outs = list(range(len(windows))), {}, [[] for _ in windows]
    while todo or active:
        if todo and len(active) < slots:
            active[todo.pop(0)] = [0, runner.initial_state()]
        ids = list(active)
        res, new = runner.step([windows[i][active[i][0]] for i in ids], [active[i][1] for i in ids])
        for i, o, st in zip(ids, res, new):
            outs[i].append(o.chunk_out)
            active[i] = [active[i][0] + 1, st]
            if active[i][0] == len(windows[i]):
                del active[i]
    return [np.concatenate(o) for o in outs]


# -- model math ---------------------------------------------------------------------------
@pytest.mark.parametrize("config,backend", [(c, "torch") for c in CONFIGS]
                         + [("chunk8_left4", "torch_cuda")])  # torch_cuda: finite caches only
def test_torch_chunk_encoder_matches_wenet(config, backend, chunked):
    """WeNet's forward_chunk_by_chunk, 8 utterances in lockstep (their last, shorter windows
    padded in the batches of longer ones)."""
    utts, enc = chunked(config, 8, backend)
    for b, u in enumerate(utts):
        ref = chunked_ref(config, u)["encoder_out"]
        n = enc["encoder_out_lens"][b]
        assert n == len(ref), u
        assert np.abs(enc["encoder_out"][b, :n] - ref).max() <= 1e-4, u


@pytest.fixture(scope="module")
def chunk_exports(model, sref, tmp_path_factory):
    """ONNX chunk encoders: the served finite cache (8 x 4 frames) and an unlimited one."""
    out = {}
    for config in ("chunk8_left4", "chunk16_left-1"):
        c, left = geometry(sref, config)
        d = str(tmp_path_factory.mktemp(f"chunk_{config}"))
        out[config] = d, export_chunk_encoder(model, d, c, left, sref["beam_size"])
    return out


@pytest.mark.parametrize("config", ["chunk8_left4", "chunk16_left-1"])
def test_onnx_chunk_encoder_matches_wenet_at_mixed_offsets(config, chunk_exports):
    d, settings = chunk_exports[config]
    assert settings["verification"]  # onnxruntime vs torch at B 1/2/5, other T, C, offsets
    runner = ChunkRunner(OnnxChunkBackend(os.path.join(d, "streaming_encoder.onnx")))
    utts = [f"test_{i:06d}" for i in range(8)]
    outs = run_staggered(runner, [feature_windows(feats_of(u), settings) for u in utts])
    for u, o in zip(utts, outs):
        ref = chunked_ref(config, u)["encoder_out"]
        assert o.shape == ref.shape, u
        assert np.abs(o - ref).max() <= 1e-4, u


def test_torch_batch_at_mixed_offsets_equals_wenet(model, sref):
    c, left = geometry(sref, "chunk4_left-1")  # unlimited cache: caches of unequal length
    runner = open_chunk_runner("torch", model, c, left, sref["beam_size"])
    utts = [f"test_{i:06d}" for i in range(3)]
    windows = [feature_windows(feats_of(u)[:300 + 40 * i], runner.settings)
               for i, u in enumerate(utts)]
    outs = run_staggered(runner, windows, slots=3)
    for u, o, w in zip(utts, outs, windows):
        n = (len(w) - 1) * c  # the cut's last chunk sees less than the whole utterance's
        ref = chunked_ref("chunk4_left-1", u)["encoder_out"][:n]
        assert np.abs(o[:n] - ref).max() <= 1e-4, u


def test_onnx_chunk_encoder_io_contract(chunk_exports):
    d, s = chunk_exports["chunk8_left4"]
    g = onnx.load(os.path.join(d, "streaming_encoder.onnx"), load_external_data=False).graph
    assert [i.name for i in g.input] == STREAMING_ENCODER_INPUTS
    assert [o.name for o in g.output] == STREAMING_ENCODER_OUTPUTS

    def shape(v):
        return [x.dim_param or x.dim_value for x in v.type.tensor_type.shape.dim]

    def dtype(v):
        return onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)

    ins = {i.name: i for i in g.input}
    outs = {o.name: o for o in g.output}
    assert shape(ins["chunk_xs"]) == ["B", "T", 80] and dtype(ins["chunk_xs"]) == np.float32
    assert shape(ins["chunk_lens"]) == ["B"] and dtype(ins["chunk_lens"]) == np.int32
    assert shape(ins["offset"]) == ["B", 1] and dtype(ins["offset"]) == np.int64
    assert shape(ins["att_cache"]) == ["B", 6, 4, 32, 128]  # (B, layers, heads, 4 x 8, 2 d_k)
    assert shape(ins["cnn_cache"]) == ["B", 6, 256, 7]      # (B, layers, D, kernel - 1)
    assert shape(ins["cache_mask"]) == ["B", 1, 32] and dtype(ins["cache_mask"]) == np.float32
    assert shape(outs["log_probs"]) == ["B", "T_OUT", 10]
    assert dtype(outs["log_probs_idx"]) == np.int64
    assert shape(outs["r_att_cache"]) == ["B", 6, 4, 32, 128]
    assert shape(outs["r_cnn_cache"]) == ["B", 6, 256, 7]
    assert shape(outs["r_cache_mask"]) == ["B", 1, 32]
    assert shape(outs["r_offset"]) == ["B", 1] and dtype(outs["r_offset"]) == np.int64
    assert shape(outs["chunk_out"]) == ["B", "T_OUT", 256] and shape(outs["chunk_out_lens"]) == ["B"]
    assert s["decoding_window"] == 35 and s["stride"] == 32 and s["required_cache_size"] == 32
    # unlimited cache: the cache axis is symbolic
    d, _ = chunk_exports["chunk16_left-1"]
    g = onnx.load(os.path.join(d, "streaming_encoder.onnx"), load_external_data=False).graph
    assert shape(g.input[3])[3] == "C" and shape(g.output[5])[3] == "C_OUT"


# -- decoding -----------------------------------------------------------------------------
@pytest.mark.parametrize("config,n_utts,backend", [
    ("chunk8_left4", 20, "torch"), ("chunk16_left-1", 8, "torch"), ("chunk4_left-1", 8, "torch"),
    ("chunk8_left4", 20, "torch_cuda")])
def test_streaming_decode_matches_wenet(config, n_utts, backend, sref, u2pp_export, model):
    """n-best (CTC prefix beam search over the chunked encoder output) and attention rescoring
    on the whole chunked output, from the stored feats, as WeNet's simulate_streaming
    (torch_cuda: the GPU engine's chunk forward, run on the CPU in fp32)."""
    utts = sorted(sref["configs"][config]["utts"])[:n_utts]
    eng = OnnxEngine(u2pp_export)
    c, left = geometry(sref, config)
    rec = StreamingRecognizer(eng, Vocab.from_engine_dir(u2pp_export, eng.settings),
                              open_chunk_runner(backend, model, c, left, sref["beam_size"]))
    res = rec.recognize_windows([feature_windows(feats_of(u), rec.runner.settings) for u in utts])
    close = 0
    for u, r in zip(utts, res):
        ref = sref["configs"][config]["utts"][u]
        assert r.greedy == ref["greedy"], u
        # random weights: n-best scores are near-tied; only candidates within 1e-3 may swap
        close += nbest_close(r.nbest, ref["nbest"])
        assert r.nbest[0][0] == tuple(ref["nbest"][0][0]), u
        assert r.ids == ref["rescored"], u
        assert r.text == ref["rescored_text"], u
        assert abs(r.score - ref["rescored_score"]) <= 1e-3 * max(1.0, abs(ref["rescored_score"]))
    assert close == len(utts), close


def test_from_wav_close_to_wenet(sref, u2pp_export, chunk_exports):
    """wav -> streaming fbank (0.1 s pieces) -> windows -> onnxruntime chunk encoder (finite
    cache) -> search -> rescoring. Our fp32 fbank vs WeNet's reference feats (fp16-rounded),
    amplified by random weights: transcripts agree closely rather than exactly, as in full
    context (test_search: 1.6% CER). 1.9% here; chunk16_left-1 / chunk4_left-1 measure
    1.1% / 1.2% (docs/streaming.md)."""
    config = "chunk8_left4"
    d, _ = chunk_exports[config]
    eng = OnnxEngine(u2pp_export)
    rec = StreamingRecognizer(eng, Vocab.from_engine_dir(u2pp_export, eng.settings),
                              ChunkRunner(OnnxChunkBackend(os.path.join(d, "streaming_encoder.onnx"))))
    utts = sorted(sref["configs"][config]["utts"])
    res = rec.recognize([read_audio(wav_path(u)) for u in utts])
    pairs = [(sref["configs"][config]["utts"][u]["rescored_text"], r.text) for u, r in zip(utts, res)]
    rate, _, _ = cer(pairs)
    assert rate <= 0.02, (rate, sum(a == b for a, b in pairs))


def test_stream_decoder_batched_fbank_equals_knf(sref, u2pp_export, chunk_exports):
    """Live streams through StreamDecoder (onnxruntime chunk encoder, finite cache, as served)
    with the batched torch front end and the search on threads, against the knf front end
    with one search call: streams at different positions sending random pieces (empty,
    shorter than a frame, up to 0.75 s; some twice in one call) -> the same partial and
    n-best after every piece (hypotheses near-tied within 1e-3 may swap) and the same rescored
    finals, which are the offline streaming recognizer's (test_from_wav_close_to_wenet: 1.9%
    CER against WeNet)."""
    config = "chunk8_left4"
    d, _ = chunk_exports[config]
    eng = OnnxEngine(u2pp_export)
    vocab = Vocab.from_engine_dir(u2pp_export, eng.settings)
    runner = ChunkRunner(OnnxChunkBackend(os.path.join(d, "streaming_encoder.onnx")))
    utts = sorted(sref["configs"][config]["utts"])[:10]
    wavs = [read_audio(wav_path(u)) for u in utts]
    rounds = random_rounds(wavs, np.random.default_rng(5), 12000)
    got = {}
    for impl, threads in (("knf", 1), ("torch", 2)):
        dec = StreamDecoder(runner, vocab, eng.settings, eng.settings.fbank, fbank_impl=impl,
                            search_threads=threads)
        live = [dec.open() for _ in wavs]
        partials, finals = [], [None] * len(wavs)
        for items in rounds:
            stages = []  # the served profile's split of a batch (fbank, encoder, search)
            res = dec.advance([(live[i], w, last) for i, w, last in items], split=stages.append)
            assert stages == ["fbank", "encode", "search"]
            partials += [(r.text, r.frames, r.nbest) for r in res]
            ended = [(i, r) for (i, _, last), r in zip(items, res) if last]
            texts = dec.finish([(live[i], r.nbest) for i, r in ended], eng)
            for (i, _), t in zip(ended, texts):
                finals[i] = t
        got[impl] = partials, finals
    (kp, kf), (tp, tf) = got["knf"], got["torch"]
    assert len(kp) == len(tp) > 3 * len(wavs)
    same_nbest = 0
    for (kt, kn, knb), (tt, tn, tnb) in zip(kp, tp):
        assert (kt, kn) == (tt, tn)
        assert nbest_close(tnb, knb, 1e-3)
        same_nbest += [h[0] for h in tnb] == [h[0] for h in knb]
    assert tf == kf
    assert same_nbest >= 0.95 * len(kp), (same_nbest, len(kp))
    print(f"batched fbank vs knf: {same_nbest}/{len(kp)} n-best lists with the same hypotheses")
    offline = StreamingRecognizer(eng, vocab, runner).recognize(wavs)
    assert tf == [r.text for r in offline]
    with pytest.raises(ValueError, match="choose from"):
        StreamDecoder(runner, vocab, eng.settings, eng.settings.fbank, fbank_impl="sox")
    with pytest.raises(ValueError, match="knf runs on the CPU"):
        StreamDecoder(runner, vocab, eng.settings, eng.settings.fbank, feature_device="cuda:0")


# -- front end ----------------------------------------------------------------------------
@pytest.mark.parametrize("piece", [1, 7, 161, 399, 1601, 10 ** 6])
def test_streaming_fbank_equals_whole_utterance(piece):
    wav = read_audio(wav_path("test_000003"))
    if piece < 100:
        wav = wav[:9000]  # keep one-sample pieces quick
    whole = Fbank()(wav)
    fb = StreamingFbank()
    got = [fb.accept(wav[i:i + piece]) for i in range(0, len(wav), piece)] + [fb.finish()]
    np.testing.assert_array_equal(np.concatenate(got), whole)


def random_rounds(wavs, rng, max_piece=6000):
    """A server's view of streams sending pieces: per round, some of the streams send one or
    two pieces (0 samples, shorter than a frame, or up to max_piece), ending with the piece
    that reaches their last sample (sometimes one more, empty) -> rounds of
    (stream index, samples, last) items, in order."""
    pos, done, rounds = [0] * len(wavs), [False] * len(wavs), []
    while not all(done):
        items = []
        for i in rng.permutation(len(wavs)):
            if done[i] or rng.random() < 0.25:
                continue  # this stream sends nothing this round
            for _ in range(1 + int(rng.random() < 0.3)):
                kind = rng.random()
                n = 0 if kind < 0.1 else int(rng.integers(1, 400)) if kind < 0.3 else int(rng.integers(1, max_piece))
                piece = wavs[i][pos[i]:pos[i] + n]
                pos[i] += len(piece)
                last = pos[i] >= len(wavs[i]) and rng.random() < 0.7
                items.append((int(i), piece, last))
                if last:
                    done[i] = True
                    break
        rounds.append(items)
    return rounds


def fbank_test_wavs():
    """Shared synth wavs, the package samples, and audio shorter than / exactly one frame and
    one frame plus less than a shift (the trailing partial frame knf drops)."""
    from wenet_triton.paths import SAMPLES_DIR

    wavs = [read_audio(wav_path(f"test_{i:06d}")) for i in (0, 3, 7, 12, 19)]
    wavs += [read_audio(os.path.join(SAMPLES_DIR, f)) for f in sorted(os.listdir(SAMPLES_DIR))
             if f.endswith(".wav")]
    rng = np.random.default_rng(1)
    wavs += [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (399, 400, 559, 3001)]
    return wavs


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("seed,device", [(0, "cpu"), (1, "cpu"), (2, "cpu"),
                                         pytest.param(3, "cuda", marks=CUDA)])
def test_batched_fbank_equals_whole_utterance_knf(seed, device):
    """Streams cut their pieces into frames (SampleFramer) and one FrameFbank call per round
    computes the new frames of every stream of the round (several streams at different
    positions, a stream twice in a round, empty and sub-frame pieces, ends with and without a
    last piece): per stream the frames equal kaldi-native-fbank on the whole utterance within
    the torch-vs-knf tolerance of test_frontend (and the torch fbank of the whole utterance
    within FFT rounding). On a GPU too (pinned staging buffer reused across calls)."""
    wavs = fbank_test_wavs()
    rng = np.random.default_rng(seed)
    framers = [SampleFramer() for _ in wavs]
    ff = FrameFbank(device=device)
    got = [[] for _ in wavs]
    calls = 0
    for items in random_rounds(wavs, rng):
        frames = []
        for i, piece, last in items:
            frames.append(framers[i].accept(piece))
            if last:
                assert framers[i].finish().shape == (0, 400)
        for (i, _, _), f in zip(items, ff(frames)):
            got[i].append(f)
        calls += 1
    assert calls > 10
    knf, whole_torch = Fbank(impl="knf"), TorchFbank().batch(wavs)
    worst_max = worst_mean = 0.0
    for w, g, t in zip(wavs, got, whole_torch):
        ours = np.concatenate(g) if g else np.zeros((0, 80), np.float32)
        want = knf(w) if len(w) >= 400 else np.zeros((0, 80), np.float32)
        assert ours.shape == want.shape == t.shape, (len(w), ours.shape, want.shape)
        if len(want):
            d = np.abs(ours - want)
            worst_max, worst_mean = max(worst_max, d.max()), max(worst_mean, d.mean())
            assert np.abs(ours - t).max() <= 1e-4
    assert worst_mean <= 1e-4 and worst_max <= 5e-3, (worst_mean, worst_max)


def test_sample_framer_edges():
    fr = SampleFramer()
    assert fr.accept(np.zeros(0, np.float32)).shape == (0, 400)
    assert fr.accept(np.zeros(399, np.float32)).shape == (0, 400)
    one = fr.accept(np.arange(1, 2, dtype=np.float32))  # the 400th sample completes frame 0
    assert one.shape == (1, 400) and one[0, -1] == 1.0
    assert fr.accept(np.arange(159, dtype=np.float32)).shape == (0, 400)
    two = fr.accept(np.full(161, 7, np.float32))  # frames 1 and 2 (samples 160..559, 320..719)
    assert two.shape == (2, 400) and two[0, 239] == 1.0 and two[0, 241] == 1.0 and two[0, -1] == 7
    assert two[1, 79] == 1.0 and two[1, -1] == 7  # frame 2 starts at sample 320
    assert fr.finish().shape == (0, 400)  # 80 samples of a partial frame: dropped, as knf does
    with pytest.raises(RuntimeError):
        fr.accept(np.zeros(10, np.float32))
    buf = np.ones(1000, np.float32)
    fr = SampleFramer()
    a = fr.accept(buf)  # a view of buf (no copy): use it before changing buf
    assert len(a) == 4 and a.min() == 1.0
    buf[:] = 0  # the caller reuses its buffer: the samples kept for the next frame are copies
    b = fr.accept(np.ones(1000, np.float32))
    assert len(b) == 7 and b.min() == 1.0


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_batched_streaming_windows_equal_knf_windows(chunk, model):
    """accept_many over several streams per call (batched torch fbank) gives the windows the
    knf front end gives (same count and lengths, values within the fbank tolerance)."""
    s = streaming_settings(model, chunk, -1)
    wavs = fbank_test_wavs()
    rng = np.random.default_rng(chunk)
    ff = FrameFbank()
    ours = [StreamingFeatures(s, frame_fbank=ff) for _ in wavs]
    knf = [StreamingFeatures(s) for _ in wavs]
    got, want = [[] for _ in wavs], [[] for _ in wavs]
    for items in random_rounds(wavs, rng, 20000):
        for (i, _, _), ws in zip(items, accept_many([(ours[i], w, last) for i, w, last in items])):
            got[i] += ws
        for i, w, last in items:
            want[i] += knf[i].accept(w) + (knf[i].finish() if last else [])
    for g, w in zip(got, want):
        assert [len(x) for x in g] == [len(x) for x in w]
        for a, b in zip(g, w):
            assert np.abs(a - b).mean() <= 1e-4 and np.abs(a - b).max() <= 5e-3
    assert all(f.finished for f in ours)


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_streaming_windows_equal_wenet_windows(chunk, model):
    """Windows from 0.1 s-ish odd pieces equal WeNet's forward_chunk_by_chunk slicing of the
    whole-utterance fbank (overlap right_context + 1 - subsampling frames)."""
    s = streaming_settings(model, chunk, -1)
    wav = read_audio(wav_path("test_000005"))
    for cut in (len(wav), len(wav) - 1234, 400 + 160 * 9):  # also a short tail, a tiny input
        w = wav[:cut]
        feats = StreamingFeatures(s)
        got = []
        for i in range(0, len(w), 1537):
            got += feats.accept(w[i:i + 1537])
        got += feats.finish()
        want = feature_windows(Fbank()(w), s)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    # WeNet's loop: for cur in range(0, T - context + 1, stride): xs[cur:min(cur + window, T)]
    for T in (6, 7, 8, 35, 66, 67, 68, 99, 100, 131, 1000):
        win = FrameWindower(8, 4, 6, 1)
        frames = np.arange(T, dtype=np.float32)[:, None]
        got = [w[:, 0].tolist() for w in win.accept(frames[:T // 2]) + win.accept(frames[T // 2:])
               + win.finish()]
        assert got == [list(range(a, b)) for a, b in window_bounds(T, 8, 4, 6)]
        assert window_bounds(T, 8, 4, 6) == [(c, min(c + 35, T)) for c in range(0, T - 7 + 1, 32)]


# -- other models and errors -----------------------------------------------------------------
def test_non_causal_model_is_a_clear_error(tmp_path):
    spec = load_model_dir(model_dir("conformer_2021"))
    m = ASRModel.from_spec(spec)
    with pytest.raises(CheckpointError, match="causal"):
        streaming_settings(m, 16, -1)
    cli = os.path.join(os.path.dirname(sys.executable), "wenet-triton")
    res = subprocess.run([cli, "transcribe", "--model", model_dir("conformer_2021"), "--chunk-size",
                          "16", wav_path("test_000001")], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, WENET_TRITON_CACHE=str(tmp_path)))
    assert res.returncode != 0 and "causal" in res.stderr and not res.stdout
    assert not os.listdir(tmp_path)  # failed before exporting anything


def small_model(kind):
    """A small random model of another encoder shape (BatchNorm folded)."""
    spec = load_model_dir(model_dir(NAME))
    conf = dict(spec.encoder_conf, output_size=64, linear_units=128, num_blocks=2)
    etype = "conformer"
    if kind == "transformer_abs_pos":
        etype = "transformer"
        conf.update(pos_enc_layer_type="abs_pos", input_layer="conv2d8")
        conf.pop("selfattention_layer_type", None)
    elif kind == "conformer_conv2d6":
        conf.update(input_layer="conv2d6", cnn_module_kernel=5)
    else:
        conf.update(cnn_module_norm="batch_norm", cnn_module_kernel=4)
    spec = dataclasses.replace(spec, encoder_type=etype, encoder_conf=conf,
                               decoder_type="transformer", state_dict={})
    torch.manual_seed(0)
    m = ASRModel(spec)
    for mod in m.modules():  # BatchNorm running stats that fold to something non-trivial
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m.eval().fuse()


OTHER_SHAPES = ["transformer_abs_pos", "conformer_conv2d6", "conformer_bn"]


@pytest.mark.parametrize("kind", OTHER_SHAPES)
def test_chunk_by_chunk_equals_full_context_chunk_mask(kind):
    """Other encoder shapes (random weights): with unlimited left chunks, chunk by chunk with
    caches equals the full-utterance forward with WeNet's chunk attention mask."""
    m = small_model(kind)
    feats = feats_of("test_000002")[:333]
    for chunk in (3, 8):
        run = open_chunk_runner("torch", m, chunk, -1, 10)
        enc = encode_chunked(run, [feature_windows(feats, run.settings)])
        with torch.no_grad():
            full, lens = m.encoder(torch.from_numpy(feats)[None], torch.tensor([len(feats)]), chunk)
        assert enc["encoder_out_lens"][0] == lens[0]
        assert np.abs(enc["encoder_out"][0] - full[0].numpy()).max() <= 1e-4, (kind, chunk)


def test_transformer_chunk_export_has_no_cnn_cache(tmp_path):
    spec = load_model_dir(model_dir(NAME))
    conf = dict(spec.encoder_conf, output_size=64, linear_units=128, num_blocks=2,
                pos_enc_layer_type="abs_pos")
    spec = dataclasses.replace(spec, encoder_type="transformer", encoder_conf=conf,
                               decoder_type="transformer", state_dict={})
    torch.manual_seed(0)
    m = ASRModel(spec).eval()
    s = export_chunk_encoder(m, str(tmp_path), 8, 2, 10)
    g = onnx.load(str(tmp_path / "streaming_encoder.onnx"), load_external_data=False).graph
    assert "cnn_cache" not in [i.name for i in g.input]
    assert "r_cnn_cache" not in [o.name for o in g.output]
    ort_run = ChunkRunner(OnnxChunkBackend(str(tmp_path / "streaming_encoder.onnx")))
    pt_run = ChunkRunner(TorchChunkBackend(m, s))
    ws = [feature_windows(feats_of(u)[:200], s) for u in ("test_000000", "test_000001")]
    for a, b in zip(run_staggered(ort_run, ws, 2), run_staggered(pt_run, ws, 2)):
        assert np.abs(a - b).max() <= 1e-4


# -- CLI and full context -------------------------------------------------------------------
def test_cli_chunk_transcribe_and_full_context_unchanged(u2pp_export, sref, model):
    """`transcribe --chunk-size 8 --left-chunks 4` prints <utt>\\t<text> equal to the
    StreamingRecognizer; without --chunk-size the output is the full-context recognizer's."""
    cli = os.path.join(os.path.dirname(sys.executable), "wenet-triton")
    utts = ["test_000001", "test_000002"]
    eng = OnnxEngine(u2pp_export)
    vocab = Vocab.from_engine_dir(u2pp_export, eng.settings)
    wavs = [read_audio(wav_path(u)) for u in utts]
    stream = StreamingRecognizer(eng, vocab, open_chunk_runner("torch", model, 8, 4, 10)).recognize(wavs)
    full = Recognizer(eng, vocab).recognize(wavs)
    for extra, want in ((["--chunk-size", "8", "--left-chunks", "4"], stream), ([], full)):
        res = subprocess.run([cli, "transcribe", "--model", model_dir(NAME), "--engine-dir",
                              u2pp_export, "--engine", "onnxruntime"] + extra
                             + [wav_path(u) for u in utts], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == [f"{u}\t{r.text}" for u, r in zip(utts, want)]
    # the chunk export was written once into the engine dir and is reused
    assert os.path.exists(os.path.join(u2pp_export, "streaming_chunk8_left4",
                                       "streaming_encoder.onnx"))


# -- torch_cuda chunk encoder (GPU engine math, state on the device), run on the CPU -------------
def device_runner(model, chunk=8, left=4, beam=10, **kw):
    """The torch_cuda chunk encoder on the CPU: fp32, pure-torch references of the kernels,
    eager (the batch bucket padding and slot pools as on a GPU)."""
    s = streaming_settings(model, chunk, left, beam)
    return DeviceChunkRunner(CudaChunkBackend(model, s, "cpu", "float32", use_kernels=False, **kw))


def _states(args):
    x, lens, off, att, cnn, mask = (a.numpy() for a in args)
    return ([x[i, :lens[i]] for i in range(len(x))],
            [EncoderState(int(off[i, 0]), att[i], cnn[i], mask[i]) for i in range(len(x))],
            {"chunk_xs": x, "chunk_lens": lens, "offset": off, "att_cache": att, "cnn_cache": cnn,
             "cache_mask": mask})


def _alone(backend, feed, i):
    """The torch chunk encoder on stream i alone, its window unpadded."""
    n = int(feed["chunk_lens"][i])
    return backend.run({k: (v[i:i + 1, :n] if k == "chunk_xs" else v[i:i + 1]) for k, v in feed.items()})


def _assert_state(got: EncoderState, out, i, tol=1e-4):
    assert got.offset == int(out["r_offset"][i, 0])
    np.testing.assert_array_equal(got.cache_mask, out["r_cache_mask"][i])
    assert np.abs(got.att_cache - out["r_att_cache"][i]).max() <= tol
    assert np.abs(got.cnn_cache - out["r_cnn_cache"][i]).max() <= tol


@pytest.mark.parametrize("batch,frames", [(1, None), (2, None), (5, None), (9, None), (3, 8)])
def test_device_chunk_step_equals_torch_backend(model, batch, frames):
    """One step of streams at different offsets (0, below the cache length, far on), with
    random caches, one not yet full, and a shorter last window (frames 8: 1-frame windows):
    outputs equal the torch ChunkEncoder's (1e-4); the next state equals the torch one's for
    full windows and, for a short window, the torch one's of the stream alone (the batch's
    padding never reaches a state: the torch ChunkEncoder's includes the padded frames)."""
    dev = device_runner(model)
    ref = TorchChunkBackend(model, dev.settings)
    offs = [0, 7, 300, 41, 2000, 31, 33, 5000, 8][:batch]
    windows, states, feed = _states(_dummy_chunk_inputs(dev.settings, batch, 32, frames,
                                                        seed=batch, offsets=offs))
    want = ref.run(feed)
    handles = [dev.load(st) for st in states]
    outs, new = dev.step(windows, handles)
    assert new == handles
    for i, o in enumerate(outs):
        n = int(want["chunk_out_lens"][i])
        assert o.chunk_out.shape == (n, 256) and o.log_probs.shape == o.log_probs_idx.shape == (n, 10)
        assert o.chunk_out.dtype == o.log_probs.dtype == np.float32 and o.log_probs_idx.dtype == np.int64
        assert np.abs(o.chunk_out - want["chunk_out"][i, :n]).max() <= 1e-4
        assert np.abs(o.log_probs - want["log_probs"][i, :n]).max() <= 1e-4
        np.testing.assert_array_equal(o.log_probs_idx[:, 0], want["log_probs_idx"][i, :n, 0])
        if len(windows[i]) == dev.settings["decoding_window"]:
            _assert_state(dev.read(new[i]), want, i)
        else:
            _assert_state(dev.read(new[i]), _alone(ref, feed, i), 0)


def assert_staggered_matches_wenet(runner, tol=1e-4):
    """run_staggered over the first 8 reference utterances: each stream's encoder_out within
    tol of WeNet's chunk8_left4 output (same shape)."""
    utts = [f"test_{i:06d}" for i in range(8)]
    outs = run_staggered(runner, [feature_windows(feats_of(u), runner.settings) for u in utts])
    for u, o in zip(utts, outs):
        ref = chunked_ref("chunk8_left4", u)["encoder_out"]
        assert o.shape == ref.shape, u
        assert np.abs(o - ref).max() <= tol, u


def test_device_chunk_encoder_matches_wenet_at_mixed_offsets(model, sref):
    """A server's view (streams join one per step, at most 4 at a time, so batches mix
    offsets, cache fills and padded last windows): WeNet's chunk8_left4 encoder_out (1e-4)."""
    runner = device_runner(model, *geometry(sref, "chunk8_left4"), sref["beam_size"])
    assert_staggered_matches_wenet(runner)
    assert runner.backend.live_slots == 0  # every stream's slot went back with its state


def test_device_stream_state_is_independent_of_its_batch(model):
    """One stream stepped alone, and in batches with 1, 4 and 10 other streams (other
    buckets, offsets and windows; its own last window short): the same outputs and the same
    state after every step."""
    windows = feature_windows(feats_of("test_000003")[:203], streaming_settings(model, 8, 4))
    assert len(windows) == 7 and len(windows[-1]) < len(windows[0])
    others = [feature_windows(feats_of(f"test_{i:06d}"), streaming_settings(model, 8, 4))
              for i in range(10, 20)]
    runs = []
    for n_other in (0, 1, 4, 10):
        runner = device_runner(model)
        st = runner.initial_state()
        other = [runner.initial_state() for _ in range(n_other)]
        outs, states = [], []
        for k, w in enumerate(windows):
            ws = [w] + [others[j][(k + j) % len(others[j])] for j in range(n_other)]
            res, _ = runner.step(ws, [st] + other)
            outs.append(res[0])
            states.append(runner.read(st))
        runs.append((outs, states))
    for outs, states in runs[1:]:
        for (a, sa), (b, sb) in zip(zip(*runs[0]), zip(outs, states)):
            assert np.abs(a.chunk_out - b.chunk_out).max() <= 1e-5
            assert np.abs(a.log_probs - b.log_probs).max() <= 1e-5
            np.testing.assert_array_equal(a.log_probs_idx[:, 0], b.log_probs_idx[:, 0])
            assert sa.offset == sb.offset
            np.testing.assert_array_equal(sa.cache_mask, sb.cache_mask)
            assert np.abs(sa.att_cache - sb.att_cache).max() <= 1e-5
            assert np.abs(sa.cnn_cache - sb.cnn_cache).max() <= 1e-5


def test_device_slots_are_freed_with_their_states_and_reused(model):
    """Dropped states (no release call: streams are dropped on idle timeout, errors...) give
    their slots back and the pools stop growing; a reused slot starts empty; released,
    foreign and repeated states are errors."""
    import gc

    runner = device_runner(model, slots=2)
    be = runner.backend
    w = feature_windows(feats_of("test_000004")[:200], runner.settings)
    fresh = device_runner(model)
    want, _ = fresh.step(w[:1], [fresh.initial_state()])
    for _ in range(3):  # streams come and go: the pools stay at the size of the most at once
        states = [runner.initial_state() for _ in range(5)]
        for k in range(3):
            runner.step([w[k]] * 5, states)
        assert be.live_slots == 5
        del states
        gc.collect()
        assert be.live_slots == 0
    cap = be.capacity
    assert cap == 6  # 5 live streams + the scratch slot (3 at first, doubled once)
    for _ in range(20):
        st = runner.initial_state()
        got = runner.step(w[:1], [st])[0]  # a reused slot: what a brand-new stream gets
        np.testing.assert_array_equal(got[0].chunk_out, want[0].chunk_out)
        runner.step([w[1]], [st])
        del st
    assert be.capacity == cap and be.live_slots == 0
    st = runner.initial_state()
    runner.release(st)
    assert be.live_slots == 0
    with pytest.raises(ValueError, match="released"):
        runner.step(w[:1], [st])
    with pytest.raises(ValueError, match="did not make"):
        runner.step(w[:1], [EncoderState.initial(runner.settings)])
    with pytest.raises(ValueError, match="did not make"):
        runner.step(w[:1], [fresh.initial_state()])
    st = runner.initial_state()
    with pytest.raises(ValueError, match="twice"):
        runner.step(w[:2], [st, st])


def test_device_chunk_encoder_needs_a_finite_cache(model):
    with pytest.raises(ValueError, match="left_chunks -1"):
        open_chunk_runner("torch_cuda", model, 8, -1, 10)
    runner = open_chunk_runner("torch_cuda", model, 8, 4, 10)  # on the CPU: fp32, eager
    assert isinstance(runner, DeviceChunkRunner) and runner.backend.fm.dtype == torch.float32


@pytest.mark.parametrize("kind", OTHER_SHAPES)
def test_device_chunk_encoder_other_encoder_shapes(kind):
    """Transformer with absolute positions and no conv cache (conv2d8), conv2d6 subsampling,
    a BatchNorm conv module (folded): torch_cuda equals the torch chunk encoder with finite
    caches, streams joining one per step (also at left_chunks 0: no cache at all)."""
    m = small_model(kind)
    ws = [feature_windows(feats_of(u)[:300 + 37 * i], streaming_settings(m, 3, 2))
          for i, u in enumerate(("test_000000", "test_000001", "test_000002"))]
    for left in (2, 0):
        ref = open_chunk_runner("torch", m, 3, left, 10)
        dev = device_runner(m, 3, left)
        for a, b in zip(run_staggered(ref, ws, 2), run_staggered(dev, ws, 2)):
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4, (kind, left)


def test_streaming_model_runs_the_torch_cuda_chunk_encoder_on_gpu_hosts(tmp_path):
    """build-repo on torch_cuda / tensorrt hosts: the `streaming` model's chunk engine is
    torch_cuda on cuda (engine.dtype, float16 by default) with the checkpoint beside it; the
    model's runner choice makes a DeviceChunkRunner of it (checked here on the CPU, fp32)."""
    from wenet_triton.contract import EngineSettings
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.stream_model import Streaming

    eng = tmp_path / "engine"
    eng.mkdir()
    EngineSettings(beam_size=10, ctc_weight=0.3, reverse_weight=0.3, sos=3002, eos=3002,
                   vocab_size=3003, decoder_has_reverse_input=True).save(str(eng))
    for f in ("units.txt", "encoder.plan", "decoder.plan"):
        (eng / f).write_text("x\n")
    for engine, dtype in (("torch_cuda", None), ("tensorrt", "bfloat16")):
        out = tmp_path / engine
        over = {"streaming": {"chunk_size": 8, "left_chunks": 4, "max_streams": 3}}
        if dtype:
            over["engine"] = {"dtype": dtype}
        build_repo(model_dir(NAME), str(out), engine, None, over, engine_dir=str(eng))
        text = (out / "streaming" / "config.pbtxt").read_text()
        params = dict(re.findall(r'parameters \{ key: "(\w+)" value: \{ string_value: "([^"]*)" \} \}', text))
        assert (params["engine"], params["device"], params["dtype"]) == ("torch_cuda", "cuda", dtype or "float16")
        assert float(params["rescore_warmup_seconds"]) == 20  # the finals' decoder graphs at load
        assert os.path.exists(out / "streaming" / "1" / "model" / "final.pt")
    from wenet_triton.serving.repo import streaming_config
    assert streaming_config({"streaming": {"rescore_warmup_seconds": 0}})["rescore_warmup_seconds"] == 0
    with pytest.raises(ValueError, match="rescore_warmup_seconds must be within 0..600"):
        streaming_config({"streaming": {"rescore_warmup_seconds": -1}})
    model = Streaming.__new__(Streaming)
    model.settings, model.max_streams = EngineSettings.load(str(eng)), 3
    runner = model._runner({}, dict(params, device="cpu", dtype="float32", decoder_max_batch_size="4"),
                           str(out / "streaming" / "1"))
    assert isinstance(runner, DeviceChunkRunner)
    assert runner.settings["decoding_chunk_size"] == 8 and runner.settings["required_cache_size"] == 32
    assert runner.backend.live_slots == 0 and runner.backend.capacity >= 5  # warmed up to batch 4


def test_stream_decoder_on_the_device_chunk_encoder(model, u2pp_export):
    """Live streams (StreamDecoder, what the Triton model runs) on torch_cuda: 3 streams
    starting at different times, odd piece sizes, batched steps mixing them: the partials
    and finals of the torch chunk encoder's StreamDecoder; no slot left once they are gone."""
    import gc

    eng = OnnxEngine(u2pp_export)
    vocab = Vocab.from_engine_dir(u2pp_export, eng.settings)
    wavs = [read_audio(wav_path(f"test_{i:06d}"))[: 16000 * 3] for i in (5, 6, 7)]

    def run(dec):
        streams, pos, partials, nbest = [None] * 3, [0] * 3, [], [None] * 3
        for r in range(40):
            items = []
            for i, w in enumerate(wavs):
                if r < 2 * i or pos[i] > len(w):  # stream i starts at round 2i
                    continue
                if streams[i] is None:
                    streams[i] = dec.open()
                n = (2411, 4801, 997)[(r + i) % 3]
                items.append((i, w[pos[i]:pos[i] + n], pos[i] + n >= len(w)))
                pos[i] = pos[i] + n if pos[i] + n < len(w) else len(w) + 1
            if not items:
                break
            res = dec.advance([(streams[i], w, last) for i, w, last in items])
            partials += [(p.frames, p.text) for p in res]
            for (i, _, last), p in zip(items, res):
                if last:
                    nbest[i] = p.nbest
        return partials, dec.finish(list(zip(streams, nbest)), eng)

    want = run(StreamDecoder(open_chunk_runner("torch", model, 8, 4, 10), vocab, eng.settings,
                             Fbank().conf))
    runner = open_chunk_runner("torch_cuda", model, 8, 4, 10)
    got = run(StreamDecoder(runner, vocab, eng.settings, Fbank().conf))
    assert got[1] == want[1] and all(want[1])
    assert got[0] == want[0]
    gc.collect()
    assert runner.backend.live_slots == 0 and runner.backend.capacity == 9  # 8 slots + scratch: no growth
