"""A checking gRPC front for tritonserver: the only gRPC endpoint `wenet-triton serve` exposes.

Triton 2.51 trusts what a request declares. A tensor declared as [4, 2**62] with empty
contents passes its byte-size check (the size wraps to 0) and aborts the python backend stub
that receives it, for good; a huge declared shape makes it allocate gigabytes before it
fails. The guard parses each inference request (the raw bytes are forwarded unchanged) and
refuses, with INVALID_ARGUMENT, any tensor whose declared element count is negative, larger
than the repository's configured maximum or inconsistent with the bytes sent; gRPC itself
refuses messages larger than the largest valid request. Requests of the sequence-batched
`streaming` model (sequence id, start and end are request parameters) pass unchanged like any
other; their WAV must be one chunk ([1, n], n up to `streaming.max_chunk_seconds`). It also

* forwards only health, metadata, config, statistics and inference calls (no shared-memory
  registration, model loading, log or trace settings: PERMISSION_DENIED),
* counts requests in flight, so that a drain can refuse newcomers with UNAVAILABLE (which
  clients retry) and wait for the in-flight ones before tritonserver stops,
* answers UNAVAILABLE while tritonserver restarts, and reports not-ready then.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import faulthandler
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import grpc
from tritonclient.grpc import service_pb2

from wenet_triton.contract import TRITON_DTYPE_BYTES
from wenet_triton.serving.repo_json import repo_config

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
FORWARDED = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
             "ModelConfig", "ModelStatistics", "ModelInfer", "ModelStreamInfer"}
INFER = {"ModelInfer", "ModelStreamInfer"}
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents",
                  "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
                  "BYTES": "bytes_contents"}
AUDIO_MODELS = ("attention_rescoring", "feature_extractor", "encoder")
STREAM_MODEL = "streaming"  # one chunk of one stream per request (sequence batching)


@dataclass
class Limits:
    max_batch: int = 16
    max_samples: int = 60 * 16000        # per row of WAV
    max_request_samples: int = 0         # per request (0: max_batch * max_samples)
    max_elements: int = 16 * 60 * 16000  # any tensor
    max_chunk_samples: int = 2 * 16000   # WAV of the streaming model (one chunk)

    @property
    def max_message_bytes(self) -> int:
        """Largest valid request on the wire: its biggest tensor in float32 plus room."""
        return self.max_elements * 4 + (4 << 20)

    @classmethod
    def from_repo(cls, repo: str) -> "Limits":
        """The limits a rendered repository serves with (serving.json + the models' settings)."""
        cfg = repo_config(repo)
        rate = 16000
        for name in os.listdir(repo) if os.path.isdir(repo) else []:
            settings = os.path.join(repo, name, "1", "wenet_triton.json")
            if os.path.exists(settings):
                with open(settings) as f:
                    rate = int(json.load(f).get("fbank", {}).get("sample_rate", rate))
                break
        max_batch = int(cfg.get("max_batch_size", 16))
        max_samples = int(float(cfg.get("max_audio_seconds", 60)) * rate)
        per_request = int(float(cfg.get("max_batch_audio_seconds") or 0) * rate)
        chunk = int(float((cfg.get("streaming") or {}).get("max_chunk_seconds", 2)) * rate)
        return cls(max_batch, max_samples, per_request, max_batch * max_samples, chunk)


class Rejected(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def split_raw_contents(buf: bytes) -> Optional[Tuple[bytes, List[int]]]:
    """A serialized ModelInferRequest without its raw_input_contents (field 7), and their sizes.

    The raw contents are nearly all of a request's bytes (320 KB for 5 s of audio) and the check
    needs only their sizes: walking the top-level fields skips them without a copy, and the few
    hundred bytes left are parsed by protobuf as before (same validation, same errors). Parsing
    the other fields on their own gives the same message: protobuf merges fields in order,
    wherever they stand. None when the top level is not plain (groups, a field 7 that is not
    length-delimited, truncation, bad varints): the caller then parses the whole request."""
    n = len(buf)
    i = start = 0
    keep: List[bytes] = []
    sizes: List[int] = []
    try:
        while i < n:
            tag_at = i
            key = buf[i]
            i += 1
            if key >= 0x80:
                key, i = _varint(buf, i, key)
            field, wire = key >> 3, key & 7
            if wire == 2:
                length = buf[i]
                i += 1
                if length >= 0x80:
                    length, i = _varint(buf, i, length)
                end = i + length
                if end > n:
                    return None
                if field == 7:
                    if tag_at > start:
                        keep.append(buf[start:tag_at])
                    sizes.append(length)
                    start = end
                i = end
            elif field == 7 or field == 0:
                return None
            elif wire == 0:
                while buf[i] >= 0x80:
                    i += 1
                i += 1
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:  # groups (3, 4) and invalid wire types: protobuf decides
                return None
    except (IndexError, ValueError):
        return None
    if i != n:
        return None
    if not sizes:
        return buf, sizes
    keep.append(buf[start:n])
    return b"".join(keep), sizes


def _varint(buf: bytes, i: int, first: int) -> Tuple[int, int]:
    """The rest of a varint whose first byte `first` (>= 0x80) was read; -> (value, next index)."""
    value, shift = first & 0x7F, 7
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def check_infer_request(req, limits: Limits, raw_sizes: Optional[List[int]] = None) -> None:
    """Raise Rejected when a ModelInferRequest declares what the server would choke on.
    raw_sizes: the sizes of its raw_input_contents when they were split off
    (split_raw_contents); default: read from the request."""
    name = req.model_name
    rid = f' (request "{req.id}")' if req.id else ""
    raw = raw_sizes if raw_sizes is not None else [len(r) for r in req.raw_input_contents]
    if raw and len(raw) != len(req.inputs):
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{len(req.inputs)} inputs but {len(raw)} raw contents{rid}")
    for k, t in enumerate(req.inputs):
        if "shared_memory_region" in t.parameters:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"input '{t.name}': shared-memory inputs are not served here{rid}")
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{t.name}' declares a negative dimension {shape}{rid}")
        count = math.prod(shape)  # Python ints: no wrap-around
        if count > limits.max_elements:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input '{t.name}' declares shape {shape} ({count} elements); the most "
                           f"this server takes in one tensor is {limits.max_elements}{rid}")
        size = TRITON_DTYPE_BYTES.get(t.datatype)
        if raw:
            if size is not None and raw[k] != count * size:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{t.name}': shape {shape} of {t.datatype} needs "
                               f"{count * size} bytes, the request carries {raw[k]}{rid}")
        else:
            field = CONTENTS_FIELD.get(t.datatype)
            have = len(getattr(t.contents, field)) if field else -1
            if have != count:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{t.name}': shape {shape} declares {count} elements, the "
                               f"request carries {max(have, 0)}{rid}")
        if t.name == "WAV" and name == STREAM_MODEL:
            if len(shape) != 2 or shape[0] != 1:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"WAV must be [1, samples] (one chunk of one stream), got {shape}{rid}")
            if shape[1] > limits.max_chunk_samples:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"chunk of {shape[1]} samples is longer than the configured maximum "
                               f"of {limits.max_chunk_samples} samples "
                               f"(streaming.max_chunk_seconds){rid}")
        if t.name == "WAV" and name in AUDIO_MODELS:
            if len(shape) != 2 or not 1 <= shape[0] <= limits.max_batch:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"WAV must be [rows <= {limits.max_batch}, samples], got {shape}{rid}")
            if shape[1] > limits.max_samples:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"WAV buffer of {shape[1]} samples is longer than the configured "
                               f"maximum of {limits.max_samples} samples per row{rid}")
            if limits.max_request_samples and count > limits.max_request_samples:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"WAV carries {count} samples; the most one request may carry "
                               f"is {limits.max_request_samples} (max_batch_audio_seconds){rid}")
    for o in req.outputs:
        if "shared_memory_region" in o.parameters:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"output '{o.name}': shared-memory outputs are not served here{rid}")


def check_serialized_request(raw: bytes, limits: Limits) -> None:
    """check_infer_request on a ModelInferRequest as it came over the wire; a request that
    does not parse is INVALID_ARGUMENT. Its raw contents are not copied (split_raw_contents)."""
    req = service_pb2.ModelInferRequest()
    split = split_raw_contents(raw)
    try:
        req.ParseFromString(raw if split is None else split[0])
    except Exception as e:  # noqa: BLE001 - malformed protobuf
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}") from e
    check_infer_request(req, limits, None if split is None else split[1])


class GrpcGuard:
    """The public gRPC endpoint; forwards to tritonserver at `backend` (host:port).

    An asyncio gRPC server on a thread of its own: a request in flight costs a coroutine, not a
    thread, so the front keeps up with a GPU server's concurrency (the thread-pool version held
    an H200 to ~800-1,050 infer/s). The control methods (start, set_backend, set_down, drain,
    stop) are called from another thread: a guard worker's main thread (`main` below, started
    by guard_pool.GuardPool for `serve`), or a test's.

    reuseport: bind the port with SO_REUSEPORT, so that several guard processes share it and
    the kernel spreads the connections over them (`serve --guard-workers N`). Off, a second
    bind of the port fails, which is what a lone guard wants."""

    def __init__(self, host: str, port: int, limits: Limits, max_concurrent_rpcs: int = 4096,
                 reuseport: bool = False):
        self.pb = service_pb2
        self.reuseport = reuseport
        self.backend: Optional[str] = None
        self.limits = limits
        self.host, self.port = host, port
        self._lock = threading.Condition()
        self.inflight = 0
        self.served = self.rejected = 0
        self.draining = False
        self._down: Optional[str] = "starting"  # reason no backend is there, or None
        self._channel = None
        self._methods: Dict[object, object] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-guard", daemon=True)
        self._thread.start()
        self.server = self._run(self._make_server(max_concurrent_rpcs))

    def _run(self, coro, timeout: Optional[float] = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _make_server(self, max_rpcs: int):
        server = grpc.aio.server(
            handlers=[_Handler(self)], maximum_concurrent_rpcs=max_rpcs,
            options=[("grpc.max_receive_message_length", self.limits.max_message_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 1 if self.reuseport else 0)])
        try:
            bound = server.add_insecure_port(f"{_bracket(self.host)}:{self.port}")
        except RuntimeError as e:  # newer grpc raises instead of returning 0
            raise OSError(f"cannot bind gRPC {self.host}:{self.port}: {e}") from e
        if bound == 0:
            raise OSError(f"cannot bind gRPC {self.host}:{self.port}")
        self.port = bound
        return server

    # -- control (supervisor) ---------------------------------------------------------------
    def start(self):
        self._run(self.server.start())
        log.info("gRPC guard on %s:%d", self.host, self.port)

    def set_backend(self, url: str):
        with self._lock:
            if url == self.backend and self._channel is not None:  # the same tritonserver
                self._down = None
                return

        async def connect():
            return grpc.aio.insecure_channel(url, options=[
                ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)])

        ch = self._run(connect())
        with self._lock:
            old, self._channel, self._methods, self._down = self._channel, ch, {}, None
            self.backend = url
        if old is not None:
            self._run(old.close())

    def set_down(self, reason: str):
        with self._lock:
            self._down = reason

    def drain(self, timeout: float) -> int:
        """Refuse new requests (UNAVAILABLE) and wait up to `timeout` s for the in-flight
        ones; -> how many were still in flight at the end."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.draining = True
            while self.inflight and time.monotonic() < deadline:
                self._lock.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return self.inflight

    def stop(self, grace: float = 1.0):
        try:
            self._run(self.server.stop(grace), timeout=grace + 5)
            if self._channel is not None:
                self._run(self._channel.close(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"inflight": self.inflight, "served": self.served, "rejected": self.rejected}

    # -- calls ------------------------------------------------------------------------------
    def _enter(self, infer: bool):
        with self._lock:
            if self.draining:
                raise Rejected(grpc.StatusCode.UNAVAILABLE,
                               "server is shutting down: retry (another replica)")
            if self._down:
                raise Rejected(grpc.StatusCode.UNAVAILABLE, f"server is {self._down}: retry shortly")
            if infer:
                self.inflight += 1
            return self._channel

    def _leave(self):
        with self._lock:
            self.inflight -= 1
            self.served += 1
            self._lock.notify_all()

    def _stub(self, channel, method: str, streaming: bool):
        key = (id(channel), method)
        fn = self._methods.get(key)
        if fn is None:
            fn = (channel.stream_stream if streaming else channel.unary_unary)(SERVICE + method)
            self._methods[key] = fn
        return fn

    def _check(self, raw: bytes):
        check_serialized_request(raw, self.limits)

    def not_ready(self, method: str) -> Optional[bytes]:
        """While draining or restarting: 'not ready' for readiness calls."""
        if not (self.draining or self._down):
            return None
        if method == "ServerReady":
            return self.pb.ServerReadyResponse(ready=False).SerializeToString()
        if method == "ModelReady":
            return self.pb.ModelReadyResponse(ready=False).SerializeToString()
        return None

    async def unary(self, method: str, raw: bytes, context) -> bytes:
        infer = method == "ModelInfer"
        try:
            if infer:
                self._check(raw)
            else:
                reply = self.not_ready(method)
                if reply is not None:
                    return reply
            channel = self._enter(infer)
        except Rejected as e:
            self._count_rejected()
            await context.abort(e.code, str(e))
        try:
            return await self._stub(channel, method, False)(raw, metadata=_metadata(context),
                                                             timeout=_remaining(context))
        except grpc.RpcError as e:
            await context.abort(e.code(), _backend_error(e, "this request's reply is lost: retry it"))
        finally:
            if infer:
                self._leave()

    async def stream(self, method: str, context):
        """One ModelStreamInfer call, relayed message by message with gRPC's read/write API (no
        async generators between the two calls: each layer of them cost CPU per message).
        A message that fails the checks ends the call with the front's error."""
        try:
            channel = self._enter(True)
        except Rejected as e:
            self._count_rejected()
            await context.abort(e.code, str(e))
        bad = []
        call = self._stub(channel, method, True)(metadata=_metadata(context))

        async def requests():  # client -> tritonserver
            try:
                while True:
                    raw = await context.read()
                    if raw is grpc.aio.EOF:
                        await call.done_writing()
                        return
                    self._check(raw)
                    await call.write(raw)
            except Rejected as e:
                bad.append(e)
                call.cancel()
            except Exception:  # noqa: BLE001 - either side went away: the reply loop ends with it
                call.cancel()

        pump = asyncio.ensure_future(requests())
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                await context.write(reply)
        except (grpc.RpcError, asyncio.CancelledError) as e:
            if not bad:
                if isinstance(e, grpc.RpcError):
                    await context.abort(e.code(), _backend_error(
                        e, "this stream's state is lost: start the stream again"))
                else:
                    await context.abort(grpc.StatusCode.CANCELLED, str(grpc.StatusCode.CANCELLED))
        finally:
            pump.cancel()
            self._leave()
        if bad:
            self._count_rejected()
            await context.abort(bad[0].code, str(bad[0]))

    def _count_rejected(self):
        with self._lock:
            self.rejected += 1


class _Handler(grpc.GenericRpcHandler):
    """No (de)serializers: requests arrive and replies leave as the bytes on the wire. The
    handler of each forwarded method is made once (gRPC asks for it on every call)."""

    def __init__(self, guard: GrpcGuard):
        self.guard = guard
        self.handlers = {SERVICE + m: self._make(m) for m in FORWARDED}

    def _make(self, method: str):
        g = self.guard
        if method == "ModelStreamInfer":
            async def stream_call(_requests, ctx):  # read / write on ctx, not the iterator
                await g.stream(method, ctx)
            return grpc.stream_stream_rpc_method_handler(stream_call)

        async def call(raw, ctx):
            return await g.unary(method, raw, ctx)
        return grpc.unary_unary_rpc_method_handler(call)

    def service(self, details):
        full = details.method or ""
        handler = self.handlers.get(full)
        if handler is None:
            return grpc.unary_unary_rpc_method_handler(_denied(full))
        return handler


# gRPC's own words for a connection that failed or went away (not tritonserver's answers:
# Triton also says UNAVAILABLE, e.g. for an unknown model or a full streaming model)
_TRANSPORT_WORDS = ("socket closed", "stream removed", "failed to connect", "connection reset",
                    "connection refused", "broken pipe", "goaway", "transport closed",
                    "endpoint read failed", "keepalive")


def _backend_error(e: grpc.RpcError, lost: str) -> str:
    """The message passed on for a failed backend call. UNAVAILABLE in gRPC's transport words
    means tritonserver is not answering (killed, crashed, restarting: e.g. "Stream removed
    (Socket closed)"): say so, what the caller lost, and that serve restarts it. Anything else
    is tritonserver's own answer, passed on as it is."""
    details = e.details() or str(e.code())
    low = details.lower()
    if e.code() == grpc.StatusCode.UNAVAILABLE and any(w in low for w in _TRANSPORT_WORDS):
        if "failed to connect" in low or "connection refused" in low:  # nothing reached it
            lost = "nothing was sent: try again"
        return (f"tritonserver is not answering ({details}); {lost} once it is back "
                "(serve restarts it)")
    return details


def _denied(method: str):
    async def handler(_raw, context):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served here")
    return handler


def _metadata(context):
    return tuple((k, v) for k, v in (context.invocation_metadata() or ())
                 if not (k.startswith(":") or k.startswith("grpc-") or k == "user-agent"
                         or k.startswith("triton-grpc-protocol-")))


def _remaining(context) -> Optional[float]:
    t = context.time_remaining()
    return t if t is not None and t < 1e7 else None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# -- a guard worker process (`serve --guard-workers N` runs N of them on the public port) ------
class _Terminate(Exception):
    pass


def main(argv=None) -> int:
    """One guard worker: a GrpcGuard on the public port (SO_REUSEPORT), driven by its
    guard_pool.GuardPool through JSON lines. In on stdin: {"op": "backend", "url"}, {"op":
    "down", "reason"}, {"op": "drain", "timeout"}, {"op": "stop", "grace"}. Out on stdout:
    {"ready": port} or {"error": why} once, then {"stats": {...}} every `--beat` s from the event
    loop (a heartbeat: a loop that stops beating is stuck) and {"drained": left} after a drain.
    Its pool going away (stdin at EOF) stops it; SIGINT (a terminal's Ctrl-C reaches the whole
    process group) is left to the supervisor, which drains first; SIGTERM stops this worker
    alone, letting its requests in flight finish (its pool starts another)."""
    p = argparse.ArgumentParser(prog="python -m wenet_triton.serving.guard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--repo", help="the repository served (its limits; also names it in ps)")
    p.add_argument("--limits", help="Limits as JSON (instead of --repo)")
    p.add_argument("--backend", help="tritonserver's gRPC host:port, if known already")
    p.add_argument("--down", default="starting", help="why there is no backend yet")
    p.add_argument("--worker", type=int, default=0, help="its slot in the pool (logs)")
    p.add_argument("--beat", type=float, default=0.5)
    p.add_argument("--profile", help="write a cProfile of the event loop here when stopping")
    a = p.parse_args(argv)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGUSR1 (the pool, before it kills a worker whose loop stopped beating): every thread's
    # Python stack to stderr, the server's log
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # the pool reads JSON from our stdout: keep it for that alone (fd 1 -> stderr for the rest)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    write_lock = threading.Lock()

    def send(msg: dict):
        with write_lock:
            try:
                out.write(json.dumps(msg) + "\n")
            except (BrokenPipeError, OSError, ValueError):
                pass

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s guard[{a.worker}] %(message)s")
    limits = Limits.from_repo(a.repo) if a.repo else Limits(**json.loads(a.limits or "{}"))
    try:
        g = GrpcGuard(a.host, a.port, limits, reuseport=True)
        if a.backend:
            g.set_backend(a.backend)
        else:
            g.set_down(a.down)
        g.start()
    except Exception as e:  # noqa: BLE001 - reported to the pool, which names the port
        send({"error": str(e) or type(e).__name__})
        return 1
    prof = None
    if a.profile:
        prof = cProfile.Profile()
        g.loop.call_soon_threadsafe(prof.enable)  # the event loop's thread is the one to profile

    def beat():
        send({"stats": g.stats()})
        g.loop.call_later(a.beat, beat)

    def on_term(_signum, _frame):
        raise _Terminate()

    signal.signal(signal.SIGTERM, on_term)
    send({"ready": g.port, "pid": os.getpid()})
    g.loop.call_soon_threadsafe(beat)
    grace = 1.0
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "backend":
                g.set_backend(msg["url"])
            elif op == "down":
                g.set_down(msg["reason"])
            elif op == "drain":
                send({"drained": g.drain(float(msg["timeout"]))})
            elif op == "stop":
                grace = float(msg.get("grace", 1.0))
                break
    except _Terminate:
        grace = 10.0  # alone: finish what is in flight (gRPC refuses newcomers meanwhile)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if prof is not None:
            g._run(_call(prof.disable))
            prof.dump_stats(a.profile)
        g.stop(grace)
    return 0


async def _call(fn):
    return fn()


if __name__ == "__main__":
    raise SystemExit(main())
