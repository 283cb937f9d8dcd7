#!/usr/bin/env python3
"""What the checking gRPC front (wenet_triton/serving/guard.py) costs per request, without a
model: a stand-in backend answers every ModelInfer at once with a fixed transcript, so the
front and the load generator are all that runs. Per front setting it reports infer/s, latency
and the front's CPU time per request (from /proc: comparable across machines of different
speed, unlike infer/s on a shared 2-core box).

    python -m benchmarks.guard_front --fronts direct,inproc,1,2 --audio-seconds 5 \
        --duration 10 --clients 2 --channels 4 --concurrency 8 --out benchmarks/results/guard_front.csv

fronts: `direct` (clients talk to the backend: the ceiling), `inproc` (one GrpcGuard in a
process of its own, as `serve` ran the front before guard workers existed), N (the guard
workers of `serve --guard-workers N`). --profile DIR writes a cProfile of one front process.
--transport stream: each in-flight request slot keeps one bidirectional ModelStreamInfer
stream open and sends its requests as messages on it (what a streaming client could do
instead of one unary call per chunk); unary (default): one ModelInfer call per request.
Every client process opens `--channels` connections of its own (a local subchannel pool), so
that SO_REUSEPORT has connections to spread; `--concurrency` requests are in flight per client.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SERVICE = "/inference.GRPCInferenceService/"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def infer_request(samples: int) -> bytes:
    from tritonclient.grpc import service_pb2

    rng = np.random.default_rng(0)
    wav = (rng.standard_normal((1, samples)) * 0.1).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="attention_rescoring", id="bench")
    for name, dtype, arr in (("WAV", "FP32", wav), ("WAV_LENS", "INT32", np.array([[samples]], np.int32))):
        t = req.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(arr.tobytes())
    req.outputs.add().name = "TRANSCRIPTS"
    return req.SerializeToString()


# -- the stand-in backend -------------------------------------------------------------------
def backend_main(port: int, unix: str = ""):
    import grpc
    from tritonclient.grpc import service_pb2

    text = "一二三四五".encode()
    resp = service_pb2.ModelInferResponse(model_name="attention_rescoring", id="bench")
    o = resp.outputs.add()
    o.name, o.datatype = "TRANSCRIPTS", "BYTES"
    o.shape.extend([1, 1])
    resp.raw_output_contents.append(len(text).to_bytes(4, "little") + text)
    stream_reply = service_pb2.ModelStreamInferResponse(infer_response=resp).SerializeToString()
    replies = {"ModelInfer": resp.SerializeToString(),
               "ServerReady": service_pb2.ServerReadyResponse(ready=True).SerializeToString(),
               "ServerLive": service_pb2.ServerLiveResponse(live=True).SerializeToString(),
               "ModelReady": service_pb2.ModelReadyResponse(ready=True).SerializeToString()}

    async def stream_call(requests, _ctx):
        async for _raw in requests:
            yield stream_reply

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            if details.method == SERVICE + "ModelStreamInfer":
                return grpc.stream_stream_rpc_method_handler(stream_call)
            reply = replies.get(details.method[len(SERVICE):], b"")

            async def call(_raw, _ctx):
                return reply
            return grpc.unary_unary_rpc_method_handler(call)

    async def serve():
        server = grpc.aio.server(handlers=[Handler()], options=[("grpc.max_receive_message_length", -1)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        if unix:  # the same backend on a Unix socket too (--legs unix)
            server.add_insecure_port(unix)
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


# -- one GrpcGuard in its own process (the front before guard workers) -----------------------
def inproc_main(port: int, backend: str, profile: str):
    import signal

    from wenet_triton.serving.guard import GrpcGuard, Limits

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any thread: sigwait below
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
    g = GrpcGuard("127.0.0.1", port, Limits(max_batch=16, max_samples=60 * 16000))
    g.start()
    g.set_backend(backend)
    if prof:
        g._run(_enable(prof))  # the event loop's thread is the one to profile
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
    if prof:
        g._run(_disable(prof))
        prof.dump_stats(profile)
    g.stop(0.1)


async def _enable(prof):
    prof.enable()


async def _disable(prof):
    prof.disable()


# -- load -------------------------------------------------------------------------------------
def load_main(url: str, samples: int, channels: int, concurrency: int, duration: float,
              transport: str = "unary"):
    import grpc

    raw = infer_request(samples)

    async def run():
        chans = [grpc.aio.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1),
                                                         ("grpc.max_send_message_length", -1)])
                 for _ in range(channels)]
        calls = [c.unary_unary(SERVICE + "ModelInfer") for c in chans]
        for c in calls:  # connect each before the clock starts
            await c(raw, timeout=30)
        lat, errors = [], {}
        streams = []
        if transport == "stream":  # one open stream per request slot, warmed by one message
            for k in range(concurrency):
                st = chans[k % len(chans)].stream_stream(SERVICE + "ModelStreamInfer")()
                await st.write(raw)
                await st.read()
                streams.append(st)
        t_end = time.perf_counter() + duration

        async def worker(k):
            call = calls[k % len(calls)]
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                try:
                    if streams:
                        await streams[k].write(raw)
                        reply = await streams[k].read()
                        if reply is grpc.aio.EOF:
                            raise RuntimeError("the stream ended")
                    else:
                        await call(raw, timeout=30)
                    lat.append(time.perf_counter() - t0)
                except grpc.RpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
        for st in streams:
            await st.done_writing()
        for c in chans:
            await c.close()
        return {"ok": len(lat), "errors": errors, "wall": wall, "lat": lat}

    print(json.dumps(asyncio.run(run())), flush=True)


# -- driver -----------------------------------------------------------------------------------
def _spawn(args, pythonpath=None, **kw):
    env = _env()
    if pythonpath:  # another checkout's wenet_triton for the front (before/after comparisons)
        env["PYTHONPATH"] = os.path.abspath(pythonpath) + os.pathsep + env["PYTHONPATH"]
    p = subprocess.Popen([sys.executable, "-m", "benchmarks.guard_front", *args], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, **kw)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return p


def _stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def measure(front: str, a, backend_url: str, backend_pid: int) -> dict:
    from wenet_triton.serving.server import free_port

    port = free_port()
    url = f"127.0.0.1:{port}"
    pool = proc = None
    pids = []
    if front == "direct":
        url = backend_url
    elif front == "inproc":
        proc = _spawn(["inproc", "--port", str(port), "--backend", backend_url,
                       "--profile-out", os.path.join(a.profile, "inproc.prof") if a.profile else ""],
                      pythonpath=a.front_pythonpath)
        pids = [proc.pid]
    else:
        from wenet_triton.serving.guard import Limits
        from wenet_triton.serving.guard_pool import GuardPool

        pool = GuardPool("127.0.0.1", port, Limits(max_batch=16, max_samples=60 * 16000), int(front),
                         profile_dir=a.profile or None, flag="--grpc-port")
        pool.start()
        pool.set_backend(backend_url)
        pids = pool.pids()
    try:
        # warm-up, then the measured run
        loads = [_load(url, a, 1.0) for _ in range(a.clients)]
        [p.communicate(timeout=a.duration + 60) for p in loads]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids + [backend_pid]}
        t0 = time.perf_counter()
        loads = [_load(url, a, a.duration) for _ in range(a.clients)]
        outs = [json.loads(p.communicate(timeout=a.duration + 60)[0]) for p in loads]
        wall = time.perf_counter() - t0
        cpu = {pid: cpu_seconds(pid) - c for pid, c in cpu0.items()}
    finally:
        if pool is not None:
            pool.stop()
        if proc is not None:
            _stop(proc)
    ok = sum(o["ok"] for o in outs)
    lat = np.array(sum((o["lat"] for o in outs), [])) * 1e3
    errors = {}
    for o in outs:
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    front_cpu = sum(cpu[p] for p in pids)
    return {"front": front, "label": a.label, "audio_seconds": a.audio_seconds, "clients": a.clients,
            "channels": a.channels,
            "transport": a.transport,
            "concurrency": a.clients * a.concurrency, "requests": ok, "errors": json.dumps(errors),
            "infer_per_s": round(ok / max(o["wall"] for o in outs), 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if ok else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if ok else None,
            "front_cpu_us_per_req": round(front_cpu / ok * 1e6) if ok and pids else None,
            "backend_cpu_us_per_req": round(cpu[backend_pid] / ok * 1e6) if ok else None,
            "wall_s": round(wall, 1)}


def _load(url, a, duration):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.guard_front", "load", "--url", url,
                             "--samples", str(int(a.audio_seconds * 16000)), "--channels", str(a.channels),
                             "--concurrency", str(a.concurrency), "--duration", str(duration),
                             "--transport", a.transport],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", default="bench", choices=["bench", "backend", "inproc", "load"])
    p.add_argument("--fronts", default="direct,inproc,1,2")
    p.add_argument("--audio-seconds", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=2, help="load processes")
    p.add_argument("--channels", type=int, default=4, help="connections per load process")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight per load process")
    p.add_argument("--legs", default="tcp",
                   help="the front-to-backend connection(s) to compare: tcp (loopback, as `serve` connects "
                        "its guard workers to tritonserver), unix (a Unix socket, which Triton 2.51 "
                        "also listens on: --grpc-address=unix:PATH), or tcp,unix")
    p.add_argument("--transport", choices=["unary", "stream"], default="unary",
                   help="one ModelInfer call per request, or messages on open ModelStreamInfer streams")
    p.add_argument("--repeat", type=int, default=1, help="rounds over the fronts (medians printed)")
    p.add_argument("--out", help="CSV (appended)")
    p.add_argument("--profile", help="directory for cProfile dumps of the front process(es)")
    p.add_argument("--front-pythonpath", help="inproc: run the front from this checkout's wenet_triton "
                   "(e.g. an older commit: git archive COMMIT wenet_triton | tar -x -C DIR)")
    p.add_argument("--label", default="", help="a note for the CSV (e.g. the front's commit)")
    # roles
    p.add_argument("--port", type=int)
    p.add_argument("--backend")
    p.add_argument("--url")
    p.add_argument("--samples", type=int)
    p.add_argument("--profile-out", default="")
    p.add_argument("--unix", default="")
    a = p.parse_args(argv)
    if a.role == "backend":
        return backend_main(a.port, a.unix)
    if a.role == "inproc":
        return inproc_main(a.port, a.backend, a.profile_out)
    if a.role == "load":
        return load_main(a.url, a.samples, a.channels, a.concurrency, a.duration, a.transport)
    from wenet_triton.serving.server import free_port

    if a.profile:
        os.makedirs(a.profile, exist_ok=True)
    bport = free_port()
    sockdir = tempfile.mkdtemp(prefix="guard_front_")
    unix = f"unix:{sockdir}/backend.sock"
    backend = _spawn(["backend", "--port", str(bport), "--unix", unix])
    urls = {"tcp": f"127.0.0.1:{bport}", "unix": unix}
    legs = [x.strip() for x in a.legs.split(",")]
    rows = []
    try:
        for rep in range(a.repeat):  # the fronts in turn, so that a noisy spell hits all alike
            for front in a.fronts.split(","):
                for leg in legs if front.strip() != "direct" else legs[:1]:
                    row = dict(measure(front.strip(), a, urls[leg], backend.pid), leg=leg, repeat=rep)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        _stop(backend)
        shutil.rmtree(sockdir, ignore_errors=True)
    for front, leg in [(f.strip(), g) for f in a.fronts.split(",") for g in legs]:
        mine = [r for r in rows if r["front"] == front and r["leg"] == leg]
        if not mine:
            continue
        med = {k: float(np.median([r[k] for r in mine if r[k] is not None] or [np.nan]))
               for k in ("infer_per_s", "p99_ms", "front_cpu_us_per_req", "backend_cpu_us_per_req")}
        print(f"{front:>8} {leg:>4} {a.transport} {a.label}: median of {len(mine)}: "
              f"{med['infer_per_s']:.0f} infer/s, p99 {med['p99_ms']:.1f} ms, "
              f"front {med['front_cpu_us_per_req']:.0f} us CPU/request, "
              f"backend {med['backend_cpu_us_per_req']:.0f}", flush=True)
    if a.out:
        new = not os.path.exists(a.out)
        with open(a.out, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
