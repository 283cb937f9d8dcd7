"""Issue #17: several checking front processes on one port (`serve --guard-workers N`).

The first tests need no Triton: the request splitter gives the same verdicts as a full parse,
the worker count, and a second process on the port (SO_REUSEPORT) is caught. Then one
`wenet-triton serve --guard-workers 2` (real tritonserver, loopback) is shared by the rest,
in file order; the last one stops it with SIGTERM under load. Figures print with -s.
"""
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import model_dir, wav_path
from served import cli_env, export_u2pp, processes_with, serve_for_module

grpcclient = pytest.importorskip("tritonclient.grpc")
grpc = pytest.importorskip("grpc")

FIGURES = {}


# -- no server ------------------------------------------------------------------------------------
def _request(rng):
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=rng.choice(["attention_rescoring", "streaming", "x"]),
                                        id=rng.choice(["", "r1"]))
    if rng.random() < 0.3:
        req.parameters["sequence_id"].int64_param = 7
    for name in rng.sample(["WAV", "WAV_LENS", "EXTRA"], rng.randrange(0, 4)):
        t = req.inputs.add()
        t.name, t.datatype = name, rng.choice(["FP32", "INT32", "BYTES", "FP16"])
        t.shape.extend(rng.choice([[1, 400], [2, 100], [1, 1], [4, 2 ** 62], [-1, 3], [1, 2 ** 31]]))
        if rng.random() < 0.15:
            t.contents.fp32_contents.extend([0.0] * rng.randrange(0, 5))
        if rng.random() < 0.05:
            t.parameters["shared_memory_region"].string_param = "r"
        if rng.random() < 0.85:
            req.raw_input_contents.append(os.urandom(rng.choice([0, 4, 400, 1600])))
    if rng.random() < 0.5:
        req.outputs.add().name = "TRANSCRIPTS"
    return req.SerializeToString()


def _mutate(buf, rng):
    b = bytearray(buf)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            at = rng.randrange(len(b) + 1)
            b[at:at] = os.urandom(rng.randrange(1, 6))
        else:  # a raw content before the other fields (fields may come in any order)
            b[0:0] = b"\x3a\x03abc"
    return bytes(b)


def _verdict(check, buf, limits):
    from wenet_triton.serving.guard import Rejected

    try:
        check(buf, limits)
        return "ok"
    except Rejected as e:
        return f"{e.code.name}: {e}"


def _full_parse(buf, limits):
    """What the guard did before: parse everything, take the sizes from the message."""
    from tritonclient.grpc import service_pb2

    from wenet_triton.serving.guard import Rejected, check_infer_request

    req = service_pb2.ModelInferRequest()
    try:
        req.ParseFromString(buf)
    except Exception as e:  # noqa: BLE001
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}") from e
    check_infer_request(req, limits)


def test_split_raw_contents_gives_the_full_parse_verdicts():
    """The guard parses a request without its raw contents (only their sizes): on valid,
    invalid and corrupted requests it must say exactly what a full parse said."""
    from wenet_triton.serving.guard import Limits, check_serialized_request, split_raw_contents

    limits = Limits(max_batch=2, max_samples=16000, max_request_samples=16000)
    rng = random.Random(17)
    verdicts = {}
    for i in range(3000):
        buf = _request(rng)
        if i % 2:
            buf = _mutate(buf, rng)
        new = _verdict(check_serialized_request, buf, limits)
        assert new == _verdict(_full_parse, buf, limits), buf
        verdicts[new.split(":")[0]] = verdicts.get(new.split(":")[0], 0) + 1
    assert len(verdicts) >= 3, verdicts  # ok, refused and malformed all occurred
    rest, sizes = split_raw_contents(b"\x0a\x01m" + b"\x3a\x02ab" + b"\x1a\x01i" + b"\x3a\x00")
    assert rest == b"\x0a\x01m\x1a\x01i" and sizes == [2, 0]
    assert split_raw_contents(b"\x3b") is None  # a group: protobuf decides


def test_worker_count():
    from wenet_triton.serving.guard_pool import default_workers, resolve_workers
    from wenet_triton.serving.server import ServerError

    assert [default_workers(c) for c in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]
    assert resolve_workers(3, None) == 3
    assert resolve_workers(None, None) == default_workers()
    with pytest.raises(ServerError, match="at least 1"):
        resolve_workers(0, None)


def test_serving_config_key(tmp_path):
    from wenet_triton.serving.guard_pool import default_workers, resolve_workers

    for value, want in ((2, 2), ("auto", default_workers())):
        (tmp_path / "serving.json").write_text(json.dumps({"config": {"guard_workers": value}}))
        assert resolve_workers(None, str(tmp_path)) == want
        assert resolve_workers(5, str(tmp_path)) == 5  # the flag wins


def _reuseport_listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(8)
    return s


def test_a_second_server_sharing_the_port_is_caught():
    """SO_REUSEPORT lets any process of this user join the port. Before the workers: `start`
    fails naming who; after they listen: health turns false naming who, and back once it left."""
    from wenet_triton.serving.guard import Limits
    from wenet_triton.serving.guard_pool import GuardPool
    from wenet_triton.serving.server import ServerError, free_port

    limits = Limits(max_batch=2, max_samples=16000)
    port = free_port()
    other = _reuseport_listener(port)
    pool = GuardPool("127.0.0.1", port, limits, 2)
    t0 = time.time()
    with pytest.raises(ServerError, match=f"port {port} \\(--grpc-port\\).*shared with another process "
                                          f"\\(pid {os.getpid()}"):
        pool.start()
    FIGURES["foreign listener at start: refused after (s)"] = round(time.time() - t0, 1)
    other.close()
    assert not pool.pids()

    pool = GuardPool("127.0.0.1", port, limits, 2)
    pool.start()
    try:
        assert pool.healthy() and len(pool.pids()) == 2
        other = _reuseport_listener(port)
        deadline = time.time() + 10
        while pool.healthy() and time.time() < deadline:
            time.sleep(0.1)
        assert not pool.healthy() and f"pid {os.getpid()}" in pool.foreign
        other.close()
        deadline = time.time() + 10
        while not pool.healthy() and time.time() < deadline:
            time.sleep(0.1)
        assert pool.healthy()
    finally:
        pids = pool.pids()
        pool.stop()
    assert not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids)


def test_a_port_held_without_reuseport_fails_the_workers():
    from wenet_triton.serving.guard import Limits
    from wenet_triton.serving.guard_pool import GuardPool
    from wenet_triton.serving.server import ServerError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.time()
        with pytest.raises(ServerError, match=f"could not serve 127.0.0.1:{port} \\(--grpc-port\\)"):
            GuardPool("127.0.0.1", port, Limits(), 2).start()
        assert time.time() - t0 < 15


def _pool_events(port, **kw):
    from wenet_triton.serving.guard import Limits
    from wenet_triton.serving.guard_pool import GuardPool

    events = []
    pool = GuardPool("127.0.0.1", port, Limits(max_batch=2, max_samples=16000), 1,
                     on_event=events.append, **kw)
    return pool, events


def _wait_for(cond, seconds):
    deadline = time.time() + seconds
    while not cond() and time.time() < deadline:
        time.sleep(0.1)
    return cond()


def test_sigusr1_dumps_a_workers_stacks_and_it_goes_on(capfd):
    """`kill -USR1` on a guard worker (what the pool sends before killing a stalled one)
    writes every thread's Python stack to stderr, and the worker keeps beating and listening."""
    from wenet_triton.serving.server import free_port

    pool, _ = _pool_events(free_port())
    pool.start()
    try:
        pid = pool.pids()[0]
        os.kill(pid, signal.SIGUSR1)
        err = ""
        deadline = time.time() + 10
        while "guard.py" not in err and time.time() < deadline:
            time.sleep(0.2)
            err += capfd.readouterr().err
        assert "Thread 0x" in err and "guard.py" in err, err[-2000:]
        beat = pool._workers[0].last_beat
        assert _wait_for(lambda: pool._workers[0].last_beat > beat + 0.4, 10)
        assert pool.pids() == [pid] and pool.healthy()
    finally:
        pool.stop()
    assert not _alive(pid)


def test_a_stalled_worker_is_killed_and_started_again(capfd):
    """A worker whose loop stops beating (here: SIGSTOP) for stall_timeout is killed after the
    pool asked for its stacks, and a new one listens on the port."""
    from wenet_triton.serving.server import free_port

    port = free_port()
    pool, events = _pool_events(port, stall_timeout=2.0)
    pool.start()
    try:
        old = pool.pids()[0]
        os.kill(old, signal.SIGSTOP)
        assert _wait_for(lambda: pool.pids() and pool.pids()[0] != old and pool.healthy(), 30), events
        text = "\n".join(events)
        assert f"pid {old}) did not beat for" in text and "stacks go to the log" in text, text
        assert "started again" in text
        assert not _alive(old)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the new worker listens
    finally:
        pool.stop()


def test_a_late_watcher_reads_the_beats_before_judging(capfd):
    """The supervisor process itself stalls (here: a thread holding the GIL for 3 s, past the
    2 s stall_timeout): the pool notes that its watcher ran late and the healthy worker is not
    killed (which of the watcher and the pipe's reader runs first after such a stall is up to
    the scheduler; the 2 s grace makes the outcome independent of it)."""
    from wenet_triton.serving.server import free_port

    pool, events = _pool_events(free_port(), stall_timeout=2.0)
    pool.start()
    switch = sys.getswitchinterval()
    try:
        pid = pool.pids()[0]
        sys.setswitchinterval(30.0)  # this thread keeps the GIL while it computes
        try:
            t_end = time.monotonic() + 3.0
            while time.monotonic() < t_end:
                pass
        finally:
            sys.setswitchinterval(switch)
        assert _wait_for(lambda: any("ran" in e and "late" in e for e in events), 10), events
        time.sleep(3.0)  # past the 2 s grace: the beats were read, nothing killed
        assert pool.pids() == [pid] and pool.healthy(), events
        assert not any("did not beat" in e for e in events), events
    finally:
        sys.setswitchinterval(switch)
        pool.stop()


def _alive(pid):
    from wenet_triton.serving import procs

    return procs.alive(pid)


# -- one `serve` with guard_workers: 2 --------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return export_u2pp(tmp_path_factory, "gw_export")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, export_dir):
    from wenet_triton.serving.repo import build_repo

    out = str(tmp_path_factory.mktemp("gw_repo") / "model_repo")
    return build_repo(model_dir("u2pp_conformer"), out, "onnxruntime",
                      overrides={"max_audio_seconds": 30, "engine": {"threads": 1}, "guard_workers": 2,
                                 "models": {"feature_extractor": {"max_queue_delay_us": 20000}}},
                      engine_dir=export_dir)


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    # guard_workers: 2 comes from the repository's serving config (no flag)
    yield from serve_for_module(repo, str(tmp_path_factory.mktemp("gw_serve")), FIGURES,
                                "guard worker figures")


@pytest.fixture(scope="module")
def utterances(served, export_dir):
    """Six test utterances and their offline transcripts (the same model in process)."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer

    items = [(f"u{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(6)]
    eng = OnnxEngine(export_dir)
    rec = Recognizer(eng, Vocab.from_engine_dir(export_dir, eng.settings))
    return items, [r.text for r in rec.recognize([w for _, w in items])]


def _guard(served):
    return served.health()[1].get("guard", {})


def _load(served, utterances, n, connections=8, concurrency=16, retry=None, transport="unary"):
    from wenet_triton.serving.client import RetryPolicy, transcribe_many

    items, texts = utterances
    load = [(f"{i}", items[i % len(items)][1]) for i in range(n)]
    want = {f"{i}": texts[i % len(items)] for i in range(n)}
    return load, want, lambda **kw: transcribe_many(served.url, load, concurrency, connections=connections,
                                                    retry=retry or RetryPolicy(), timeout=120,
                                                    transport=transport, **kw)


@pytest.mark.server
def test_two_workers_listen_and_share_the_connections(served, utterances):
    """16 requests in flight over 8 connections: every transcript equals the offline one, and
    both workers answered some (the kernel spread the connections)."""
    g = _guard(served)
    assert g["workers"] == 2 and g["listening"] == 2, g
    before = [w["served"] for w in g["per_worker"]]
    _, want, run = _load(served, utterances, 48)
    t0 = time.time()
    out = run()
    FIGURES["48 requests, 16 in flight, 8 connections (s)"] = round(time.time() - t0, 1)
    assert [r.error for r in out] == [None] * len(out)
    assert all(r.text == want[r.name] for r in out)
    time.sleep(1.2)  # a heartbeat or two
    after = [w["served"] for w in _guard(served)["per_worker"]]
    share = [a - b for a, b in zip(after, before)]
    FIGURES["requests per worker"] = share
    assert sum(share) >= 48 and min(share) > 0, share


@contextlib.contextmanager
def _mid_load(served, utterances, **kw):
    """64 requests over 8 connections running in the background -> (their future, the wanted
    texts), once 16 have been answered."""
    _, want, run = _load(served, utterances, 64, **kw)
    seen = []
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(run, on_reply=seen.append)
        deadline = time.time() + 60
        while len(seen) < 16 and time.time() < deadline:
            time.sleep(0.05)
        yield fut, want


def _served_by_workers(served):
    return sum(w["served"] for w in _guard(served)["per_worker"])


@pytest.mark.server
def test_stream_transport_answers_as_unary_does_and_a_bad_wav_costs_only_itself(served, utterances):
    """transcribe_many(transport="stream"): 48 wavs as messages on ModelStreamInfer calls (the
    workers count a call once: far fewer than 48), every transcript the offline one; then 24
    with one wav out of [-1, 1] among them: its stream ends (Triton's stream error has no id),
    the requests waiting on it go again as unary calls, so only that wav fails, with its own
    error, and the others get their transcripts."""
    from wenet_triton.serving.client import transcribe_many

    before = _served_by_workers(served)
    _, want, run = _load(served, utterances, 48, transport="stream")
    out = run()
    assert [r.error for r in out] == [None] * len(out), [r.error for r in out if r.error][:3]
    assert all(r.text == want[r.name] for r in out)
    time.sleep(1.2)  # a heartbeat or two: the workers' figures
    calls = _served_by_workers(served) - before
    FIGURES["48 wavs over streams: calls the workers served"] = calls
    assert 1 <= calls <= 16, calls  # at most one stream per connection (8), not one call per wav
    items, texts = utterances
    load = [(f"{i}", items[i % len(items)][1]) for i in range(24)]
    load[5] = ("loud", load[5][1] * 40.0)
    out = transcribe_many(served.url, load, 12, connections=4, timeout=120, transport="stream")
    by = {r.name: r for r in out}
    assert by["loud"].text is None and "[-1, 1]" in by["loud"].error, by["loud"]
    good = [r for r in out if r.name != "loud"]
    assert [r.error for r in good] == [None] * 23, [r.error for r in good if r.error][:3]
    assert all(r.text == texts[int(r.name) % len(items)] for r in good)


@pytest.mark.server
@pytest.mark.parametrize("transport", ["unary", "stream"])
def test_killed_worker_others_keep_serving_and_it_comes_back(served, utterances, transport):
    """kill -9 of one worker while 16 requests are in flight: every one of 64 is answered
    rightly (the client retries what the dead worker's connections lost: UNAVAILABLE; over
    streams, what waited on a lost stream goes again as unary calls), health turns false until
    the supervisor started it again, then true with a new pid."""
    g = _guard(served)
    victim, survivor = g["per_worker"][0]["pid"], g["per_worker"][1]
    restarts = g["restarts"]
    with _mid_load(served, utterances, transport=transport) as (fut, want):
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        unhealthy_at = back_at = None
        while time.time() - t0 < 60:
            status, info = served.health()
            if status != 200 and unhealthy_at is None:
                unhealthy_at = time.time() - t0
            if status == 200 and unhealthy_at is not None:
                back_at = time.time() - t0
                break
            time.sleep(0.05)
        out = fut.result(180)
    assert [r.error for r in out] == [None] * len(out), [r.error for r in out if r.error][:3]
    assert all(r.text == want[r.name] for r in out)
    assert unhealthy_at is not None and back_at is not None, served.tail()
    time.sleep(1.2)  # a heartbeat or two: the workers' figures (a stream counts when it ends)
    g = _guard(served)
    assert g["listening"] == 2 and g["restarts"] == restarts + 1
    assert victim not in [w["pid"] for w in g["per_worker"]]
    still = [w for w in g["per_worker"] if w["pid"] == survivor["pid"]]
    assert still and still[0]["served"] > survivor["served"]  # the other one kept serving
    assert info["restarts"] == 0  # tritonserver itself was not touched
    FIGURES[f"worker kill -9 ({transport})"] = {"health false after (s)": round(unhealthy_at, 2),
                                 "healthy again after (s)": round(back_at, 1),
                                 "requests": len(out), "retried": sum(r.attempts > 1 for r in out)}


@pytest.mark.server
def test_port_of_a_serve_fails_another_fast(served, repo, tmp_path):
    """A second `serve` on the port the workers share fails at once, naming the port and the
    Triton behind it; so does one on a port another process holds with SO_REUSEPORT."""
    from wenet_triton.serving.server import free_port

    def serve_on(port):
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "wenet_triton.cli", "serve", "--repo", repo,
                              "--guard-workers", "2", "--grpc-port", str(port), "--metrics-port",
                              str(free_port()), "--health-port", str(free_port())],
                             capture_output=True, text=True, timeout=60, env=cli_env(), cwd=tmp_path)
        return res, time.time() - t0

    res, took = serve_on(served.grpc_port)
    assert res.returncode != 0 and f"port {served.grpc_port} (--grpc-port)" in res.stderr
    assert "already in use" in res.stderr and "a Triton server" in res.stderr, res.stderr
    assert took < 15
    port = free_port()
    with _reuseport_listener(port):
        res, took2 = serve_on(port)
    assert res.returncode != 0 and f"port {port} (--grpc-port)" in res.stderr, res.stderr
    assert "already in use" in res.stderr and took2 < 15
    FIGURES["port clash: serve exits after (s)"] = [round(took, 1), round(took2, 1)]


@pytest.mark.server
def test_sigterm_drains_every_worker_and_leaves_nothing(served, utterances):
    """SIGTERM while 16 requests are in flight over 8 connections: each request gets its right
    transcript or UNAVAILABLE; exit 0; no worker, tritonserver, stub or /dev/shm region left;
    the port is free. (Last: it stops the server.)"""
    from wenet_triton.serving.client import NO_RETRY

    served.note_regions()
    workers = [w["pid"] for w in _guard(served)["per_worker"]]
    with _mid_load(served, utterances, retry=NO_RETRY) as (fut, want):
        served.proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        time.sleep(0.2)
        assert served.health()[0] in (503, None)
        out = fut.result(180)
    code = served.proc.wait(60)
    assert code == 0, served.tail()
    answered = [r for r in out if r.error is None]
    assert len(answered) >= 16 and all(r.text == want[r.name] for r in answered)
    errors = [r.error.lower() for r in out if r.error is not None]
    assert all(any(w in e for w in ("shutting down", "failed to connect", "connection refused",
                                    "unavailable")) for e in errors), errors[:3]
    FIGURES["SIGTERM under load"] = {"answered": len(answered), "refused": len(errors),
                                     "exit (s)": round(time.time() - t0, 1)}
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)]
    assert not processes_with(served.repo)
    left = [r for r in served.regions if os.path.exists(os.path.join("/dev/shm", r))]
    assert served.regions and not left, left
    # the port is free: nothing listens there, and a new server binds it as gRPC and tritonserver
    # do (SO_REUSEADDR: connections the drain closed first may sit in TIME_WAIT on it for a minute,
    # a kernel state no process holds; a plain bind failed on them once in CI)
    from wenet_triton.serving import procs

    assert not procs.listening_sockets(served.grpc_port, "127.0.0.1")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", served.grpc_port))
        s.listen()
