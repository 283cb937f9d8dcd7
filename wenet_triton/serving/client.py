"""gRPC client of the `attention_rescoring` ensemble (tritonclient), used by the CLI, the tests
and the load tests.

Several endpoints and retries (issue #18). `url` may name one server (`HOST:PORT`), several
(`A:8001,B:8001` or a list: requests go round robin over them, a retry goes to the next one),
or a gRPC name with client-side round robin over its addresses (`dns:///svc.ns:8001`, e.g. a
Kubernetes headless Service). A request is retried only when that is safe: on UNAVAILABLE,
which is what gRPC reports when the connection could not be made, was reset or was refused
before the server took the request, what `wenet-triton serve` answers while it restarts or
drains, and what a proxy (nginx: HTTP 502/503/504) answers when its upstream failed. A
recognition request has no side effect, so running it twice can only cost time. Other codes
(INVALID_ARGUMENT, DEADLINE_EXCEEDED, INTERNAL...) are final. Retries pause with exponential
backoff and full jitter, and all attempts of a request share one deadline (`timeout`).

Transport (transcribe_many): `unary` (default) sends each request as one ModelInfer call;
`stream` sends them as messages on a few long-lived ModelStreamInfer calls (one per connection
and endpoint), answers matched by request id. `serve`'s checking front relays a stream's
messages for about a third less CPU than unary calls (benchmarks/guard_front.py --transport,
session 23), which is what bounds a GPU server's throughput on a busy host. A request whose
stream ends before its answer (a connection lost, a restart, the front refusing any message
of that stream, an error that Triton does not tag with an id) is sent again as a unary call,
where it gets its own answer or error and the retries above.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

MODEL = "attention_rescoring"
TRANSPORTS = ("unary", "stream")
RETRYABLE = frozenset({"StatusCode.UNAVAILABLE"})
Urls = Union[str, Sequence[str]]


@dataclass
class Reply:
    name: str
    text: Optional[str]
    error: Optional[str]
    seconds: float  # request latency, retries included
    audio_seconds: float
    attempts: int = 1  # 1 = answered (or failed for good) at the first try
    endpoint: str = ""  # the endpoint that gave the final answer


@dataclass
class RetryPolicy:
    """How often and how patiently a request is sent again. The request's deadline (`timeout`)
    is the real bound: with the defaults a request keeps trying for as long as a replica takes
    to restart (10-20 s on CPU), pausing at most `max_backoff` between tries."""
    retries: int = 50          # further tries after the first one (0: no retry)
    backoff: float = 0.05      # first pause (s); doubled at each retry, full jitter
    max_backoff: float = 1.0   # longest pause (s)

    @property
    def attempts(self) -> int:
        return 1 + max(0, self.retries)

    def pause(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...)."""
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (retry - 1)))


NO_RETRY = RetryPolicy(retries=0)


def endpoints(url: Urls) -> List[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2'] (order kept, blanks dropped)."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    out = [p.strip() for p in parts if p and p.strip()]
    if not out:
        raise ValueError("no server endpoint given")
    return out


def channel_args(url: str, own_connection: bool = False) -> Optional[list]:
    """tritonclient's defaults (None) for HOST:PORT; for a `dns:///` name, gRPC's round_robin
    policy so that requests spread over every address the name resolves to (gRPC's default,
    pick_first, would pin the channel to one of them). own_connection: a connection of this
    channel's own (gRPC otherwise shares one between channels of a process with the same
    target and arguments): several of them reach several guard workers of one server, since
    the kernel spreads connections, not requests, over the processes sharing a port."""
    big = 2 ** 31 - 1
    own = [("grpc.use_local_subchannel_pool", 1)] if own_connection else []
    if not url.startswith("dns:"):
        return [("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)] + own \
            if own_connection else None
    return [("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big),
            ("grpc.lb_policy_name", "round_robin"), ("grpc.keepalive_time_ms", 30000),
            ("grpc.dns_min_time_between_resolutions_ms", 5000)] + own


def retryable(exc) -> bool:
    """True for the errors that are safe to send again (see the module doc)."""
    status = exc.status() if hasattr(exc, "status") else None
    return status in RETRYABLE


def make_inputs(wav: np.ndarray, module, outputs=("TRANSCRIPTS",)):
    """WAV FP32 [1, N] and WAV_LENS INT32 [1, 1] for tritonclient.grpc(.aio), and the
    requested outputs."""
    wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
    a = module.InferInput("WAV", list(wav.shape), "FP32")
    a.set_data_from_numpy(wav)
    b = module.InferInput("WAV_LENS", [1, 1], "INT32")
    b.set_data_from_numpy(np.array([[wav.shape[1]]], dtype=np.int32))
    return [a, b], [module.InferRequestedOutput(n) for n in outputs]


def decode_transcript(result) -> str:
    out = result.as_numpy("TRANSCRIPTS").reshape(-1)[0]
    return out.decode("utf-8") if isinstance(out, bytes) else str(out)


class _RoundRobin:
    """Which endpoint a request starts on: the next one each time (thread-safe)."""

    def __init__(self, n: int):
        self.n, self._it, self._lock = n, itertools.count(), threading.Lock()

    def start(self) -> int:
        with self._lock:
            return next(self._it) % self.n


class RetryingClient:
    """Blocking client over one or more endpoints with retries (also used by locust's users,
    where gevent makes the pauses cooperative)."""

    def __init__(self, url: Urls, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc as grpcclient

        self.urls = endpoints(url)
        self.retry = retry
        self.mod = grpcclient
        self.clients = [grpcclient.InferenceServerClient(u, channel_args=channel_args(u)) for u in self.urls]
        self._rr = _RoundRobin(len(self.urls))

    def infer(self, wav: np.ndarray, timeout: float = 60.0) -> Tuple[str, int, str]:
        """-> (transcript, attempts, endpoint); raises the last InferenceServerException when
        a final error came, the attempts ran out or the deadline passed."""
        from tritonclient.utils import InferenceServerException

        inputs, outputs = make_inputs(wav, self.mod)
        deadline = time.monotonic() + timeout
        k = self._rr.start()
        for attempt in range(1, self.retry.attempts + 1):
            i = (k + attempt - 1) % len(self.clients)
            left = deadline - time.monotonic()
            try:
                res = self.clients[i].infer(MODEL, inputs, outputs=outputs, client_timeout=max(left, 0.001))
                return decode_transcript(res), attempt, self.urls[i]
            except InferenceServerException as e:
                pause = self.retry.pause(attempt)
                if (not retryable(e) or attempt == self.retry.attempts
                        or time.monotonic() + pause >= deadline):
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def close(self):
        for c in self.clients:
            c.close()


def transcribe_one(url: Urls, wav: np.ndarray, timeout: float = 60.0,
                   retry: RetryPolicy = RetryPolicy()) -> str:
    """Blocking single request (raises tritonclient's InferenceServerException on error)."""
    client = RetryingClient(url, retry)
    try:
        return client.infer(wav, timeout)[0]
    finally:
        client.close()


async def queued_messages(queue: asyncio.Queue):
    """The messages of a ModelStreamInfer call as they are put on `queue`; None ends the call."""
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


class _StreamBroken(Exception):
    """The ModelStreamInfer call a request was on ended before its answer."""


class _StreamCall:
    """One ModelStreamInfer call carrying many requests; answers matched by request id. When
    the call ends (or an error arrives: Triton's stream errors carry no id, so which request
    failed is unknown), every request still waiting on it gets _StreamBroken."""

    def __init__(self, client):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pending: Dict[str, asyncio.Future] = {}
        self.responses = client.stream_infer(queued_messages(self.queue))
        self.task = asyncio.ensure_future(self._pump())

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def _pump(self):
        why = "the stream ended"
        try:
            async for result, error in self.responses:
                if error is not None:
                    why = f"an error on the stream: {error}"
                    self.responses.cancel()
                    break
                fut = self.pending.pop(result.get_response().id, None)
                if fut is not None and not fut.done():
                    fut.set_result(result)
        except Exception as e:  # noqa: BLE001 - the call failed: connection, front, server
            why = f"the stream failed: {e}"
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_StreamBroken(why))
        self.pending.clear()

    async def infer(self, inputs, outputs, request_id: str):
        fut = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        self.queue.put_nowait({"model_name": MODEL, "inputs": inputs, "outputs": outputs,
                               "request_id": request_id})
        try:
            return await fut
        finally:
            self.pending.pop(request_id, None)

    async def close(self):
        self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(self.task, 5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.responses.cancel()
            self.task.cancel()


async def _run(url: Urls, items: Sequence[Tuple[str, np.ndarray]], concurrency: int,
               sample_rate: int, on_reply: Optional[Callable[[Reply], None]], timeout: float,
               retry: RetryPolicy, connections: int = 1, transport: str = "unary"):
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    urls = endpoints(url)
    conns = [[aioclient.InferenceServerClient(u, channel_args=channel_args(u, connections > 1))
              for u in urls] for _ in range(max(1, connections))]
    rr = _RoundRobin(len(urls))
    queue: asyncio.Queue = asyncio.Queue()
    for i, it in enumerate(items):
        queue.put_nowait((i, it))
    replies: List[Optional[Reply]] = [None] * len(items)
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")
    streams: Dict[Tuple[int, int], _StreamCall] = {}  # (connection, endpoint) -> its live call
    ids = itertools.count()

    async def by_stream(ci: int, e_i: int, inputs, outputs, left: float):
        call = streams.get((ci, e_i))
        if call is None or not call.alive:
            call = streams[(ci, e_i)] = _StreamCall(conns[ci][e_i])
        return await asyncio.wait_for(call.infer(inputs, outputs, f"wt-{next(ids)}"), left)

    async def one(name: str, wav: np.ndarray, ci: int) -> Reply:
        clients = conns[ci]
        inputs, outputs = make_inputs(wav, aioclient)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        k = rr.start()
        if transport == "stream":
            try:
                res = await by_stream(ci, k, inputs, outputs, timeout)
                r = Reply(name, decode_transcript(res), None, 0.0, len(wav) / sample_rate, 1, urls[k])
                r.seconds = time.perf_counter() - t0
                return r
            except _StreamBroken:
                pass  # sent again as a unary call below: its own answer or error, retries as usual
            except asyncio.TimeoutError:
                return Reply(name, None, f"no answer within {timeout:g} s", time.perf_counter() - t0,
                             len(wav) / sample_rate, 1, urls[k])
        for attempt in range(1, retry.attempts + 1):
            e_i = (k + attempt - 1) % len(clients)
            left = max(deadline - time.monotonic(), 0.001)
            try:
                res = await clients[e_i].infer(MODEL, inputs, outputs=outputs, client_timeout=left)
                r = Reply(name, decode_transcript(res), None, 0.0, len(wav) / sample_rate, attempt, urls[e_i])
                break
            except InferenceServerException as e:
                r = Reply(name, None, e.message() or str(e.status()), 0.0, len(wav) / sample_rate,
                          attempt, urls[e_i])
                pause = retry.pause(attempt)
                if not retryable(e) or time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
        r.seconds = time.perf_counter() - t0
        return r

    async def worker(k: int):
        while not queue.empty():
            i, (name, wav) = queue.get_nowait()
            r = await one(name, wav, k % len(conns))
            replies[i] = r
            if on_reply:
                on_reply(r)

    try:
        await asyncio.gather(*(worker(k) for k in range(max(1, concurrency))))
    finally:
        for call in streams.values():
            await call.close()
        for c in (c for cs in conns for c in cs):
            await c.close()
    return replies


def transcribe_many(url: Urls, items: Sequence[Tuple[str, np.ndarray]], concurrency: int = 8,
                    sample_rate: int = 16000, on_reply: Optional[Callable[[Reply], None]] = None,
                    timeout: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                    connections: int = 1, transport: str = "unary") -> List[Reply]:
    """Send (name, wav) items with `concurrency` requests in flight over the endpoint(s) in
    `url`, retrying what is safe to retry; replies in input order. `timeout` bounds each
    request, all its attempts together. connections: gRPC connections per endpoint (requests
    in flight take them in turn); more than one reaches several guard workers of a server.
    transport: `unary` or `stream` (the module's docstring)."""
    return asyncio.run(_run(url, items, concurrency, sample_rate, on_reply, timeout, retry, connections,
                            transport))


def wait_until_ready(url: Urls, timeout: float = 120.0, model: str = MODEL) -> None:
    """Wait until every endpoint in `url` is ready with `model` (TimeoutError if not)."""
    import tritonclient.grpc as grpcclient

    deadline = time.time() + timeout
    for u in endpoints(url):
        client = grpcclient.InferenceServerClient(u, channel_args=channel_args(u))
        while True:
            try:
                if client.is_server_ready() and client.is_model_ready(model):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.time() > deadline:
                raise TimeoutError(f"Triton at {u} not ready with model {model} after {timeout:.0f} s")
            time.sleep(0.5)
        client.close()
