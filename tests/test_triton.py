"""A real tritonserver (nvidia-pytriton's) serving the rendered repository over gRPC."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, model_dir, shared_path, wav_path
from served import infer_batch, processes_with

pytestmark = pytest.mark.server
tritonclient = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, exports):
    from wenet_triton.serving.repo import build_repo

    out = str(tmp_path_factory.mktemp("repo") / "model_repo")
    return build_repo(model_dir("u2pp_conformer"), out, "onnxruntime",
                      overrides={"max_audio_seconds": 30, "engine": {"threads": 2}},
                      engine_dir=exports["u2pp_conformer"])


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    from wenet_triton.serving.server import TritonServer, free_port

    log = str(tmp_path_factory.mktemp("log") / "triton.log")
    s = TritonServer(repo, free_port(), free_port(), free_port(), host="127.0.0.1", log_file=log)
    s.start(timeout=240)
    yield s
    s.stop()
    time.sleep(1)
    assert not processes_with(repo), "tritonserver or stubs left behind"


def test_grpc_matches_offline_at_concurrency_8(server, exports):
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer
    from wenet_triton.serving.client import transcribe_many

    d = shared_path("data", "synth_test")
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".wav"))
    items = [(n, read_audio(os.path.join(d, n + ".wav"))) for n in names]
    replies = transcribe_many(server.grpc_url, items, concurrency=8)
    assert [r.error for r in replies] == [None] * len(items)
    eng = OnnxEngine(exports["u2pp_conformer"])
    rec = Recognizer(eng, Vocab.from_engine_dir(exports["u2pp_conformer"], eng.settings))
    offline = []
    for i in range(0, len(items), 8):
        offline += [r.text for r in rec.recognize([w for _, w in items[i:i + 8]])]
    assert [r.text for r in replies] == offline


def _infer_raw(url, wav, lens=None, wav_dtype="FP32", lens_dtype="INT32"):
    client = tritonclient.InferenceServerClient(url)
    a = tritonclient.InferInput("WAV", list(wav.shape), wav_dtype)
    a.set_data_from_numpy(wav)
    n = np.array([[wav.shape[-1] if lens is None else lens]],
                 dtype=np.int32 if lens_dtype == "INT32" else np.int64)
    b = tritonclient.InferInput("WAV_LENS", [1, 1], lens_dtype)
    b.set_data_from_numpy(n)
    return client.infer("attention_rescoring", [a, b])


@pytest.mark.parametrize("wav,lens,dtypes,msg", [
    (np.zeros((1, 0), np.float32), None, ("FP32", "INT32"), "empty WAV"),
    (np.full((1, 16000), np.nan, np.float32), None, ("FP32", "INT32"), "NaN or inf"),
    (np.full((1, 16000), np.inf, np.float32), None, ("FP32", "INT32"), "NaN or inf"),
    (np.zeros((1, 16000), np.float32), 0, ("FP32", "INT32"), "WAV_LENS 0 outside"),
    (np.zeros((1, 16000), np.float32), 20000, ("FP32", "INT32"), "WAV_LENS 20000 outside"),
    (np.zeros((1, 16000 * 31), np.float32), None, ("FP32", "INT32"), "longer than the configured maximum"),
    (np.zeros((1, 50), np.float32), None, ("FP32", "INT32"), "shorter than one"),
    (np.zeros((1, 1000), np.float32), None, ("FP32", "INT32"), "too short"),
    (np.zeros((1, 16000), np.int16), None, ("INT16", "INT32"), "data-type"),
    (np.zeros((1, 16000), np.float32), None, ("FP32", "INT64"), "data-type"),
    (np.zeros((1, 2, 8000), np.float32), None, ("FP32", "INT32"), "unexpected shape"),
])
def test_bad_input_gets_clear_error_and_server_keeps_serving(server, wav, lens, dtypes, msg):
    from tritonclient.utils import InferenceServerException

    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_one

    with pytest.raises(InferenceServerException, match=msg):
        _infer_raw(server.grpc_url, wav, lens, *dtypes)
    good = read_audio(wav_path("test_000003"))
    assert len(transcribe_one(server.grpc_url, good)) > 0


def test_one_request_may_carry_a_batch_of_utterances(server):
    """What perf_analyzer -b N sends: rows of one request come back in order, each as if
    sent alone; a bad row fails the request with an error naming the row."""
    from tritonclient.utils import InferenceServerException

    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_one

    wavs = [read_audio(wav_path(f"test_00000{i}")) for i in (1, 4, 2)]
    assert infer_batch(server.grpc_url, wavs) == [transcribe_one(server.grpc_url, w) for w in wavs]
    with pytest.raises(InferenceServerException, match=r"WAV \(row 1\): waveform contains NaN or inf"):
        infer_batch(server.grpc_url, [wavs[0], np.full(16000, np.nan, np.float32)])


def test_python_regions_hold_the_largest_batch_without_growing(server):
    """The python backend's regions are sized at start for the repository's largest batch
    (16 rows x 30 s here): two requests of 8 x 30 s each, batched together, leave every
    region at the size it started with (Triton 2.51 crashed growing them under load), and
    each row gets the transcript it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving import procs
    from wenet_triton.serving.client import transcribe_one

    stubs = procs.stubs(server.proc.pid)
    assert stubs
    sizes = {st.region: os.stat(os.path.join(procs.SHM_DIR, st.region)).st_size for st in stubs}
    for st in stubs:  # the stub is told the planned size on its command line
        assert int(procs._cmdline(st.pid)[3]) == server.shm_plan.default_bytes
    # the feature extractor's batch of 16 x 30 s of float32 samples fits in one region
    assert set(sizes.values()) == {server.shm_plan.default_bytes}
    assert server.shm_plan.default_bytes >= 16 * 30 * 16000 * 4
    w = read_audio(wav_path("test_000003"))
    long = np.tile(w, -(-30 * 16000 // len(w)))[:30 * 16000]
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: infer_batch(server.grpc_url, [long] * 8), range(2)))
    alone = transcribe_one(server.grpc_url, long)
    assert alone and outs == [[alone] * 8] * 2
    after = {r: os.stat(os.path.join(procs.SHM_DIR, r)).st_size for r in sizes}
    assert after == sizes, "a python-backend region grew under load"


def test_stubs_keep_compiled_triton_kernels_in_the_wenet_triton_cache(server):
    """The python backend stubs (where the torch_cuda engine compiles its Triton-lang kernels)
    run with TRITON_CACHE_DIR in $WENET_TRITON_CACHE (a volume in the container), so the
    compiled code outlives a restart; a TRITON_CACHE_DIR the caller set wins."""
    from wenet_triton.paths import cache_root
    from wenet_triton.serving import procs
    from wenet_triton.serving.server import TritonInstall

    stubs = procs.stubs(server.proc.pid)
    assert stubs
    for st in stubs:
        with open(f"/proc/{st.pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        assert env[b"TRITON_CACHE_DIR"].decode() == os.path.join(cache_root(), "triton_kernels")
    mine = server.process_env(TritonInstall("tritonserver", None, {"TRITON_CACHE_DIR": "/srv/kernels"}))
    assert mine["TRITON_CACHE_DIR"] == "/srv/kernels"  # one already set is kept


def test_first_requests_benchmark_reports_each_wave_and_its_failures(server, tmp_path, capsys):
    """benchmarks.first_requests against a running server: one CSV row per wave (appended run
    after run, labelled), latencies of answered requests, failures counted with the server's
    error (audio too short for the model), exit status 1 then; a malformed wave is a usage
    error naming it; `plot` draws the CSV."""
    import csv

    from benchmarks import first_requests as fr

    out = str(tmp_path / "first.csv")
    assert fr.main(["--url", server.grpc_url, "--out", out, "--waves", "3x1.5,2x2", "--label", "a"]) == 0
    assert fr.main(["--url", server.grpc_url, "--out", out, "--waves", "2x0.01", "--label", "short"]) == 1
    rows = list(csv.DictReader(open(out)))
    assert [(r["label"], r["wave"], r["requests"], r["failed"]) for r in rows] == [
        ("a", "1", "3", "0"), ("a", "2", "2", "0"), ("short", "1", "2", "2")]
    for r in rows[:2]:
        assert 0 < float(r["p50_ms"]) <= float(r["max_ms"]) <= 1000 * float(r["wall_s"]) + 1
    assert "shorter than one 25 ms frame" in rows[2]["first_error"] and rows[2]["max_ms"] == ""
    with pytest.raises(SystemExit) as e:
        fr.main(["--url", server.grpc_url, "--out", out, "--waves", "64by10"])
    assert e.value.code == 2 and "wave '64by10': write REQUESTSxSECONDS" in capsys.readouterr().err
    assert fr.main(["plot", "--out", str(tmp_path / "first.png"), out]) == 0
    assert os.path.getsize(tmp_path / "first.png") > 10_000


def test_bad_request_does_not_spoil_its_batch(server):
    """A NaN request batched with good ones fails alone."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_many

    good = [(f"g{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(6)]
    items = good[:3] + [("bad", np.full(16000, np.nan, np.float32))] + good[3:]
    replies = transcribe_many(server.grpc_url, items, concurrency=7)
    assert [r.name for r in replies if r.error] == ["bad"]
    alone = transcribe_many(server.grpc_url, good, concurrency=1)
    assert [r.text for r in replies if not r.error] == [r.text for r in alone]


def test_transcribe_with_server_resamples_and_reports_bad_files(server, tmp_path):
    import soundfile as sf
    from scipy.signal import resample_poly

    from wenet_triton.audio.frontend import read_audio

    wav = read_audio(wav_path("test_000004"))
    sf.write(tmp_path / "rate8k.wav", resample_poly(wav, 1, 2).astype(np.float32), 8000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    ok = tmp_path / "ok.wav"
    sf.write(ok, wav, 16000, subtype="PCM_16")
    res = subprocess.run([sys.executable, "-m", "wenet_triton.cli", "transcribe", "--server",
                          server.grpc_url, str(tmp_path / "rate8k.wav"), str(tmp_path / "corrupt.wav"),
                          str(ok)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1  # one file failed
    assert "corrupt.wav: not a readable audio file" in res.stderr
    lines = dict(line.split("\t") for line in res.stdout.splitlines())
    assert set(lines) == {"rate8k", "ok"} and lines["ok"] and lines["rate8k"]
    assert "1 failed" in res.stderr and "RTF" in res.stderr


def test_serve_command_stops_cleanly_on_sigterm(repo, tmp_path):
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_one, wait_until_ready
    from wenet_triton.serving.server import free_port

    ports = [str(free_port()) for _ in range(4)]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "wenet-triton"), "serve",
                             "--repo", repo, "--host", "127.0.0.1", "--http-port", ports[0],
                             "--grpc-port", ports[1], "--metrics-port", ports[2],
                             "--health-port", ports[3]],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"127.0.0.1:{ports[1]}", 240)
        assert transcribe_one(f"127.0.0.1:{ports[1]}", read_audio(wav_path("test_000001")))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        log.close()
        if proc.poll() is None:
            proc.kill()
    time.sleep(1)
    assert not [p for p in processes_with(repo) if ports[1] in p]


@pytest.mark.parametrize("impl", ["knf", "torch"])
def test_padded_feature_batches_give_the_same_transcripts(impl, exports, tmp_path):
    """feature_pad_batch (what TensorRT encoders need): each dynamic batch's features are
    padded to its longest; transcripts must equal offline decoding with the same fbank."""
    sys.path.insert(0, ROOT)
    from loadtest.metrics import delta, scrape, summarize
    from wenet_triton.audio.frontend import Fbank, read_audio
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.server import TritonServer, free_port

    repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "repo"), "onnxruntime",
                      overrides={"feature_pad_batch": True, "engine": {"threads": 2},
                                 "feature_impl": impl,
                                 "models": {"feature_extractor": {"instances": 1,
                                                                  "max_queue_delay_us": 200000}}},
                      engine_dir=exports["u2pp_conformer"])
    items = [(f"u{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(8)]
    metrics_port = free_port()
    with TritonServer(repo, free_port(), free_port(), metrics_port, host="127.0.0.1",
                      log_file=str(tmp_path / "log")) as s:
        before = scrape(f"127.0.0.1:{metrics_port}")
        padded = transcribe_many(s.grpc_url, items, concurrency=8)
        stats = summarize(delta(before, scrape(f"127.0.0.1:{metrics_port}")))
    assert stats["feature_extractor"]["avg_batch"] > 1  # padding really happened
    assert [r.error for r in padded] == [None] * 8
    eng = OnnxEngine(exports["u2pp_conformer"])
    rec = Recognizer(eng, Vocab.from_engine_dir(exports["u2pp_conformer"], eng.settings))
    rec.fbank = Fbank(rec.fbank.conf, impl)
    assert [r.text for r in padded] == [r.text for r in rec.recognize([w for _, w in items])]
    assert not processes_with(repo)


def test_fbank_inside_the_encoder_gives_the_same_transcripts(exports, tmp_path):
    """feature_device: encoder (what GPU hosts use: fbank batched in the encoder's process,
    no feature_extractor hop): same transcripts as offline decoding, and a bad request in a
    dynamic batch gets its own clear error while the others are served."""
    sys.path.insert(0, ROOT)
    from loadtest.metrics import delta, scrape, summarize
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.server import TritonServer, free_port

    repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "repo"), "onnxruntime",
                      overrides={"feature_device": "encoder", "engine": {"threads": 2},
                                 "models": {"encoder": {"max_queue_delay_us": 200000}}},
                      engine_dir=exports["u2pp_conformer"])
    assert not os.path.exists(os.path.join(repo, "feature_extractor"))
    good = [(f"u{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(8)]
    bad = [("short", np.zeros(1000, np.float32)), ("nan", np.full(16000, np.nan, np.float32))]
    metrics_port = free_port()
    with TritonServer(repo, free_port(), free_port(), metrics_port, host="127.0.0.1",
                      log_file=str(tmp_path / "log")) as s:
        before = scrape(f"127.0.0.1:{metrics_port}")
        replies = transcribe_many(s.grpc_url, good[:4] + bad + good[4:], concurrency=10)
        stats = summarize(delta(before, scrape(f"127.0.0.1:{metrics_port}")))
        batched = infer_batch(s.grpc_url, [w for _, w in good[:3]])
    assert stats["encoder"]["avg_batch"] > 1
    errors = {r.name: r.error for r in replies if r.error}
    assert sorted(errors) == ["nan", "short"]
    assert "too short" in errors["short"] and "NaN or inf" in errors["nan"]
    eng = OnnxEngine(exports["u2pp_conformer"])
    rec = Recognizer(eng, Vocab.from_engine_dir(exports["u2pp_conformer"], eng.settings))
    offline = [r.text for r in rec.recognize([w for _, w in good])]
    assert [r.text for r in replies if not r.error] == offline
    assert batched == offline[:3]
    assert not processes_with(repo)


def test_locust_smoke_zero_failures(server, tmp_path):
    """A short headless locust run (loadtest/locustfile.py) on loopback: no failed request."""
    import csv
    import importlib.util

    # never import locust here: it monkey-patches this process with gevent, after which
    # grpc's asyncio client (the other tests) hangs
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust not installed")
    prefix = tmp_path / "locust"
    res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "locust"), "-f",
                          os.path.join(ROOT, "loadtest", "locustfile.py"), "--headless", "-u", "4",
                          "-r", "4", "-t", "20s", "--host", server.grpc_url, "--csv", str(prefix),
                          "--wav-dir", shared_path("data", "synth_test"), "--max-wavs", "30",
                          "--only-summary"], capture_output=True, text=True, timeout=180)
    rows = list(csv.DictReader(open(f"{prefix}_stats.csv")))
    total = [r for r in rows if r["Name"] == "Aggregated"][0]
    assert int(total["Request Count"]) > 0, res.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, res.stderr[-2000:]


def test_demo_model_served_with_its_lm_matches_offline(tmp_path):
    """The README's main job: the demo model served with its decoding.yaml (beam 20 and the
    n-gram LM in the scoring model) gives the offline transcripts and <= 10% CER."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.cer import cer, read_text
    from wenet_triton.decode.options import resolve
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.engines.artifacts import ensure_export
    from wenet_triton.pipeline import Recognizer
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.server import TritonServer, free_port

    demo = os.path.join(ROOT, "models", "demo_zh_synth")
    dec = resolve(demo)
    engine_dir = ensure_export(demo, beam_size=dec.beam_size)
    repo = build_repo(demo, str(tmp_path / "repo"), "onnxruntime",
                      overrides={"engine": {"threads": 2}}, engine_dir=engine_dir)
    with open(os.path.join(repo, "scoring", "config.pbtxt")) as f:
        assert '"lm_file"' in f.read()
    d = shared_path("data", "synth_test")
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".wav"))
    items = [(n, read_audio(os.path.join(d, n + ".wav"))) for n in names]
    with TritonServer(repo, free_port(), free_port(), free_port(), host="127.0.0.1",
                      log_file=str(tmp_path / "log")) as s:
        replies = transcribe_many(s.grpc_url, items, concurrency=8)
    assert [r.error for r in replies] == [None] * len(items)
    eng = OnnxEngine(engine_dir)
    rec = Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=dec)
    offline = []
    for i in range(0, len(items), 10):
        offline += [r.text for r in rec.recognize([w for _, w in items[i:i + 10]])]
    assert [r.text for r in replies] == offline
    ref = read_text(os.path.join(d, "text"))
    assert cer((ref[n], r.text) for n, r in zip(names, replies))[0] <= 0.10
    assert not processes_with(repo)
