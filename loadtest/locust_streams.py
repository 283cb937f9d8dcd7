"""Locust load test of the sequence-batched `streaming` model over gRPC (tritonclient).

    locust -f loadtest/locust_streams.py --headless -u 32 -r 4 -t 120s --host 127.0.0.1:8001 \
        --csv out/streams [--wav-dir WAV_DIR] [--chunk-ms 640]

Each user is one live stream at a time: a random wav from --wav-dir sent in --chunk-ms chunks
at real-time pace (a chunk goes out once its audio would have been recorded), its own
sequence id, START on the first chunk, END on the last; then the next wav. --transport
stream (default, as `wenet-triton stream`): the wav's chunks as messages on one bidirectional
ModelStreamInfer call; unary: one ModelInfer call per chunk. Recorded in
locust's statistics:
- `chunk`: every chunk request's round trip (failed when the server returns an error);
- `final`: from sending the END chunk to the final transcript (failed when the final is
  empty or not well-formed text, or the stream failed earlier);
- `lag`: per stream, how late its most delayed chunk went out (ms; failed when it fell
  behind real time by more than one chunk).
"""
import random
import time

# grpc must cooperate with locust's gevent loop before any channel exists
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402
import gevent.queue  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust_common import add_wav_args, quit_now, wav_loader, well_formed  # noqa: E402

from wenet_triton.serving.stream_client import MODEL, TRANSPORTS, chunk_inputs, parse, split  # noqa: E402

RATE = 16000


@events.init_command_line_parser.add_listener
def _args(parser):
    add_wav_args(parser, "stream")
    parser.add_argument("--chunk-ms", type=float, default=640.0, help="audio per chunk request")
    parser.add_argument("--transport", choices=TRANSPORTS, default=TRANSPORTS[0],
                        help="stream (default): one gRPC stream per audio stream; unary: a call per chunk")


_WAVS = []


events.init.add_listener(wav_loader(_WAVS))
events.quit.add_listener(quit_now)


class StreamUser(User):
    """One simulated microphone: one stream at a time, at real-time pace, no think time."""

    def on_start(self):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(self.host or "127.0.0.1:8001")
        self.mod = grpcclient
        self.chunk = max(1, int(self.environment.parsed_options.chunk_ms * RATE / 1000))
        self.on_stream = self.environment.parsed_options.transport == "stream"

    def _chunk(self, seq, inputs, outputs, first, last):
        """One chunk's response: over the user's open gRPC stream, or a call of its own."""
        if not self.on_stream:
            return self.client.infer(MODEL, inputs, outputs=outputs, sequence_id=seq,
                                     sequence_start=first, sequence_end=last)
        self.client.async_stream_infer(MODEL, inputs, outputs=outputs, sequence_id=seq,
                                       sequence_start=first, sequence_end=last)
        result, error = self.replies.get(timeout=60)
        if error is not None:
            raise error
        return result

    def on_stop(self):
        self.client.close()

    def _fire(self, name, ms, exc=None, size=0):
        events.request.fire(request_type="grpc-stream", name=name, response_time=ms,
                            response_length=size, exception=exc, context={})

    @task
    def stream(self):
        name, wav = random.choice(_WAVS)
        seq = random.getrandbits(48) + 1
        pieces = split(wav, self.chunk)
        t_start = time.perf_counter()
        if self.on_stream:  # one gRPC stream per audio stream; its replies come in order
            self.replies = gevent.queue.Queue()
            self.client.start_stream(callback=lambda result, error, q=self.replies: q.put((result, error)))
        try:
            self._send_pieces(name, seq, pieces, t_start)
        finally:
            if self.on_stream:
                try:
                    self.client.stop_stream(cancel_requests=True)
                except Exception:  # noqa: BLE001 - the stream may have broken already
                    pass

    def _send_pieces(self, name, seq, pieces, t_start):
        done, lag, text, error = 0, 0.0, "", None
        for k, piece in enumerate(pieces):
            first, last = k == 0, k == len(pieces) - 1
            done += len(piece)
            due = t_start + done / RATE
            wait = due - time.perf_counter()
            if wait > 0:
                gevent.sleep(wait)
            lag = max(lag, time.perf_counter() - due)
            inputs, outputs = chunk_inputs(piece, self.mod)
            t0 = time.perf_counter()
            try:
                res = self._chunk(seq, inputs, outputs, first, last)
                text, final, _ = parse(res)
                ms = (time.perf_counter() - t0) * 1000
                self._fire("chunk", ms, size=len(text.encode("utf-8")))
                if last:
                    bad = None if final and well_formed(text) else ValueError(
                        f"{name}: empty or malformed final {text!r} (IS_FINAL {final})")
                    self._fire("final", ms, bad, len(text.encode("utf-8")))
            except Exception as e:  # noqa: BLE001 - every failure is a locust failure
                error = e
                self._fire("chunk", (time.perf_counter() - t0) * 1000, e)
                self._fire("final", 0.0, ValueError(f"{name}: stream failed at chunk {k + 1}: {e}"))
                if not last:  # free the server's state now, not at its idle timeout
                    try:
                        empty, outs = chunk_inputs(piece[:0], self.mod)
                        self.client.infer(MODEL, empty, outputs=outs, sequence_id=seq, sequence_end=True)
                    except Exception:  # noqa: BLE001 - it may already be gone
                        pass
                break
        chunk_s = self.chunk / RATE
        behind = None if error or lag <= chunk_s else ValueError(
            f"{name}: fell behind real time by {lag:.2f} s (> one {chunk_s:.2f} s chunk)")
        self._fire("lag", lag * 1000, behind)
