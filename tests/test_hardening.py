"""Issue #16: a server that no request can take down and whose health tells the truth.

One `wenet-triton serve` (supervisor + checking gRPC front + real tritonserver, loopback
only) is shared by the module; the tests run in file order and the last one stops it with
SIGTERM under load. Figures (requests sent, rejected, recovery times) are printed with -s
and quoted in docs/reliability.md. It serves with --mps under a stand-in for
nvidia-cuda-mps-control (no GPU here; served.FAKE_MPS): every tritonserver it starts,
restarts included, must run as a client of the server's own MPS daemon, which must be gone
when the server is.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import model_dir, wav_path
from served import cli_env, environ_of, export_u2pp, fake_mps_control, processes_with, serve_for_module

from wenet_triton.serving import procs

pytestmark = pytest.mark.server
grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")

FIGURES = {}
MPS_SEEN = {}  # the MPS daemon's pipe directory and pid as the served tritonservers saw them


def _cli(*args):
    return [sys.executable, "-m", "wenet_triton.cli", *args]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_u2pp(tmp_path_factory, "hd_export")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, export_dir):
    from wenet_triton.serving.repo import build_repo

    out = str(tmp_path_factory.mktemp("hd_repo") / "model_repo")
    return build_repo(model_dir("u2pp_conformer"), out, "onnxruntime",
                      overrides={"max_audio_seconds": 30, "max_batch_audio_seconds": 120,
                                 "engine": {"threads": 1},
                                 "models": {"feature_extractor": {"max_queue_delay_us": 20000}}},
                      engine_dir=export_dir)


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("hd_serve"))
    bin_dir = os.path.join(tmp, "bin")
    fake_mps_control(bin_dir)
    yield from serve_for_module(repo, tmp, FIGURES, "hardening figures", http=True, extra_args=["--mps"],
                                env={"PATH": bin_dir + os.pathsep + os.environ["PATH"]})
    if MPS_SEEN:  # the server is gone: so are its MPS daemon and directories
        assert not procs.alive(MPS_SEEN["pid"])
        assert not os.path.exists(MPS_SEEN["pipe"])


@pytest.fixture(scope="module")
def good(served):
    """Six test utterances and their transcripts from the served model (answered alone)."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_one

    items = [(f"good{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(6)]
    return items, [transcribe_one(served.url, w) for _, w in items]


def _check_good(served, good, replies):
    items, texts = good
    assert [r.error for r in replies] == [None] * len(items)
    assert [r.text for r in replies] == texts


def _raw_request(model, inputs, rid=""):
    """A ModelInferRequest built by hand: inputs = [(name, datatype, shape, raw bytes)]."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model, id=rid)
    for name, dtype, shape, raw in inputs:
        t = req.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.extend(shape)
        req.raw_input_contents.append(raw)
    return req


def _send_raw(url, req, timeout=30):
    """-> (status code name, details)."""
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        try:
            stub.ModelInfer(req, timeout=timeout)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""


def _wav_request(wav, lens=None, rid="bad"):
    wav = np.asarray(wav, np.float32).reshape(1, -1)
    n = wav.shape[1] if lens is None else lens
    return _raw_request("attention_rescoring", [
        ("WAV", "FP32", list(wav.shape), wav.tobytes()),
        ("WAV_LENS", "INT32", [1, 1], np.array([[n]], np.int32).tobytes())], rid)


def _bad_cases():
    from wenet_triton.audio.frontend import read_audio

    w = read_audio(wav_path("test_000001"))
    huge = w.copy()
    huge[1000] = 1e35
    loud = w.copy()
    loud[2000] = -1.5
    return {
        "sample 1e35": (_wav_request(huge, rid="bad-1e35"), "sample 1000 is 1e+35"),
        "|x| > 1": (_wav_request(loud, rid="bad-loud"), "outside [-1, 1]"),
        "huge declared shape": (_raw_request("attention_rescoring", [
            ("WAV", "FP32", [1, 2 ** 31], np.zeros(16, np.float32).tobytes()),
            ("WAV_LENS", "INT32", [1, 1], np.array([[16]], np.int32).tobytes())]),
            "declares shape [1, 2147483648]"),
        "31 s buffer, WAV_LENS 4.5 s": (
            _wav_request(np.zeros(16000 * 31, np.float32), lens=72000, rid="bad-long"),
            "longer than the configured maximum"),
        "[4, 2**62] empty over gRPC": (_raw_request("attention_rescoring", [
            ("WAV", "FP32", [4, 2 ** 62], b""),
            ("WAV_LENS", "INT32", [4, 1], np.full((4, 1), 16000, np.int32).tobytes())]),
            "declares shape [4, 4611686018427387904]"),
    }


@pytest.mark.parametrize("case", ["sample 1e35", "|x| > 1", "huge declared shape",
                                  "31 s buffer, WAV_LENS 4.5 s", "[4, 2**62] empty over gRPC"])
def test_bad_request_is_refused_and_its_batch_is_served(served, good, case):
    from wenet_triton.serving.client import transcribe_many

    req, msg = _bad_cases()[case]
    with ThreadPoolExecutor(1) as pool:
        others = pool.submit(transcribe_many, served.url, good[0], 6)
        time.sleep(0.05)  # the bad one lands among the good ones
        code, details = _send_raw(served.url, req)
        replies = others.result(120)
    assert code == "INVALID_ARGUMENT", (code, details)
    assert msg in details
    if req.id:  # the error names the request
        assert f'"{req.id}"' in details
    _check_good(served, good, replies)
    status, info = served.health()
    assert status == 200 and info["restarts"] == 0, info


def test_fuzzed_malformed_requests_never_take_the_server_down(served, good):
    """A few hundred randomized malformed requests (shapes, dtypes, sizes, sample values,
    target models); afterwards the same tritonserver still answers correctly."""
    from wenet_triton.serving.client import transcribe_one

    rng = random.Random(16)
    pid_before = served.triton_pid()
    base = good[0][0][1]
    dtypes = ["FP32", "FP16", "FP64", "INT32", "INT64", "INT16", "UINT8", "BOOL", "BYTES"]
    models = ["attention_rescoring"] * 6 + ["feature_extractor", "encoder", "scoring", "decoder",
                                            "nope"]
    values = [np.nan, np.inf, -np.inf, 1e35, -3.0, 1.0001, 32767.0, 0.0]

    def one(i):
        kind = rng.randrange(6)
        model = rng.choice(models)
        if kind == 0:  # real audio with a poisoned sample
            w = base[: rng.randrange(1, len(base))].copy()
            w[rng.randrange(len(w))] = rng.choice(values)
            req = _wav_request(w, rid=f"fuzz{i}")
            req.model_name = model
        elif kind == 1:  # declared shape vs content size
            shape = [rng.choice([0, 1, 2, 4, 16, 17, 2 ** 31, 2 ** 62, -1])
                     for _ in range(rng.randrange(1, 4))]
            raw = os.urandom(rng.choice([0, 4, 64, 4000]))
            req = _raw_request(model, [("WAV", rng.choice(dtypes), shape, raw),
                                       ("WAV_LENS", "INT32", [1, 1], np.array([[16000]], np.int32).tobytes())])
        elif kind == 2:  # WAV_LENS lies
            n = rng.choice([-5, 0, 1, 399, 10 ** 9, 2 ** 31 - 1])
            req = _wav_request(base[:16000], lens=n, rid=f"fuzz{i}")
        elif kind == 3:  # wrong dtypes, right sizes
            dt = rng.choice(dtypes[1:])
            req = _raw_request(model, [("WAV", dt, [1, 1000], os.urandom(1000 * 8)),
                                       ("WAV_LENS", rng.choice(dtypes), [1, 1], os.urandom(8))])
        elif kind == 4:  # random bytes as samples (NaNs, huge values, denormals)
            raw = os.urandom(4 * rng.choice([400, 8000, 16000]))
            req = _raw_request("attention_rescoring", [
                ("WAV", "FP32", [1, len(raw) // 4], raw),
                ("WAV_LENS", "INT32", [1, 1], np.array([[len(raw) // 4]], np.int32).tobytes())])
        else:  # missing / extra / renamed inputs, batch rows that disagree
            rows = rng.choice([1, 2, 16, 17])
            w = np.zeros((rows, 8000), np.float32)
            ins = [("WAV", "FP32", [rows, 8000], w.tobytes()),
                   ("WAV_LENS", "INT32", [rng.choice([1, rows]), 1],
                    np.full((rows, 1), 8000, np.int32).tobytes()),
                   ("EXTRA", "FP32", [1, 1], b"\0\0\0\0")]
            req = _raw_request(model, rng.sample(ins, rng.randrange(0, 4)))
        return _send_raw(served.url, req, timeout=60)

    t0 = time.time()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(300)))
    codes = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    FIGURES["fuzz"] = {"sent": len(results), "codes": codes, "seconds": round(time.time() - t0, 1)}
    assert codes.get("OK", 0) < len(results) // 4  # malformed requests are refused...
    assert not [d for _, d in results if "not healthy" in d or "Stub" in d]  # ...none kills a stub
    assert served.triton_pid() == pid_before  # no crash, no restart
    assert transcribe_one(served.url, good[0][0][1]) == good[1][0]
    status, info = served.health()
    assert status == 200 and info["restarts"] == 0


def _recover(served, good, kill, what):
    """kill() the server or a part of it; health must go false, then requests succeed again
    within 60 s; the killed server's /dev/shm regions are gone."""
    from wenet_triton.serving.client import transcribe_one

    served.note_regions()
    old_regions = set(served.regions)
    t0 = time.time()
    kill()
    seen_unhealthy = None
    ok_at = None
    while time.time() - t0 < 60:
        status, info = served.health()
        if status != 200 and seen_unhealthy is None:
            seen_unhealthy = time.time() - t0
        if seen_unhealthy is not None:
            try:
                if transcribe_one(served.url, good[0][0][1], timeout=10) == good[1][0]:
                    ok_at = time.time() - t0
                    break
            except Exception:  # noqa: BLE001 - still restarting
                pass
        time.sleep(0.3)
    assert seen_unhealthy is not None, "health never went false"
    assert ok_at is not None, served.tail()
    served.wait_healthy(60)
    FIGURES[what] = {"health false after (s)": round(seen_unhealthy, 1),
                     "answering again after (s)": round(ok_at, 1)}
    left = [r for r in old_regions if os.path.exists(os.path.join("/dev/shm", r))]
    assert not left, f"regions of the killed server left behind: {left}"


def test_killed_python_stub_is_detected_and_the_server_restarted(served, good):
    from wenet_triton.serving import procs

    stub = [s for s in procs.stubs(served.triton_pid()) if "feature_extractor" in s.model][0]
    _recover(served, good, lambda: os.kill(stub.pid, signal.SIGKILL), "stub kill -9")
    assert served.health()[1]["restarts"] == 1


def test_crashed_tritonserver_is_restarted(served, good):
    """The issue's HTTP request (150,000 '[' then ']') crashes Triton 2.51; the supervisor
    brings it back. If this Triton survives the body, it is killed instead."""
    pid = served.triton_pid()

    def crash():
        body = b"[" * 150000 + b"]" * 150000
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{served.http_port}/v2/models/attention_rescoring/infer",
                data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()
        except Exception:  # noqa: BLE001 - an error reply or a dropped connection
            pass
        time.sleep(2)
        from wenet_triton.serving import procs

        FIGURES["JSON nesting body crashed tritonserver"] = not procs.alive(pid)
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)

    _recover(served, good, crash, "tritonserver crash")
    assert served.health()[1]["restarts"] == 2


def test_taken_port_fails_fast_and_names_it(served, repo, tmp_path):
    from wenet_triton.serving.server import ServerError, TritonServer, free_port

    t0 = time.time()
    res = subprocess.run(_cli("serve", "--repo", repo, "--grpc-port", str(served.grpc_port),
                              "--metrics-port", str(free_port()), "--health-port", str(free_port())),
                         capture_output=True, text=True, timeout=60, env=cli_env(), cwd=tmp_path)
    took = time.time() - t0
    assert res.returncode != 0
    assert f"port {served.grpc_port} (--grpc-port)" in res.stderr and "already in use" in res.stderr
    assert "a Triton server" in res.stderr  # and it says who holds it
    assert took < 15, took
    FIGURES["port clash: serve exits after (s)"] = round(took, 1)
    t0 = time.time()
    with pytest.raises(ServerError, match="already in use"):
        TritonServer(repo, None, served.grpc_port, free_port(), log_file=str(tmp_path / "l")).start(60)
    assert time.time() - t0 < 5


def test_client_refuses_another_server_on_its_port(served, tmp_path):
    """What `make demo` runs: the client checks that the gRPC server is the supervised one."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"healthy": True, "server_id": "somebody-else"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        script = ["-m", "wenet_triton.cli", "transcribe"]
        bad = subprocess.run([sys.executable, *script, "--server", served.url, "--health",
                              f"http://127.0.0.1:{httpd.server_port}/healthz", "--wait", "10",
                              wav_path("test_000001")], capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "another server holds that port" in bad.stderr
        ok = subprocess.run([sys.executable, *script, "--server", served.url, "--health",
                             served.health_url, "--wait", "10", wav_path("test_000001")],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("test_000001\t")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_tritonserver_is_a_client_of_the_servers_mps_daemon(served):
    """--mps: tritonserver (this one came after the restarts above) has the daemon's private
    pipe in its environment, and the daemon listens there."""
    env = environ_of(served.triton_pid())
    pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
    assert os.path.basename(os.path.dirname(pipe)).startswith("wenet-triton-mps-")
    assert os.path.exists(os.path.join(pipe, "control"))
    assert env["CUDA_MPS_LOG_DIRECTORY"] == os.path.join(os.path.dirname(pipe), "log")
    with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid")) as f:
        pid = int(f.read())
    assert procs.alive(pid)
    MPS_SEEN.update(pipe=pipe, pid=pid)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ  # only the server's processes use it


def test_sigterm_under_load_loses_no_in_flight_request(served, good):
    """SIGTERM while 8 clients keep sending: every request either gets its right transcript
    or, once the drain began, UNAVAILABLE ('shutting down'); never NOT_FOUND or a lost one.
    Then the server is gone and so are its /dev/shm regions. (Last test: it stops the server.)"""
    from wenet_triton.serving.client import NO_RETRY, transcribe_many

    served.note_regions()
    items, texts = good
    load = [(f"{i}", items[i % len(items)][1]) for i in range(64)]
    want = {f"{i}": texts[i % len(items)] for i in range(64)}
    replies = []
    with ThreadPoolExecutor(1) as pool:
        # no client retries: the refusals themselves are what this test looks at
        fut = pool.submit(transcribe_many, served.url, load, 8, 16000, replies.append, retry=NO_RETRY)
        deadline = time.time() + 60
        while len(replies) < 8 and time.time() < deadline:
            time.sleep(0.05)
        served.proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        time.sleep(0.2)
        assert served.health()[0] in (503, None)  # not ready while draining
        out = fut.result(120)
    code = served.proc.wait(60)
    FIGURES["SIGTERM under load"] = {
        "sent": len(out), "answered": sum(r.error is None for r in out),
        "refused UNAVAILABLE": sum(r.error is not None for r in out),
        "exit (s)": round(time.time() - t0, 1)}
    assert code == 0, served.tail()
    bad = [r for r in out if r.error is None and r.text != want[r.name]]
    assert not bad
    errors = [r.error for r in out if r.error is not None]
    retryable = ("shutting down", "failed to connect", "connection refused", "unavailable")
    assert all(any(w in e.lower() for w in retryable) for e in errors), errors[:3]
    assert not any("NOT_FOUND" in e or "unknown model" in e.lower() for e in errors)
    assert sum(r.error is None for r in out) >= 8
    time.sleep(0.5)
    assert not processes_with(served.repo)
    left = [r for r in served.regions if os.path.exists(os.path.join("/dev/shm", r))]
    assert served.regions and not left, left
    with socket.socket() as s:  # and its ports are free again
        s.bind(("127.0.0.1", served.grpc_port))


def test_transcribe_cli_bad_files_cost_only_themselves(export_dir, tmp_path):
    import soundfile as sf

    from wenet_triton.audio.frontend import read_audio

    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "short.wav", np.zeros(160, np.float32), 16000)  # 10 ms
    sf.write(tmp_path / "silent0.wav", np.zeros(0, np.float32), 16000)  # a header, no samples
    goods = []
    for i in range(5):
        p = tmp_path / f"ok{i}.wav"
        sf.write(p, read_audio(wav_path(f"test_00000{i}")), 16000)
        goods.append(str(p))
    files = goods[:2] + [str(tmp_path / "empty.wav"), str(tmp_path / "short.wav")] + goods[2:] \
        + [str(tmp_path / "silent0.wav")]
    cmd = _cli("transcribe", "--model", model_dir("u2pp_conformer"), "--engine-dir", export_dir,
               "--threads", "1", "--batch-size", "8")
    res = subprocess.run(cmd + files, capture_output=True, text=True, timeout=300, env=cli_env())
    assert res.returncode == 1
    names = [ln.split("\t")[0] for ln in res.stdout.splitlines()]
    assert names == [f"ok{i}" for i in range(5)]
    for bad in ("empty.wav", "short.wav", "silent0.wav"):
        assert any(bad in ln and ln.startswith("error:") for ln in res.stderr.splitlines()), res.stderr
    assert "# 5 files, 3 failed" in res.stderr and "RTF" in res.stderr
    none = subprocess.run(cmd + [str(tmp_path / "empty.wav"), str(tmp_path / "short.wav")],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert none.returncode == 1
    assert "# 0 files, 2 failed, nothing transcribed" in none.stderr and "RTF" not in none.stderr
