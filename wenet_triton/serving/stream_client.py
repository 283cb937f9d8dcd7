"""gRPC client of the sequence-batched `streaming` model (tritonclient.grpc.aio): each wav
is sent in chunks as one sequence (its own sequence id, START on the first chunk, END on the
last), one chunk in flight per stream, optionally at real-time pace; many streams at once.

Transport: `stream` (the default: each audio stream keeps one bidirectional ModelStreamInfer
call open and sends its chunks as messages on it) or `unary` (one ModelInfer call per chunk).
Same requests, same answers; gRPC streams cost less CPU per chunk: on the dev CPU the checking
front spends 0.38 instead of 0.75 ms per 640 ms chunk (benchmarks/guard_front.py), and on an
H200 host 3,072 real-time streams through the front kept up with gRPC streams (none behind)
while 837 of 6,144 fell behind with unary calls (docs/streaming.md, 2026-12-02).

Latencies (docs/streaming.md, "Serving streams"):
- chunk latency: one chunk request's round trip;
- first-partial latency: from sending a stream's first chunk to receiving its first
  non-empty partial;
- final latency: from sending the END chunk to receiving the final transcript;
- lag (real-time pace): how much later than its audio existed a chunk was sent (a chunk is
  due when its last sample would have been recorded); a stream fell behind real time when
  its largest lag exceeds one chunk.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from wenet_triton.serving import client as request_client

MODEL = "streaming"
TRANSPORTS = ("stream", "unary")  # the first is the default
Sizes = Union[int, Sequence[int]]


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: use {' or '.join(TRANSPORTS)}")


@dataclass
class StreamReply:
    name: str
    text: Optional[str] = None        # the final transcript (None: the stream failed)
    error: Optional[str] = None
    partials: List[str] = field(default_factory=list)   # TRANSCRIPT of each non-final response
    flags: List[bool] = field(default_factory=list)     # IS_FINAL of each response
    sizes: List[int] = field(default_factory=list)      # samples of each chunk sent
    chunk_seconds: List[float] = field(default_factory=list)
    first_partial: Optional[float] = None  # s; None: no non-empty partial came
    final: Optional[float] = None          # s from sending END to the final
    audio_seconds: float = 0.0
    chunk_duration: float = 0.0            # longest chunk's audio, s
    max_lag: float = 0.0                   # s (real-time pace only)
    live_streams: int = -1                 # LIVE_STREAMS of the last response
    sequence_id: int = 0

    @property
    def behind(self) -> bool:
        """Fell behind real time: some chunk went out more than one chunk late."""
        return self.max_lag > self.chunk_duration


def split(wav: np.ndarray, sizes: Sizes) -> List[np.ndarray]:
    """The chunks of a waveform: `sizes` samples each (a list is cycled); at least one."""
    cycle = [int(sizes)] if np.isscalar(sizes) else [int(s) for s in sizes]
    if min(cycle) <= 0:
        raise ValueError(f"chunk sizes must be > 0 samples, got {cycle}")
    out, at, k = [], 0, 0
    while at < len(wav):
        n = cycle[k % len(cycle)]
        out.append(wav[at:at + n])
        at, k = at + n, k + 1
    return out or [wav[:0]]


def chunk_inputs(piece: np.ndarray, module):
    """WAV FP32 [1, n] + WAV_LENS INT32 [1, 1] and the streaming model's outputs."""
    return request_client.make_inputs(piece, module, ("TRANSCRIPT", "IS_FINAL", "LIVE_STREAMS"))


def parse(result) -> Tuple[str, bool, int]:
    """(TRANSCRIPT, IS_FINAL, LIVE_STREAMS) of a response."""
    t = result.as_numpy("TRANSCRIPT").reshape(-1)[0]
    text = t.decode("utf-8") if isinstance(t, bytes) else str(t)
    final = bool(result.as_numpy("IS_FINAL").reshape(-1)[0])
    live = result.as_numpy("LIVE_STREAMS")
    return text, final, int(live.reshape(-1)[0]) if live is not None else -1


def sequence_ids(n: int) -> List[int]:
    """n distinct non-zero uint64 sequence ids, random so that clients do not collide."""
    base = random.getrandbits(40) << 16
    return [base + i + 1 for i in range(n)]


class _UnaryChunks:
    """One ModelInfer call per chunk."""
    def __init__(self, client, seq_id: int, timeout: float):
        self.client, self.seq_id, self.timeout = client, seq_id, timeout

    async def send(self, inputs, outputs, first: bool, last: bool):
        return await self.client.infer(MODEL, inputs, outputs=outputs, sequence_id=self.seq_id,
                                       sequence_start=first, sequence_end=last,
                                       client_timeout=self.timeout)

    async def close(self):
        pass


class _StreamChunks:
    """The chunks of one sequence as messages on one ModelStreamInfer call: a message out,
    its response back, in order (one chunk in flight). Once the call itself has ended (the
    checking front refuses a malformed chunk by ending it), further chunks (the END that
    frees the server's state) go as unary calls."""
    def __init__(self, client, seq_id: int, timeout: float):
        self.seq_id, self.timeout = seq_id, timeout
        self.unary: Optional[_UnaryChunks] = None
        self.client = client
        self.out: asyncio.Queue = asyncio.Queue()
        self.responses = client.stream_infer(request_client.queued_messages(self.out)).__aiter__()

    async def send(self, inputs, outputs, first: bool, last: bool):
        from tritonclient.utils import InferenceServerException

        if self.unary is not None:
            return await self.unary.send(inputs, outputs, first, last)
        self.out.put_nowait({"model_name": MODEL, "inputs": inputs, "outputs": outputs,
                             "sequence_id": self.seq_id, "sequence_start": first, "sequence_end": last})
        try:
            result, error = await asyncio.wait_for(self.responses.__anext__(), self.timeout)
        except (asyncio.TimeoutError, StopAsyncIteration, grpc.RpcError) as e:
            # the call is over (an RpcError: e.g. the checking front refused a chunk)
            self.unary = _UnaryChunks(self.client, self.seq_id, self.timeout)
            if isinstance(e, grpc.RpcError):
                raise InferenceServerException(msg=e.details() or str(e.code()), status=str(e.code())) from None
            raise InferenceServerException(f"no response within {self.timeout:g} s"
                                           if isinstance(e, asyncio.TimeoutError)
                                           else "the server closed the stream") from None
        if error is not None:
            raise error
        return result

    async def close(self):
        self.out.put_nowait(None)
        if self.unary is not None:
            self.responses.cancel()
            return
        try:  # the call ends once the server has seen the end of the requests
            await asyncio.wait_for(self.responses.__anext__(), 5.0)
        except Exception:  # noqa: BLE001 - closing anyway (StopAsyncIteration is the normal end)
            self.responses.cancel()


async def stream_one(client, name: str, wav: np.ndarray, seq_id: int, sizes: Sizes,
                     realtime: bool = False, rate: int = 16000,
                     on_partial: Optional[Callable[[str, str, bool], None]] = None,
                     timeout: float = 60.0, transport: str = "stream") -> StreamReply:
    """Send one wav as one sequence; -> its StreamReply (never raises for server errors).
    transport: `stream` (one ModelStreamInfer call) or `unary` (a ModelInfer call per chunk)."""
    _check_transport(transport)
    chunks = (_StreamChunks if transport == "stream" else _UnaryChunks)(client, seq_id, timeout)
    try:
        return await _send_chunks(chunks, name, wav, seq_id, sizes, realtime, rate, on_partial)
    finally:
        await chunks.close()


async def _send_chunks(chunks, name: str, wav: np.ndarray, seq_id: int, sizes: Sizes,
                       realtime: bool, rate: int, on_partial) -> StreamReply:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    pieces = split(np.asarray(wav, np.float32), sizes)
    r = StreamReply(name, audio_seconds=len(wav) / rate, sequence_id=seq_id,
                    chunk_duration=max(len(p) for p in pieces) / rate)
    t_start = time.perf_counter()
    done = 0
    for k, piece in enumerate(pieces):
        first, last = k == 0, k == len(pieces) - 1
        done += len(piece)
        if realtime:  # a chunk exists once its last sample was recorded
            due = t_start + done / rate
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(due - now)
            r.max_lag = max(r.max_lag, time.perf_counter() - due)
        inputs, outputs = chunk_inputs(piece, aioclient)
        t0 = time.perf_counter()
        if first:
            t_first = t0
        try:
            res = await chunks.send(inputs, outputs, first, last)
        except InferenceServerException as e:
            r.error = f"chunk {k + 1}/{len(pieces)}: {e.message()}"
            if not last:  # free the server's state now rather than at its idle timeout
                try:
                    empty, outs = chunk_inputs(piece[:0], aioclient)
                    await chunks.send(empty, outs, False, True)
                except InferenceServerException:
                    pass
            return r
        t1 = time.perf_counter()
        r.chunk_seconds.append(t1 - t0)
        text, final, r.live_streams = parse(res)
        r.flags.append(final)
        r.sizes.append(len(piece))
        if last:
            r.text, r.final = text, t1 - t0
            if not final:
                r.error = "the END chunk's response is not marked final"
        else:
            r.partials.append(text)
            if text and r.first_partial is None:
                r.first_partial = t1 - t_first
        if on_partial:
            on_partial(name, text, last)
    return r


async def _run(url: str, items: Sequence[Tuple[str, np.ndarray]], concurrency: int, sizes,
               realtime: bool, rate: int, on_partial, on_reply, start_delays, timeout, transport):
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    ids = sequence_ids(len(items))
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(items)):
        queue.put_nowait(i)
    replies: List[Optional[StreamReply]] = [None] * len(items)

    async def worker():
        while not queue.empty():
            i = queue.get_nowait()
            if start_delays is not None:
                await asyncio.sleep(start_delays[i])
            name, wav = items[i]
            s = sizes[i] if isinstance(sizes, list) and len(sizes) == len(items) \
                and not np.isscalar(sizes[0]) else sizes
            replies[i] = await stream_one(client, name, wav, ids[i], s, realtime, rate,
                                          on_partial, timeout, transport)
            if on_reply:
                on_reply(replies[i])

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        await client.close()
    return replies


def stream_many(url: str, items: Sequence[Tuple[str, np.ndarray]], concurrency: int = 8,
                sizes=10240, realtime: bool = False, rate: int = 16000,
                on_partial: Optional[Callable[[str, str, bool], None]] = None,
                on_reply: Optional[Callable[[StreamReply], None]] = None,
                start_delays: Optional[Sequence[float]] = None,
                timeout: float = 60.0, transport: str = "stream") -> List[StreamReply]:
    """Stream (name, wav) items, `concurrency` streams at a time; replies in input order.
    sizes: chunk samples (an int, a list cycled within each stream, or one list per item);
    start_delays: seconds each stream waits before its first chunk (staggered starts);
    transport: `stream` or `unary` (module docstring)."""
    _check_transport(transport)  # before any connection
    return asyncio.run(_run(url, items, concurrency, sizes, realtime, rate, on_partial, on_reply,
                            start_delays, timeout, transport))


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


def latency_summary(replies: Sequence[StreamReply]) -> Dict[str, float]:
    """p50/p99 (ms) of chunk, first-partial and final latencies over the replies."""
    ok = [r for r in replies if r.error is None]
    chunks = [c for r in replies for c in r.chunk_seconds]
    firsts = [r.first_partial for r in ok if r.first_partial is not None]
    finals = [r.final for r in ok if r.final is not None]
    out = {}
    for key, xs in (("chunk", chunks), ("first_partial", firsts), ("final", finals)):
        out[f"{key}_p50_ms"] = percentile(xs, 50) * 1e3
        out[f"{key}_p99_ms"] = percentile(xs, 99) * 1e3
    return out


def wait_until_ready(url: str, timeout: float = 120.0) -> None:
    """Wait until the server at url has the `streaming` model ready (TimeoutError if not)."""
    request_client.wait_until_ready(url, timeout, model=MODEL)
