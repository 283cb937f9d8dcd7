"""`wenet-triton serve`: tritonserver under a supervisor whose health tells the truth.

Triton 2.51 keeps answering /v2/health/ready with 200 after a python backend stub died (it
never restarts stubs; every request that reaches the dead instance fails), and a crashed
tritonserver stays down. The supervisor

* starts tritonserver with its gRPC on a private loopback port behind the checking gRPC
  front on the public port: `guard_workers` processes sharing it (guard_pool.py, guard.py),
  each watched and started again when it dies; HTTP only when asked for (--http-port),
* probes it with a real tiny inference every few seconds, watches the process and its
  python backend stubs, and restarts tritonserver when it exits, a stub dies or probes
  keep failing,
* serves its own health endpoint (GET /healthz on --health-port): 200 only while the last
  real-inference probe passed, every guard worker listens and the server is not restarting
  or draining, and its own
  Prometheus metrics there (GET /metrics: health, restarts, probe latency, requests in flight),
* on SIGTERM/SIGINT stops being ready, lets in-flight requests finish (bounded by
  --drain-timeout; newcomers get UNAVAILABLE, which clients retry), then stops,
* removes the python-backend /dev/shm regions of its tritonserver on every exit path,
* fails fast, naming the port, when a port it needs is taken (and never takes another
  server on its port for its own: tritonserver's --id is checked; nor shares the public port
  with another process through SO_REUSEPORT: the pool checks who listens there).
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Optional, Tuple

import numpy as np

from wenet_triton.serving import procs
from wenet_triton.serving.client import decode_transcript, make_inputs
from wenet_triton.serving.guard import Limits
from wenet_triton.serving.guard_pool import GuardPool, resolve_workers
from wenet_triton.serving.mps import MpsDaemon, mps_mode, start_for
from wenet_triton.serving.server import ServerError, TritonServer, free_port, port_in_use

log = logging.getLogger("wenet_triton.supervisor")
MODEL = "attention_rescoring"


@dataclass
class SupervisorConfig:
    repo: str
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: Optional[int] = None
    metrics_port: int = 8002
    health_port: Optional[int] = 8003
    guard: bool = True
    guard_workers: Optional[int] = None  # front processes; None: serving.json's, else auto
    probe_interval: float = 5.0
    probe_timeout: float = 30.0
    restart_after: int = 3          # consecutive failed probes before a restart
    drain_timeout: float = 30.0
    ready_timeout: float = 300.0
    log_verbose: int = 0
    log_file: Optional[str] = None
    mps: Optional[bool] = None  # a CUDA MPS daemon of its own for tritonserver's processes
    # (mps.py): True / False, or None: the repository's `mps` setting (false, true, auto)


@dataclass
class Status:
    state: str = "starting"         # starting | serving | restarting | draining | stopped
    healthy: bool = False
    server_id: str = ""
    restarts: int = 0
    last_probe_ok: Optional[bool] = None
    last_probe_at: float = 0.0
    last_probe_ms: float = 0.0
    last_error: str = ""
    events: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["last_probe_age_s"] = round(time.time() - self.last_probe_at, 1) if self.last_probe_at else None
        d["events"] = self.events[-10:]
        return d


def _who(host: str, port: int) -> str:
    """A word on who holds a port: a Triton server (its id) or something else."""
    try:
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}")
        meta = c.get_server_metadata(client_timeout=2)
        return f" (a Triton server, id '{meta.name}', answers there)"
    except Exception:  # noqa: BLE001 - not a Triton gRPC endpoint
        return ""


def check_ports(host: str, ports: List[Tuple[str, Optional[int]]]) -> None:
    """Raise ServerError naming the first taken port (flag, number, holder)."""
    seen = {}
    for flag, port in ports:
        if not port:
            continue
        if port in seen:
            raise ServerError(f"{flag} {port} is also given as {seen[port]}: pick distinct ports")
        seen[port] = flag
        if port_in_use(host, port):
            raise ServerError(f"port {port} ({flag}) on {host} is already in use{_who(host, port)}; "
                              f"stop what holds it or pass another {flag}")


def probe_audio(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    """A fixed, harmless second of audio (two tones and a little noise) for the probes."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.01
    return (0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
            + noise).astype(np.float32)


class Supervisor:
    def __init__(self, cfg: SupervisorConfig):
        self.cfg = cfg
        self.status = Status()
        self.triton: Optional[TritonServer] = None
        self.guard: Optional[GuardPool] = None
        self.health: Optional[ThreadingHTTPServer] = None
        self.mps: Optional[MpsDaemon] = None
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._restart_reason = ""
        self._stubs: List[procs.Stub] = []
        self._probe_fails = 0
        self._lock = threading.RLock()
        self._audio = probe_audio()

    # -- public -----------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM):
        """Signal-handler safe: begin the drain (the main loop does the work)."""
        log.info("signal %d: draining", signum)  # no lock taken here (signal handler)
        self._stop.set()
        if self.status.state in ("starting", "restarting") and self.triton is not None:
            self.triton.terminate()  # abort a start in progress

    def run(self) -> int:
        """Serve until stopped; -> exit code (0 after a drain on SIGTERM/SIGINT)."""
        c = self.cfg
        check_ports(c.host, [("--grpc-port", c.grpc_port), ("--http-port", c.http_port),
                             ("--metrics-port", c.metrics_port), ("--health-port", c.health_port)])
        try:
            # before anything starts a CUDA client (a failure names what is missing)
            self.mps = start_for(mps_mode(c.mps, c.repo))
            if c.guard:
                self.guard = GuardPool(c.host, c.grpc_port, Limits.from_repo(c.repo),
                                       resolve_workers(c.guard_workers, c.repo), repo=c.repo,
                                       on_event=self._event)
                self.guard.start()
            if c.health_port:
                self._start_health()
            backoff = 1.0
            while not self._stop.is_set():
                try:
                    self._start_triton()
                except ServerError as e:
                    if self._stop.is_set():
                        break
                    self._event(f"tritonserver failed to start: {e}")
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 1.0
                self._watch()  # returns on stop or when a restart is due
                if not self._stop.is_set():
                    self.status.restarts += 1
                    self._set(state="restarting", healthy=False)
                    if self.guard:
                        self.guard.set_down("restarting")
                    self._stop_triton(grace=5.0)  # it is broken: do not wait long for it
            self._drain()
            return 0
        finally:
            self._shutdown()

    # -- tritonserver -----------------------------------------------------------------------
    def _start_triton(self):
        c = self.cfg
        self._set(state="starting" if not self.status.restarts else "restarting", healthy=False)
        internal = free_port() if c.guard else c.grpc_port
        self.triton = TritonServer(
            c.repo, c.http_port, internal, c.metrics_port, host=c.host,
            grpc_host="127.0.0.1" if c.guard else c.host, log_file=c.log_file,
            log_verbose=c.log_verbose, exit_timeout=int(c.drain_timeout) + 5,
            env=self.mps.env() if self.mps is not None else None)
        self.status.server_id = self.triton.server_id
        if self._stop.is_set():
            raise ServerError("stopping")
        self.triton.start(c.ready_timeout)
        self._stubs = procs.stubs(self.triton.proc.pid)
        self._event(f"tritonserver {self.triton.proc.pid} ready ({len(self._stubs)} python stubs)")
        ok, detail = self._probe()
        if not ok:
            raise ServerError(f"ready but the probe inference failed: {detail}")
        if self.guard:
            self.guard.set_backend(self.triton.grpc_url)
        self._probe_fails = 0
        self._set(state="serving", healthy=not self._stop.is_set())

    def _stop_triton(self, grace: Optional[float] = None):
        if self.triton is not None:
            # notes its stubs' regions, SIGINT, then SIGKILL after the grace; removes its
            # /dev/shm regions either way
            self.triton.stop(timeout=self.cfg.drain_timeout + 10 if grace is None else grace)

    def _watch(self):
        """Until stop or a restart is due: process, stubs and probes."""
        self._restart.clear()
        prober = threading.Thread(target=self._probe_loop, daemon=True, name="probe")
        prober.start()
        last_scan = 0.0
        while not self._stop.is_set() and not self._restart.is_set():
            p = self.triton.proc
            if p is None or p.poll() is not None:
                self._due(f"tritonserver exited with code {p.returncode if p else '?'}")
                break
            dead = [s for s in self._stubs if not procs.alive(s.pid)]
            if dead:
                self._due("python backend stub died: " + ", ".join(
                    f"{s.instance or s.model} (pid {s.pid})" for s in dead))
                break
            now = time.monotonic()
            if now - last_scan > 5:
                self.triton.record_regions()
                last_scan = now
            self._stop.wait(0.25)
        self._restart.set()  # ends the probe loop
        prober.join(self.cfg.probe_timeout + 5)

    def _due(self, reason: str):
        self._event(reason + ": restarting tritonserver")
        self._set(healthy=False, last_error=reason)
        self._restart.set()

    def _probe(self) -> Tuple[bool, str]:
        import tritonclient.grpc as grpcclient


        t0 = time.perf_counter()
        try:
            client = grpcclient.InferenceServerClient(self.triton.grpc_url)
            inputs, outputs = make_inputs(self._audio, grpcclient)
            res = client.infer(MODEL, inputs, outputs=outputs, request_id="wenet-triton-probe",
                               client_timeout=self.cfg.probe_timeout)
            decode_transcript(res)
            ok, detail = True, ""
        except Exception as e:  # noqa: BLE001 - any failure is a failed probe
            ok, detail = False, str(e)[:300]
        self._set(last_probe_ok=ok, last_probe_at=time.time(),
                  last_probe_ms=round((time.perf_counter() - t0) * 1e3, 1))
        return ok, detail

    def _probe_loop(self):
        while not self._restart.wait(self.cfg.probe_interval):
            if self._stop.is_set():
                return
            ok, detail = self._probe()
            if ok:
                self._probe_fails = 0
                self._set(healthy=not self._stop.is_set() and self.status.state == "serving")
                continue
            self._probe_fails += 1
            self._set(healthy=False, last_error=f"probe failed: {detail}")
            log.warning("probe %d/%d failed: %s", self._probe_fails, self.cfg.restart_after, detail)
            if self._probe_fails >= self.cfg.restart_after:
                self._due(f"{self._probe_fails} probes failed in a row")
                return

    # -- drain and shutdown -----------------------------------------------------------------
    def _drain(self):
        self._set(state="draining", healthy=False)
        if self.guard is not None:
            left = self.guard.drain(self.cfg.drain_timeout)
            self._event(f"drained: {left} requests still in flight after the wait")
        self._stop_triton()  # without the guard Triton itself waits (--exit-timeout-secs)

    def _shutdown(self):
        self._set(state="stopped", healthy=False)
        try:
            self._stop_triton()
        finally:
            if self.guard is not None:
                self.guard.stop()
            if self.health is not None:
                self.health.shutdown()
                self.health.server_close()
            if self.mps is not None:  # after tritonserver: its clients are gone
                self.mps.stop()
                self.mps = None

    # -- health endpoint --------------------------------------------------------------------
    def _start_health(self):
        sup = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, code, ctype = sup.metrics_text().encode(), 200, "text/plain; version=0.0.4"
                elif path in ("/healthz", "/health", "/readyz"):
                    body, healthy = sup.health_report()
                    code = 200 if healthy else 503
                    ctype = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: container probes call every few seconds
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.health = ThreadingHTTPServer((self.cfg.host, self.cfg.health_port), Handler)
        self.health.daemon_threads = True
        threading.Thread(target=self.health.serve_forever, daemon=True, name="health").start()

    def health_report(self) -> Tuple[bytes, bool]:
        """(JSON body, healthy): the last probe passed, every guard worker listens (alone on
        the port) and no stop was asked for (SIGTERM: not ready from that moment on)."""
        g = self.guard
        guard = g.state() if isinstance(g, GuardPool) else None
        with self._lock:
            d = self.status.as_dict()
            healthy = self.status.healthy and not self._stop.is_set() and (guard is None or g.healthy())
        d["healthy"] = healthy
        if guard is not None:
            d["guard"] = guard
        return json.dumps(d).encode(), healthy

    def metrics_text(self) -> str:
        """Prometheus text for GET /metrics on the health port: the supervisor's and the
        guard's own figures (Triton's per-model metrics stay on --metrics-port)."""
        healthy = self.health_report()[1]
        with self._lock:
            st = self.status
            rows = [("wenet_triton_healthy", "gauge", "1 while the last real-inference probe passed "
                     "and every guard worker listens", int(healthy)),
                    ("wenet_triton_restarts_total", "counter", "tritonserver restarts by the supervisor",
                     st.restarts),
                    ("wenet_triton_probe_latency_ms", "gauge", "latency of the last probe inference",
                     st.last_probe_ms),
                    ("wenet_triton_draining", "gauge", "1 while draining before a stop",
                     int(st.state == "draining"))]
        g = self.guard
        if g is not None:
            rows += [("wenet_triton_inflight_requests", "gauge", "requests in flight through the gRPC guard",
                      g.inflight),
                     ("wenet_triton_guard_served_total", "counter", "requests the guard forwarded", g.served),
                     ("wenet_triton_guard_rejected_total", "counter",
                      "requests the guard refused (bad, restarting, draining)", g.rejected)]
        if isinstance(g, GuardPool):
            rows += [("wenet_triton_guard_workers", "gauge", "guard worker processes listening "
                      "on the public port", g.listening),
                     ("wenet_triton_guard_worker_restarts_total", "counter",
                      "guard worker processes started again after they died", g.restarts)]
        out = []
        for name, kind, doc, value in rows:
            out += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(out) + "\n"

    # -- helpers ----------------------------------------------------------------------------
    def _set(self, **kw):
        with self._lock:
            for k, v in kw.items():
                setattr(self.status, k, v)

    def _event(self, msg: str):
        log.info("%s", msg)
        with self._lock:
            self.status.events.append(f"{time.strftime('%H:%M:%S')} {msg}")
            del self.status.events[:-50]
