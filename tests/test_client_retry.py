"""The client's endpoints and retries (issue #18) against the real gRPC guard with no Triton
behind it (it answers UNAVAILABLE, "starting"), and against a closed port: UNAVAILABLE is
retried, on the next endpoint, within the deadline; INVALID_ARGUMENT is not. And what the
guard says when the process behind it dies mid-call. Fast, loopback."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture()
def down_guard():
    from wenet_triton.serving.guard import GrpcGuard, Limits
    from wenet_triton.serving.server import free_port

    g = GrpcGuard("127.0.0.1", free_port(), Limits(max_batch=2, max_samples=16000 * 30))
    g.set_down("starting")
    g.start()
    yield g
    g.stop()


def test_endpoints_and_policy():
    from wenet_triton.serving.client import RetryPolicy, channel_args, endpoints

    assert endpoints("a:1, b:2,") == ["a:1", "b:2"] and endpoints(["a:1"]) == ["a:1"]
    with pytest.raises(ValueError):
        endpoints(" , ")
    assert channel_args("a:1") is None
    assert ("grpc.lb_policy_name", "round_robin") in channel_args("dns:///svc.ns:8001")
    p = RetryPolicy(retries=5, backoff=0.1, max_backoff=0.3)
    assert p.attempts == 6 and all(0 <= p.pause(k) <= 0.3 for k in range(1, 20))


def test_unavailable_is_retried_on_every_endpoint_then_reported(down_guard):
    from wenet_triton.serving.client import RetryPolicy, transcribe_many
    from wenet_triton.serving.server import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens: connection refused
    urls = [f"127.0.0.1:{down_guard.port}", closed]
    wav = np.zeros(16000, np.float32)
    out = transcribe_many(urls, [("x", wav), ("y", wav)], 2, timeout=20,
                          retry=RetryPolicy(retries=5, backoff=0.01, max_backoff=0.02))
    assert [r.attempts for r in out] == [6, 6]
    assert all(r.error for r in out)
    assert {r.endpoint for r in out} <= set(urls)
    assert down_guard.rejected >= 6  # both requests came to the guard on alternate attempts


def test_deadline_bounds_the_retries(down_guard):
    from wenet_triton.serving.client import RetryPolicy, transcribe_many

    t0 = time.time()
    (r,) = transcribe_many(f"127.0.0.1:{down_guard.port}", [("x", np.zeros(1600, np.float32))], 1,
                           timeout=1.5, retry=RetryPolicy(retries=1000, backoff=0.05, max_backoff=0.2))
    assert r.error and 1 < r.attempts < 1000 and time.time() - t0 < 3


def test_invalid_argument_is_not_retried(down_guard):
    from wenet_triton.serving.client import RetryingClient

    c = RetryingClient(f"127.0.0.1:{down_guard.port}")
    try:
        with pytest.raises(InferenceServerException) as e:
            c.infer(np.zeros(16000 * 31, np.float32), timeout=10)  # longer than the guard's limit
        assert "INVALID_ARGUMENT" in e.value.status()
        assert down_guard.rejected == 1  # one attempt only
    finally:
        c.close()


# a stand-in for tritonserver's gRPC service: each stream message gets an empty response,
# ModelInfer never answers; it prints its port and serves until killed
STAND_IN = """
import time
from concurrent import futures
import grpc

def stream(requests, ctx):
    for _ in requests:
        yield b""

def infer(raw, ctx):
    if b"nope" in raw:  # tritonserver's own UNAVAILABLE answer
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "Request for unknown model: 'nope' is not found")
    time.sleep(60)
    return b""

server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
    "inference.GRPCInferenceService",
    {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream),
     "ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})])
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def test_backend_killed_mid_call_is_named_to_the_client():
    """The process behind the guard is killed (-9) while a gRPC stream is open and while a
    request waits: both callers get UNAVAILABLE (so retrying clients retry) with a message
    that says tritonserver is not answering and what they lost, gRPC's own words kept.
    Tritonserver's own UNAVAILABLE answers (an unknown model) pass unchanged."""
    import tritonclient.grpc as grpcclient

    from wenet_triton.serving.guard import GrpcGuard, Limits
    from wenet_triton.serving.server import free_port

    def stand_in():
        p = subprocess.Popen([sys.executable, "-c", STAND_IN], stdout=subprocess.PIPE, text=True)
        return p, int(p.stdout.readline())

    def wav():
        x = grpcclient.InferInput("WAV", [1, 1600], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1600), np.float32))
        return [x]

    g = GrpcGuard("127.0.0.1", free_port(), Limits(max_batch=2, max_samples=16000 * 30))
    procs, timers = [], []
    c = grpcclient.InferenceServerClient(f"127.0.0.1:{g.port}")
    try:
        p, port = stand_in()
        procs.append(p)
        g.set_backend(f"127.0.0.1:{port}")
        g.start()
        replies = queue.Queue()
        c.start_stream(callback=lambda result, error: replies.put(error))
        c.async_stream_infer("streaming", wav(), sequence_id=7, sequence_start=True)
        assert replies.get(timeout=10) is None  # the stream is live
        os.kill(p.pid, signal.SIGKILL)
        err = replies.get(timeout=10)
        assert err is not None and err.status() == "StatusCode.UNAVAILABLE", err
        assert "tritonserver is not answering" in err.message(), err.message()
        assert "start the stream again" in err.message()
        c.stop_stream()

        p, port = stand_in()
        procs.append(p)
        g.set_backend(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException) as e:
            c.infer("nope", wav(), client_timeout=20)
        assert e.value.message().endswith("Request for unknown model: 'nope' is not found"), e.value.message()
        assert "tritonserver is not answering" not in e.value.message()
        timers.append(threading.Timer(1.0, p.kill))  # Popen.kill: never a reused pid
        timers[-1].start()
        with pytest.raises(InferenceServerException) as e:
            c.infer("attention_rescoring", wav(), client_timeout=20)
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "tritonserver is not answering" in e.value.message() and "retry" in e.value.message()
        p.wait(10)  # and while nothing listens there (the supervisor has not noticed yet)
        with pytest.raises(InferenceServerException) as e:
            c.infer("attention_rescoring", wav(), client_timeout=20)
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert "tritonserver is not answering" in e.value.message(), e.value.message()
        assert "nothing was sent: try again" in e.value.message()
    finally:
        for t in timers:
            t.cancel()
        c.close()
        g.stop()
        for p in procs:
            p.kill()
            p.wait(10)
