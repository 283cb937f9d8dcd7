"""gRPC client of the `attention_rescoring` ensemble (tritonclient), used by client/,
the tests and the load tests."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

MODEL = "attention_rescoring"


@dataclass
class Reply:
    name: str
    text: Optional[str]
    error: Optional[str]
    seconds: float  # request latency
    audio_seconds: float


def make_inputs(wav: np.ndarray, module):
    """WAV FP32 [1, N] and WAV_LENS INT32 [1, 1] for tritonclient.grpc(.aio)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
    a = module.InferInput("WAV", list(wav.shape), "FP32")
    a.set_data_from_numpy(wav)
    b = module.InferInput("WAV_LENS", [1, 1], "INT32")
    b.set_data_from_numpy(np.array([[wav.shape[1]]], dtype=np.int32))
    return [a, b], [module.InferRequestedOutput("TRANSCRIPTS")]


def decode_transcript(result) -> str:
    out = result.as_numpy("TRANSCRIPTS").reshape(-1)[0]
    return out.decode("utf-8") if isinstance(out, bytes) else str(out)


def transcribe_one(url: str, wav: np.ndarray, timeout: float = 60.0) -> str:
    """Blocking single request (raises tritonclient's InferenceServerException on error)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    inputs, outputs = make_inputs(wav, grpcclient)
    return decode_transcript(client.infer(MODEL, inputs, outputs=outputs, client_timeout=timeout))


async def _run(url: str, items: Sequence[Tuple[str, np.ndarray]], concurrency: int,
               sample_rate: int, on_reply: Optional[Callable[[Reply], None]], timeout: float):
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    client = aioclient.InferenceServerClient(url)
    queue: asyncio.Queue = asyncio.Queue()
    for i, it in enumerate(items):
        queue.put_nowait((i, it))
    replies: List[Optional[Reply]] = [None] * len(items)

    async def worker():
        while not queue.empty():
            i, (name, wav) = queue.get_nowait()
            inputs, outputs = make_inputs(wav, aioclient)
            t0 = time.perf_counter()
            try:
                res = await client.infer(MODEL, inputs, outputs=outputs, client_timeout=timeout)
                r = Reply(name, decode_transcript(res), None, 0.0, len(wav) / sample_rate)
            except InferenceServerException as e:
                r = Reply(name, None, e.message(), 0.0, len(wav) / sample_rate)
            r.seconds = time.perf_counter() - t0
            replies[i] = r
            if on_reply:
                on_reply(r)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        await client.close()
    return replies


def transcribe_many(url: str, items: Sequence[Tuple[str, np.ndarray]], concurrency: int = 8,
                    sample_rate: int = 16000, on_reply: Optional[Callable[[Reply], None]] = None,
                    timeout: float = 120.0) -> List[Reply]:
    """Send (name, wav) items with `concurrency` requests in flight; replies in input order."""
    return asyncio.run(_run(url, items, concurrency, sample_rate, on_reply, timeout))


def wait_until_ready(url: str, timeout: float = 120.0) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if client.is_server_ready() and client.is_model_ready(MODEL):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Triton at {url} not ready with model {MODEL} after {timeout:.0f} s")
