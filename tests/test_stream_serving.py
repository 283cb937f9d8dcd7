"""Issue #15 items 5-6: the sequence-batched `streaming` model served by a real tritonserver
behind `wenet-triton serve` (supervisor + checking gRPC front, loopback only), against the
offline chunk-by-chunk recognizer (`StreamingRecognizer`, onnxruntime) with the same finite
cache (chunk 8, 4 left chunks: the config of WeNet's reference, where offline = WeNet).

One server is shared by the module; tests run in file order and each ends with no live
stream (LIVE_STREAMS back to 0). Figures are printed with -s.
"""
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT, model_dir, reference, shared_path
from served import export_u2pp, processes_with

pytestmark = pytest.mark.server
grpcclient = pytest.importorskip("tritonclient.grpc")

CHUNK, LEFT = 8, 4
IDLE = 4.0          # streaming.idle_seconds of the served repository
MAX_STREAMS = 8
RATE = 16000
FIGURES = {}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args):
    return [sys.executable, "-m", "wenet_triton.cli", *args]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_u2pp(tmp_path_factory, "ss_export", verify=False)


STREAM_CFG = {"chunk_size": CHUNK, "left_chunks": LEFT, "max_streams": MAX_STREAMS,
              "idle_seconds": IDLE, "max_chunk_seconds": 2}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, export_dir):
    from wenet_triton.serving.repo import build_repo

    out = str(tmp_path_factory.mktemp("ss_repo") / "model_repo")
    t0 = time.time()
    build_repo(model_dir("u2pp_conformer"), out, "onnxruntime",
               overrides={"max_audio_seconds": 30, "engine": {"threads": 1},
                          "models": {"streaming": {"max_queue_delay_us": 5000}},
                          "streaming": STREAM_CFG}, engine_dir=export_dir)
    FIGURES["build-repo incl. chunk export (s)"] = round(time.time() - t0, 1)
    return out


@contextlib.contextmanager
def serving(repo, tmp):
    """`wenet-triton serve --repo` (the guard in front) -> its public gRPC url; on exit the
    server is stopped and no process or /dev/shm region of it is left."""
    from wenet_triton.serving import procs
    from wenet_triton.serving.server import free_port
    from wenet_triton.serving.stream_client import wait_until_ready

    port = free_port()
    log_path = os.path.join(tmp, "serve.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        _cli("serve", "--repo", repo, "--grpc-port", str(port), "--metrics-port", str(free_port()),
             "--health-port", "0", "--probe-interval", "60"),
        stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=tmp)
    url = f"127.0.0.1:{port}"
    regions = set()
    try:
        t0 = time.time()
        deadline = t0 + 240
        while True:
            assert proc.poll() is None, open(log_path).read()[-3000:]
            try:
                wait_until_ready(url, 2)
                # the guard answers before tritonserver is behind it: wait for a real answer
                grpcclient.InferenceServerClient(url).get_model_metadata("streaming")
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.time() < deadline, open(log_path).read()[-3000:]
        FIGURES[f"serve start to ready (s), {os.path.basename(tmp)}"] = round(time.time() - t0, 1)
        for pid in procs.children(proc.pid):
            regions |= procs.server_regions(pid)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        time.sleep(0.5)
        assert not processes_with(repo), processes_with(repo)
        left = [r for r in regions if os.path.exists(os.path.join("/dev/shm", r.lstrip("/")))]
        assert not left, f"/dev/shm regions left: {left}"
        with open(log_path) as f:
            text = f.read()
        FIGURES[f"model log, {os.path.basename(tmp)}"] = [
            ln for ln in text.splitlines() if "[streaming]" in ln][-4:]


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    with serving(repo, str(tmp_path_factory.mktemp("ss_serve"))) as url:
        yield url
    print("\nstream serving figures:", json.dumps(FIGURES, indent=1, ensure_ascii=False))


@pytest.fixture(scope="module")
def wavs():
    from wenet_triton.audio.frontend import read_audio

    d = shared_path("data", "synth_test")
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".wav"))[:8]
    return [(n, read_audio(os.path.join(d, n + ".wav"))) for n in names]


@pytest.fixture(scope="module")
def offline(export_dir, wavs, repo):
    """The offline chunk-by-chunk recognizer (same export, chunk 8, left 4, onnxruntime) and
    its results: final texts, and the chunked encoder output for the partials."""
    from wenet_triton.audio.frontend import Fbank
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.engines.streaming import encode_chunked
    from wenet_triton.streaming import feature_windows, streaming_recognizer

    eng = OnnxEngine(export_dir, threads=1)
    rec = streaming_recognizer(eng, export_dir, model_dir("u2pp_conformer"), "onnxruntime",
                               CHUNK, LEFT, threads=1)
    t0 = time.time()
    finals = [r.text for r in rec.recognize([w for _, w in wavs])]
    fb = Fbank(eng.settings.fbank)
    enc = encode_chunked(rec.runner, [feature_windows(fb(w), rec.runner.settings) for _, w in wavs])
    FIGURES["offline decode of 8 wavs (s)"] = round(time.time() - t0, 1)
    return rec, dict(zip([n for n, _ in wavs], finals)), enc


def expected_partials(rec, enc, b, wav, sizes):
    """Offline partial after each non-final chunk of `sizes` samples: the best prefix of the
    search over the frames of the full encoder windows the audio so far completes."""
    from wenet_triton.contract import num_frames
    from wenet_triton.decode.search import ctc_prefix_beam_search_batch

    s = rec.runner.settings
    total = int(enc["encoder_out_lens"][b])
    out, done = [], 0
    for n in sizes[:-1]:
        done += n
        frames = num_frames(rec.fbank.conf, done)
        windows = (frames - s["decoding_window"]) // s["stride"] + 1 if frames >= s["decoding_window"] else 0
        t = min(windows * CHUNK, total)
        if t == 0:
            out.append("")
            continue
        nb = ctc_prefix_beam_search_batch(enc["beam_log_probs"][b:b + 1, :t],
                                          enc["beam_log_probs_idx"][b:b + 1, :t],
                                          np.array([t], np.int32), rec.decoding.beam_size)[0]
        out.append(rec.vocab.text(nb[0][0]))
    return out


def _chunk_request(client, seq, piece, start=False, end=False):
    from wenet_triton.serving.stream_client import chunk_inputs, parse

    inputs, outputs = chunk_inputs(piece, grpcclient)
    return parse(client.infer("streaming", inputs, outputs=outputs, sequence_id=seq,
                              sequence_start=start, sequence_end=end, client_timeout=60))


def live_streams(url):
    """LIVE_STREAMS after a one-request stream (START + END, no audio): the streams the model
    holds besides it."""
    from wenet_triton.serving.stream_client import sequence_ids

    text, final, live = _chunk_request(grpcclient.InferenceServerClient(url), sequence_ids(1)[0],
                                       np.zeros(0, np.float32), start=True, end=True)
    assert final and text == ""
    return live


def _stats(url):
    s = grpcclient.InferenceServerClient(url).get_inference_statistics("streaming", as_json=True)
    st = s["model_stats"][0]
    return int(st.get("inference_count", 0)), int(st.get("execution_count", 0))


# -- the resumable search (no server) ------------------------------------------------------
@pytest.mark.parametrize("with_lm", [False, True])
def test_resumed_search_equals_search_over_all_frames(with_lm):
    """The C++ search fed each stream's frames in random pieces (0 to 40 frames per call,
    streams of 0 to 300 frames in one batch) gives, after every call, exactly the n-best
    (ids and scores, LM scores too) of one search over all the frames so far."""
    import random

    from wenet_triton.decode.lm import estimate
    from wenet_triton.decode.search import (
        IncrementalSearch,
        advance_search_batch,
        ctc_prefix_beam_search_batch,
    )

    rng = np.random.default_rng(0)
    B, T, K, V = 4, 300, 10, 40
    lp = np.sort(np.log(rng.dirichlet(np.full(V, 0.3), size=(B, T))), axis=-1)[..., ::-1][..., :K]
    lp = np.ascontiguousarray(lp, np.float32)
    ix = np.stack([[rng.permutation(V)[:K] for _ in range(T)] for _ in range(B)]).astype(np.int64)
    ix[..., 0][rng.random((B, T)) < 0.6] = 0  # blank-heavy, as CTC is
    lens = [300, 251, 7, 0]
    lm, weights = None, (0.0, 0.0)
    if with_lm:
        r = random.Random(0)
        lm = estimate([[r.randrange(1, V) for _ in range(r.randrange(3, 20))] for _ in range(2000)],
                      V, 3)
        weights = (0.6, 0.3)
    searches = [IncrementalSearch() for _ in range(B)]
    pos, calls = [0] * B, 0
    while any(p < n for p, n in zip(pos, lens)) or not calls:
        chunks = []
        for b in range(B):
            n = min(int(rng.integers(0, 41)), lens[b] - pos[b])
            chunks.append((lp[b, pos[b]:pos[b] + n], ix[b, pos[b]:pos[b] + n]))
            pos[b] += n
        got = advance_search_batch(searches, chunks, 10, 0, lm, *weights)
        want = ctc_prefix_beam_search_batch(lp, ix, np.array(pos, np.int32), 10, 0, lm, *weights)
        assert got == want
        calls += 1
    assert searches[0].native is not None, "the C++ search was not built"
    FIGURES[f"resumed search calls (lm {with_lm})"] = calls


# -- exactness ----------------------------------------------------------------------------
SIZES = [[4800], [10240], [4801, 1601, 12345], [1123], [3203, 9999], [16000], [2560, 777],
         [10240, 4800, 6399]]  # samples per chunk, cycled: 0.3 s, 0.64 s, odd counts, 70 ms to 1 s


def test_served_streams_equal_offline_streaming(served, wavs, offline):
    """8 streams at once with staggered starts and chunks of 0.3 s, 0.64 s and odd sample
    counts (70 ms to 1 s): each final equals the offline chunk-by-chunk transcript, each
    partial equals the offline best prefix over the windows so far, only the END response is
    final, and streams at different offsets shared batches."""
    from wenet_triton.serving.stream_client import latency_summary, split, stream_many

    rec, finals, enc = offline
    sizes = SIZES[:len(wavs)]
    inf0, exe0 = _stats(served)
    t0 = time.time()
    replies = stream_many(served, wavs, concurrency=len(wavs), sizes=sizes,
                          start_delays=[0.15 * i for i in range(len(wavs))])
    wall = time.time() - t0
    inf1, exe1 = _stats(served)
    assert [r.error for r in replies] == [None] * len(wavs)
    assert {r.name: r.text for r in replies} == finals
    for b, ((name, wav), r) in enumerate(zip(wavs, replies)):
        assert r.sizes == [len(p) for p in split(wav, sizes[b])]
        assert r.flags == [False] * (len(r.sizes) - 1) + [True]
        assert r.partials == expected_partials(rec, enc, b, wav, r.sizes), name
    FIGURES["exactness run"] = dict(
        wall_s=round(wall, 1), audio_s=round(sum(len(w) for _, w in wavs) / RATE, 1),
        chunks=inf1 - inf0, batches=exe1 - exe0,
        **{k: round(v) for k, v in latency_summary(replies).items()})
    assert exe1 - exe0 < inf1 - inf0, "no two streams ever shared a batch"
    assert live_streams(served) == 0


def test_served_streams_both_transports(served, wavs, offline):
    """transport="unary" (a ModelInfer call per chunk; the default, "stream", sends a wav's
    chunks as messages on one bidirectional ModelStreamInfer call, as the other tests do):
    the same finals, partials and final flags as offline streaming. Over gRPC streams a NaN
    chunk gets its error on the stream (the model's), a chunk over the maximum ends the call
    (the front's INVALID_ARGUMENT; the END then goes as a unary call); the other streams go
    on; no stream is left live."""
    from wenet_triton.serving.stream_client import split, stream_many

    rec, finals, enc = offline
    sizes = SIZES[:3]
    replies = stream_many(served, wavs[:3], concurrency=3, sizes=sizes, transport="unary",
                          start_delays=[0.1 * i for i in range(3)])
    assert [r.error for r in replies] == [None] * 3
    for b, ((name, wav), r) in enumerate(zip(wavs[:3], replies)):
        assert r.text == finals[name]
        assert r.sizes == [len(p) for p in split(wav, sizes[b])]
        assert r.flags == [False] * (len(r.sizes) - 1) + [True]
        assert r.partials == expected_partials(rec, enc, b, wav, r.sizes), name
    name, wav = wavs[3]
    bad = wav.copy()
    bad[12000] = np.nan  # in the second chunk
    long_name, long_wav = wavs[5]
    got = stream_many(served, [(name, bad), wavs[4], (long_name, long_wav)], concurrency=3,
                      sizes=[[10240], [10240], [8000, 40000]], transport="stream")
    assert got[0].error is not None and "chunk 2/" in got[0].error and "NaN" in got[0].error, got[0].error
    assert got[1].error is None and got[1].text == finals[wavs[4][0]]
    assert got[2].error is not None and "chunk 2/" in got[2].error and "longer" in got[2].error, got[2].error
    with pytest.raises(ValueError, match="transport"):
        stream_many(served, wavs[:1], transport="udp")
    deadline = time.time() + 10
    while live_streams(served) and time.time() < deadline:  # the refused stream: its END was sent
        time.sleep(0.2)
    assert live_streams(served) == 0


# -- bad input and faults -----------------------------------------------------------------
def _code(exc):
    return exc.status() if hasattr(exc, "status") else ""


def test_bad_chunks_cost_only_themselves(served, wavs, offline):
    """A stream that sends NaN, inf, a sample of 1.5, a chunk over the maximum, a chunk of
    two rows and empty chunks gets INVALID_ARGUMENT for each bad one, goes on and ends with
    the offline transcript; a good stream sent at the same time is unaffected."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.stream_client import sequence_ids, split, stream_many

    _, finals, _ = offline
    (name, wav), (other, owav) = wavs[1], wavs[2]
    good = {}
    t = threading.Thread(target=lambda: good.update(
        r=stream_many(served, [(other, owav)], concurrency=1, sizes=4800,
                      start_delays=[0.2])[0]))
    t.start()
    client = grpcclient.InferenceServerClient(served)
    seq = sequence_ids(1)[0]
    pieces = split(wav, 6400)
    bad = {"NaN": np.full(1600, np.nan, np.float32), "inf": np.full(1600, np.inf, np.float32),
           "1.5": np.full(1600, 1.5, np.float32), "3 s": np.zeros(3 * RATE, np.float32)}
    expect = {"NaN": "NaN or inf", "inf": "NaN or inf", "1.5": r"outside \[-1, 1\]",
              "3 s": "longer than the configured maximum"}
    errors = {}
    _chunk_request(client, seq, pieces[0], start=True)
    for k, piece in enumerate(pieces[1:-1], 1):
        if k <= len(bad):
            key = list(bad)[k - 1]
            with pytest.raises(InferenceServerException, match=expect[key]) as e:
                _chunk_request(client, seq, bad[key])
            errors[key] = _code(e.value)
        if k == 2:
            before = _chunk_request(client, seq, np.zeros(0, np.float32))
            assert before[1] is False
        _chunk_request(client, seq, piece)
    # a chunk of two rows (one request = one chunk of one stream)
    a = grpcclient.InferInput("WAV", [2, 800], "FP32")
    a.set_data_from_numpy(np.zeros((2, 800), np.float32))
    b = grpcclient.InferInput("WAV_LENS", [2, 1], "INT32")
    b.set_data_from_numpy(np.full((2, 1), 800, np.int32))
    with pytest.raises(InferenceServerException, match="one chunk of one stream") as e:
        client.infer("streaming", [a, b], sequence_id=seq)
    errors["2 rows"] = _code(e.value)
    text, final, _ = _chunk_request(client, seq, pieces[-1], end=True)
    t.join(120)
    assert final and text == finals[name]
    assert good["r"].error is None and good["r"].text == finals[other]
    assert set(errors.values()) == {"StatusCode.INVALID_ARGUMENT"}, errors
    FIGURES["bad chunk codes"] = errors
    assert live_streams(served) == 0


def test_unknown_and_ended_sequences_are_refused(served, wavs, offline):
    """A chunk for a sequence that never started and one for a sequence that has ended get
    an error naming the START flag; a stream in progress meanwhile is unaffected."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.stream_client import sequence_ids, split

    _, finals, _ = offline
    client = grpcclient.InferenceServerClient(served)
    live, unknown, done = sequence_ids(3)
    name, wav = wavs[3]
    pieces = split(wav, 10240)
    _chunk_request(client, live, pieces[0], start=True)
    with pytest.raises(InferenceServerException, match="START") as e1:
        _chunk_request(client, unknown, pieces[1])
    _chunk_request(client, done, pieces[0], start=True, end=True)
    with pytest.raises(InferenceServerException, match="START") as e2:
        _chunk_request(client, done, pieces[1])
    with pytest.raises(InferenceServerException, match="START"):
        _chunk_request(client, done, pieces[1], end=True)
    for p in pieces[1:-1]:
        _chunk_request(client, live, p)
    text, final, _ = _chunk_request(client, live, pieces[-1], end=True)
    assert final and text == finals[name]
    FIGURES["unknown / ended sequence"] = [str(e1.value)[:160], _code(e2.value)]
    assert live_streams(served) == 0


def test_stream_without_end_is_freed_after_idle_timeout(served, wavs):
    """A stream that never sends END holds state until streaming.idle_seconds pass, then
    nothing of it is left and its next chunk is refused."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.stream_client import sequence_ids

    client = grpcclient.InferenceServerClient(served)
    seq = sequence_ids(1)[0]
    _, _, live = _chunk_request(client, seq, wavs[0][1][:RATE], start=True)
    assert live == 1
    assert live_streams(served) == 1
    t0 = time.time()
    while live_streams(served) != 0:
        assert time.time() - t0 < IDLE + 5, "idle stream never freed"
        time.sleep(0.5)
    FIGURES["idle stream freed after (s)"] = round(time.time() - t0 + 0.0, 1)
    with pytest.raises(InferenceServerException) as e:
        _chunk_request(client, seq, wavs[0][1][RATE:2 * RATE])
    FIGURES["chunk after idle timeout"] = str(e.value)[:160]


def test_more_streams_than_max_streams(served, wavs, offline):
    """With max_streams streams open, one more START is refused (UNAVAILABLE, that stream
    alone); the open ones finish correctly and a new stream is accepted afterwards."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.stream_client import sequence_ids, split

    _, finals, _ = offline
    client = grpcclient.InferenceServerClient(served)
    ids = sequence_ids(MAX_STREAMS + 2)
    name, wav = wavs[4]
    pieces = split(wav, 16000)
    for seq in ids[:MAX_STREAMS]:
        _chunk_request(client, seq, pieces[0], start=True)
    with pytest.raises(InferenceServerException, match="too many streams") as e:
        _chunk_request(client, ids[MAX_STREAMS], pieces[0], start=True)
    FIGURES["stream over max_streams"] = _code(e.value)
    assert _code(e.value) == "StatusCode.UNAVAILABLE"
    with pytest.raises(InferenceServerException, match="unknown stream"):
        _chunk_request(client, ids[MAX_STREAMS], pieces[1], end=True)  # frees Triton's slot
    for p in pieces[1:-1]:
        for seq in ids[:MAX_STREAMS]:
            _chunk_request(client, seq, p)
    texts = [_chunk_request(client, seq, pieces[-1], end=True)[0] for seq in ids[:MAX_STREAMS]]
    assert texts == [finals[name]] * MAX_STREAMS
    text, final, live = _chunk_request(client, ids[-1], pieces[0], start=True, end=True)
    assert final and live == 0
    assert live_streams(served) == 0


def test_grpc_streams_through_a_tritonserver_crash(repo, wavs, offline, tmp_path):
    """Three real-time gRPC streams are open through the front when tritonserver dies (kill
    -9): each ends with an error within its timeout (none hangs) that says tritonserver is not
    answering and the stream must start again, the supervisor brings tritonserver back, and
    a new stream then gets the offline final; no stream is left."""
    from wenet_triton.serving.stream_client import stream_many

    _, finals, _ = offline
    longest = sorted(wavs, key=lambda w: -len(w[1]))[:3]
    assert min(len(w) for _, w in longest) > 3 * RATE
    # a copy: its path names this server's processes alone (the module's server serves `repo`)
    repo = shutil.copytree(repo, str(tmp_path / "model_repo"))
    (tmp_path / "serve").mkdir()
    with serving(repo, str(tmp_path / "serve")) as url:
        got = {}
        t = threading.Thread(target=lambda: got.update(r=stream_many(
            url, longest, concurrency=3, sizes=3200, realtime=True, timeout=20)))
        t.start()
        time.sleep(1.5)
        pids = [int(line.split()[0]) for line in processes_with(repo) if "bin/tritonserver" in line]
        assert len(pids) == 1, processes_with(repo)
        os.kill(pids[0], signal.SIGKILL)
        t.join(120)
        assert not t.is_alive(), "a stream hung after tritonserver died"
        errors = [r.error for r in got["r"]]
        assert all(errors), errors
        assert all("tritonserver is not answering" in e and "start the stream again" in e
                   for e in errors), errors
        assert all(len(r.partials) >= 2 for r in got["r"]), "a stream was not live when cut"
        FIGURES["streams cut by a tritonserver crash"] = [e[:120] for e in errors]
        t0, deadline = time.time(), time.time() + 120
        name, wav = longest[0]
        while True:
            r = stream_many(url, [(name, wav)], concurrency=1, sizes=10240, timeout=20)[0]
            if r.error is None:
                break
            assert time.time() < deadline, r.error
            time.sleep(1)
        FIGURES["a new stream answered after the crash (s)"] = round(time.time() - t0, 1)
        assert r.text == finals[name]
        assert live_streams(url) == 0


# -- the client, the ensemble beside it, rendering ------------------------------------------
def test_stream_cli_prints_offline_transcripts_and_latencies(served, wavs, export_dir):
    """`wenet-triton stream` prints what offline `transcribe --chunk-size 8 --left-chunks 4`
    prints for the same wavs (stdout, input order), and the latencies on stderr."""
    d = shared_path("data", "synth_test")
    files = [os.path.join(d, n + ".wav") for n, _ in wavs[:4]]
    got = subprocess.run(_cli("stream", "--server", served, "--chunk-ms", "640", "--concurrency",
                              "3", *files), capture_output=True, text=True, env=_env(), timeout=300)
    assert got.returncode == 0, got.stderr
    want = subprocess.run(_cli("transcribe", "--model", model_dir("u2pp_conformer"), "--engine-dir",
                               export_dir, "--chunk-size", str(CHUNK), "--left-chunks", str(LEFT),
                               "--threads", "1", *files),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert want.returncode == 0, want.stderr
    assert got.stdout.splitlines() == want.stdout.splitlines()
    assert len(got.stdout.splitlines()) == 4
    for label in ("chunk latency: p50", "first-partial latency: p50", "final latency: p50"):
        assert label in got.stderr
    FIGURES["stream CLI summary"] = got.stderr.strip().splitlines()[-4:]


def test_ensemble_beside_streaming_unchanged(served, wavs, repo, export_dir, tmp_path):
    """The attention_rescoring ensemble is rendered exactly as without the streaming model
    and still answers with the offline full-context transcript."""
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo

    plain = str(tmp_path / "plain")
    build_repo(model_dir("u2pp_conformer"), plain, "onnxruntime",
               overrides={"max_audio_seconds": 30, "engine": {"threads": 1},
                          "models": {"streaming": {"max_queue_delay_us": 5000}},
                          "streaming": dict(STREAM_CFG, enabled=False)}, engine_dir=export_dir)
    assert sorted(os.listdir(repo)) == sorted(os.listdir(plain) + ["streaming"])
    for name in os.listdir(plain):
        if name == "serving.json":
            continue
        for dirpath, _, files in os.walk(os.path.join(plain, name)):
            for f in files:
                a = os.path.join(dirpath, f)
                b = os.path.join(repo, os.path.relpath(a, plain))
                with open(a, "rb") as fa, open(b, "rb") as fb:
                    assert fa.read() == fb.read(), a
    eng = OnnxEngine(export_dir, threads=1)
    rec = Recognizer(eng, Vocab.from_engine_dir(export_dir, eng.settings))
    items = wavs[:3]
    assert [r.text for r in transcribe_many(served, items, concurrency=3)] == \
        [r.text for r in rec.recognize([w for _, w in items])]


def test_load_tools_run_without_failures(served, tmp_path):
    """loadtest/stream_sweep.py (2 rounds of real-time streams, the second from 2 client
    processes: CSV + plot) and short headless locust runs of loadtest/locust_streams.py over
    gRPC streams and over unary calls: no failed or empty stream, no client traceback."""
    import csv
    import importlib.util

    d = shared_path("data", "synth_test")
    out = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "loadtest.stream_sweep", "--server", served,
                          "--wav-dir", d, "--streams", "1,3", "--seconds", "2", "--duration", "2",
                          "--procs", "2", "--out", str(out)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "stream_sweep.csv")))
    assert [int(r["streams"]) for r in rows] == [1, 3]
    assert all(int(r["failed"]) == 0 and int(r["empty_finals"]) == 0 for r in rows)
    assert os.path.getsize(out / "stream_sweep.png") > 10_000
    FIGURES["stream_sweep"] = res.stdout.strip().splitlines()
    # never import locust here: it monkey-patches this process with gevent
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust not installed")
    for transport in ("stream", "unary"):  # one gRPC stream per audio stream, a call per chunk
        prefix = tmp_path / f"locust_{transport}"
        res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "locust"), "-f",
                              os.path.join(ROOT, "loadtest", "locust_streams.py"), "--headless", "-u", "2",
                              "-r", "2", "-t", "6s", "--host", served, "--csv", str(prefix),
                              "--wav-dir", d, "--max-wavs", "10", "--only-summary", "--transport", transport],
                             capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=120)
        rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
        assert "chunk" in rows and int(rows["chunk"]["Request Count"]) > 0, res.stderr[-2000:]
        assert int(rows["Aggregated"]["Failure Count"]) == 0, res.stderr[-2000:]
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert live_streams(served) <= 2  # locust stops users mid-stream: their state idles out


def test_torch_chunk_engine_with_local_rescoring(wavs, tmp_path):
    """engine torch (the PyTorch chunk encoder in the instance) with `streaming.rescore: local`
    (the decoder in the instance, no BLS call) and its own streaming batch size: the served
    finals equal the offline chunk-by-chunk recognizer on the same PyTorch model."""
    from wenet_triton.contract import EngineSettings
    from wenet_triton.engines.export import export_onnx
    from wenet_triton.engines.torch_engine import TorchEngine
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.stream_client import stream_many
    from wenet_triton.streaming import streaming_recognizer

    dec, _ = reference("u2pp_conformer")
    d = str(tmp_path / "export")
    export_onnx(model_dir("u2pp_conformer"), d, beam_size=dec["beam_size"],
                ctc_weight=dec["ctc_weight"], reverse_weight=dec["reverse_weight"], verify=False)
    out = str(tmp_path / "repo")
    build_repo(model_dir("u2pp_conformer"), out, "torch",
               overrides={"max_audio_seconds": 30, "engine": {"threads": 1},
                          "models": {"streaming": {"max_queue_delay_us": 5000}},
                          "streaming": dict(STREAM_CFG, rescore="local", max_batch_size=4)},
               engine_dir=d)
    cfg = open(os.path.join(out, "streaming", "config.pbtxt")).read()
    assert "max_batch_size: 4\n" in cfg and '"rescore" value: { string_value: "local" }' in cfg
    with open(os.path.join(out, "serving.json")) as f:
        st = json.load(f)["streaming"]
    assert (st["engine"], st["rescore"], st["max_batch_size"]) == ("torch", "local", 4)
    model = ASRModel.from_spec(load_model_dir(model_dir("u2pp_conformer")))
    eng = TorchEngine(model, EngineSettings.load(d))
    rec = streaming_recognizer(eng, d, model_dir("u2pp_conformer"), "torch", CHUNK, LEFT)
    items = wavs[:4]
    want = {n: r.text for (n, _), r in zip(items, rec.recognize([w for _, w in items]))}
    (tmp_path / "serve").mkdir()
    with serving(out, str(tmp_path / "serve")) as url:
        replies = stream_many(url, items, concurrency=4, sizes=[10240, 4801, 16000, 3203])
        assert [r.error for r in replies] == [None] * 4
        assert {r.name: r.text for r in replies} == want
        assert live_streams(url) == 0


def test_async_responses_answer_as_execute_does(wavs, offline, export_dir, tmp_path):
    """`streaming.async_responses: true` (execute() hands each batch to the instance's
    decoding thread, answers go out through response senders): 8 staggered streams with odd
    chunk sizes get the offline finals and partials, batches are still shared, a NaN chunk
    costs only itself, and no stream is left."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.stream_client import sequence_ids, split, stream_many

    rec, finals, enc = offline
    out = str(tmp_path / "repo")
    build_repo(model_dir("u2pp_conformer"), out, "onnxruntime",
               overrides={"max_audio_seconds": 30, "engine": {"threads": 1},
                          "models": {"streaming": {"max_queue_delay_us": 5000}},
                          "streaming": dict(STREAM_CFG, async_responses=True, max_inflight=2)},
               engine_dir=export_dir)
    cfg = open(os.path.join(out, "streaming", "config.pbtxt")).read()
    assert '"async_responses" value: { string_value: "true" }' in cfg
    (tmp_path / "serve").mkdir()
    with serving(out, str(tmp_path / "serve")) as url:
        sizes = SIZES[:len(wavs) - 1]
        inf0, exe0 = _stats(url)
        got = {}
        t = threading.Thread(target=lambda: got.update(r=stream_many(
            url, wavs[:-1], concurrency=len(wavs) - 1, sizes=sizes,
            start_delays=[0.15 * i for i in range(len(wavs) - 1)])))
        t.start()
        # the last wav as a stream of its own with a NaN chunk in the middle
        name, wav = wavs[-1]
        client = grpcclient.InferenceServerClient(url)
        seq = sequence_ids(1)[0]
        pieces = split(wav, 6400)
        _chunk_request(client, seq, pieces[0], start=True)
        for k, piece in enumerate(pieces[1:-1], 1):
            if k == 1:
                with pytest.raises(InferenceServerException, match="NaN or inf") as e:
                    _chunk_request(client, seq, np.full(1600, np.nan, np.float32))
                assert _code(e.value) == "StatusCode.INVALID_ARGUMENT"
            _chunk_request(client, seq, piece)
        text, final, _ = _chunk_request(client, seq, pieces[-1], end=True)
        t.join(180)
        assert final and text == finals[name]
        replies = got["r"]
        assert [r.error for r in replies] == [None] * len(replies)
        assert {r.name: r.text for r in replies} == {n: finals[n] for n, _ in wavs[:-1]}
        for b, ((n, w), r) in enumerate(zip(wavs[:-1], replies)):
            assert r.flags == [False] * (len(r.sizes) - 1) + [True]
            assert r.partials == expected_partials(rec, enc, b, w, r.sizes), n
        inf1, exe1 = _stats(url)
        assert exe1 - exe0 < inf1 - inf0, "no two streams ever shared a batch"
        assert live_streams(url) == 0


def test_model_that_cannot_stream_is_served_without_the_streaming_model(tmp_path, caplog):
    from wenet_triton.engines.export import export_onnx
    from wenet_triton.serving.repo import build_repo

    d = str(tmp_path / "export")
    export_onnx(model_dir("conformer_2021"), d, verify=False)
    out = str(tmp_path / "repo")
    with caplog.at_level(logging.WARNING, logger="wenet_triton.serving.repo"):
        build_repo(model_dir("conformer_2021"), out, "onnxruntime", engine_dir=d)
    assert "streaming" not in os.listdir(out) and "attention_rescoring" in os.listdir(out)
    assert any("without the `streaming` model" in r.message and "causal" in r.message
               for r in caplog.records)
    with open(os.path.join(out, "serving.json")) as f:
        assert json.load(f)["streaming"] is None
    with pytest.raises(ValueError, match="finite"):
        build_repo(model_dir("conformer_2021"), str(tmp_path / "r2"), "onnxruntime",
                   overrides={"streaming": {"left_chunks": -1}}, engine_dir=d)
