"""The client's endpoints and retries (issue #18) against the real gRPC guard with no Triton
behind it (it answers UNAVAILABLE, "starting"), and against a closed port: UNAVAILABLE is
retried, on the next endpoint, within the deadline; INVALID_ARGUMENT is not. Fast, loopback."""
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")


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
    from tritonclient.utils import InferenceServerException

    from wenet_triton.serving.client import RetryingClient

    c = RetryingClient(f"127.0.0.1:{down_guard.port}")
    try:
        with pytest.raises(InferenceServerException) as e:
            c.infer(np.zeros(16000 * 31, np.float32), timeout=10)  # longer than the guard's limit
        assert "INVALID_ARGUMENT" in e.value.status()
        assert down_guard.rejected == 1  # one attempt only
    finally:
        c.close()
