"""Locust load test of the `attention_rescoring` ensemble over gRPC (tritonclient).

    locust -f loadtest/locustfile.py --headless -u 16 -r 4 -t 60s --host 127.0.0.1:8001 \
        --csv out/locust [--wav-dir WAV_DIR]

--host may name several endpoints (A:8001,B:8001: each user goes round robin over them, a
retry goes to the next) or dns:///NAME:PORT (client-side round robin). UNAVAILABLE (refused,
reset, restarting/draining server) is retried with backoff within --request-timeout; the
count of retried requests is printed at the end. Each user sends random wavs from --wav-dir,
records every request in locust's statistics (name = utterance length bucket) and fails a
request whose transcript is empty or not well-formed text. Runs stop by themselves after -t.
"""
import random
import time

# grpc must cooperate with locust's gevent loop before any channel exists
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import User, events, task  # noqa: E402
from locust_common import add_wav_args, quit_now, wav_loader, well_formed  # noqa: E402

from wenet_triton.serving.client import MODEL, RetryingClient, RetryPolicy  # noqa: E402


@events.init_command_line_parser.add_listener
def _args(parser):
    add_wav_args(parser, "send")
    parser.add_argument("--retries", type=int, default=50, help="retries of an UNAVAILABLE request")
    parser.add_argument("--request-timeout", type=float, default=120, help="deadline per request (s)")


_WAVS = []
RETRIED = [0]


events.init.add_listener(wav_loader(_WAVS))
events.quit.add_listener(quit_now)


class TritonASRUser(User):
    """One simulated client: one request in flight at a time, no think time."""

    def on_start(self):
        opts = self.environment.parsed_options
        self.client = RetryingClient(self.host or "127.0.0.1:8001", RetryPolicy(retries=opts.retries))
        self.timeout = opts.request_timeout

    def on_stop(self):
        self.client.close()

    @task
    def transcribe(self):
        name, wav = random.choice(_WAVS)
        secs = len(wav) / 16000
        bucket = f"{MODEL} {int(secs // 5) * 5}-{int(secs // 5) * 5 + 5}s"
        t0 = time.perf_counter()
        exc, size = None, 0
        try:
            text, attempts, _ = self.client.infer(wav, self.timeout)
            RETRIED[0] += attempts > 1
            size = len(text.encode("utf-8"))
            if not well_formed(text):
                exc = ValueError(f"{name}: empty or malformed transcript {text!r}")
        except Exception as e:  # noqa: BLE001 - every failure is a locust failure
            exc = e
        events.request.fire(request_type="grpc", name=bucket, response_time=(time.perf_counter() - t0) * 1000,
                            response_length=size, exception=exc, context={})
