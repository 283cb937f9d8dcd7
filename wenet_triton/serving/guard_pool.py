"""Several checking gRPC front processes on one public port (`serve --guard-workers N`).

One Python process forwarding ~320 KB per 5 s request held an H200 to ~1,050 infer/s where
Triton's own endpoint served 1,373-1,578 (issue #17): the front is bound by its process (the
GIL, gRPC's per-call work), not by threads or asyncio. The pool runs N guard workers
(`python -m wenet_triton.serving.guard`, guard.main), each a GrpcGuard binding the public port
with SO_REUSEPORT, so the kernel spreads incoming *connections* over them (one HTTP/2
connection stays on one worker: a client that opens a single connection uses one worker).

The pool (in the supervisor process)
* starts them and waits until each listens; a worker that cannot bind fails `start` naming the
  port,
* checks that every socket listening on the port belongs to one of its workers
  (/proc/net/tcp*, the workers' fds): with SO_REUSEPORT a second server of the same user could
  otherwise share the port silently and take a share of the connections. Found at start it is
  an error; found later it turns health false, naming the process,
* watches them: one that exits, or whose event loop stops beating for `stall_timeout` s
  (then its threads' Python stacks go to the log and it is killed), is started again (health
  false until it listens again), with backoff when it keeps dying; when the watcher itself
  ran late (this process stalled), the beats are read again before any worker is judged,
* passes the supervisor's calls on to all of them (set_backend, set_down, drain, stop) and
  adds up their figures (requests in flight, served, refused) for /metrics.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

from wenet_triton.serving import procs
from wenet_triton.serving.guard import Limits
from wenet_triton.serving.repo_json import repo_config
from wenet_triton.serving.server import ServerError, package_parent

log = logging.getLogger("wenet_triton.guard_pool")
MAX_AUTO_WORKERS = 4


def usable_cpus() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota
    (a container's CPU limit) when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_workers(cpus: Optional[int] = None) -> int:
    """min(4, cores // 4), at least 1 (docs/reliability.md, "Cost of the front", says why)."""
    return max(1, min(MAX_AUTO_WORKERS, (cpus or usable_cpus()) // 4))


def resolve_workers(cli: Optional[int], repo: Optional[str]) -> int:
    """`--guard-workers` if given, else the repository's `guard_workers` (serving.yaml, kept in
    serving.json), else default_workers(). 'auto' (or unset) means the default."""
    value = cli if cli is not None else repo_config(repo).get("guard_workers")
    if value is None or value == "auto":
        return default_workers()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ServerError(f"guard_workers must be a number or 'auto', not {value!r}") from None
    if n < 1:
        raise ServerError(f"guard_workers must be at least 1 (got {n}); --no-guard serves without the front")
    return n


@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    started: float
    ready: threading.Event = field(default_factory=threading.Event)
    drained_evt: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    error: str = ""
    stats: Dict[str, int] = field(default_factory=lambda: {"inflight": 0, "served": 0, "rejected": 0})
    last_beat: float = 0.0
    drained: Optional[int] = None
    reader: Optional[threading.Thread] = None
    retired: bool = False  # its figures were moved to the pool's totals

    @property
    def listening(self) -> bool:
        return self.ready.is_set() and self.port > 0 and self.proc.poll() is None


@dataclass
class PoolState:
    workers: int              # configured
    listening: int            # now
    restarts: int             # worker processes started again after they died
    foreign_listener: str     # who else listens on the port ('' : nobody)
    per_worker: List[dict]    # slot, pid, listening, served, inflight (as of its last beat)


class GuardPool:
    """N guard worker processes on (host, port); the control surface of one GrpcGuard."""

    def __init__(self, host: str, port: int, limits: Limits, workers: int, repo: Optional[str] = None,
                 on_event: Optional[Callable[[str], None]] = None, flag: str = "--grpc-port",
                 stall_timeout: float = 20.0, start_timeout: float = 60.0,
                 profile_dir: Optional[str] = None):
        if workers < 1:
            raise ValueError("a guard pool needs at least one worker")
        self.host, self.port, self.limits, self.n = host, port, limits, workers
        self.repo = os.path.abspath(repo) if repo else None
        self.flag = flag
        self.stall_timeout, self.start_timeout = stall_timeout, start_timeout
        self.profile_dir = os.path.abspath(profile_dir) if profile_dir else None
        self._on_event = on_event
        self._lock = threading.RLock()
        self._workers: List[Optional[_Worker]] = [None] * workers
        self._backend: Optional[str] = None
        self._down: Optional[str] = "starting"
        self._draining = self._stopping = False
        self._next_spawn = [0.0] * workers
        self._backoff = [0.5] * workers
        self._totals = {"served": 0, "rejected": 0}  # of workers that are gone
        self.restarts = 0
        self.foreign = ""
        self._monitor: Optional[threading.Thread] = None
        self._quit = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self):
        """Start every worker and wait until each listens; ServerError (naming the port) when
        one cannot bind or another process shares the port."""
        try:
            first = self._spawn(0)
            if self.port == 0:  # an ephemeral port: the others take the one the first got
                self._wait_ready(first)
            for k in range(1, self.n):
                self._spawn(k)
            for w in self._workers:
                self._wait_ready(w)
            other = self._foreign_listeners()
            if other:
                raise ServerError(f"port {self.port} ({self.flag}) on {self.host} is shared with "
                                  f"{other} (SO_REUSEPORT): it would get a share of the connections; "
                                  f"stop it or pass another {self.flag}")
        except BaseException:
            self.stop(grace=0.5)
            raise
        self._event(f"{self.n} guard worker(s) on {self.host}:{self.port} (pids "
                    f"{', '.join(str(p) for p in self.pids())})")
        self._monitor = threading.Thread(target=self._watch, name="guard-pool", daemon=True)
        self._monitor.start()

    def stop(self, grace: float = 1.0):
        """Stop every worker (they let requests in flight finish for `grace` s)."""
        with self._lock:
            self._stopping = True
            workers = [w for w in self._workers if w is not None]
        self._quit.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(5)
        for w in workers:
            self._send(w, {"op": "stop", "grace": grace})
        deadline = time.monotonic() + grace + 5
        for w in workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(5)
            if w.reader is not None:
                w.reader.join(5)
            for f in (w.proc.stdin, w.proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            self._retire(w)

    # -- the supervisor's calls -----------------------------------------------------------------
    def set_backend(self, url: str):
        with self._lock:
            self._backend, self._down = url, None
            workers = list(self._workers)
        for w in workers:
            if w is not None:
                self._send(w, {"op": "backend", "url": url})

    def set_down(self, reason: str):
        with self._lock:
            self._down = reason
            workers = list(self._workers)
        for w in workers:
            if w is not None:
                self._send(w, {"op": "down", "reason": reason})

    def drain(self, timeout: float) -> int:
        """Every worker refuses newcomers (UNAVAILABLE) and waits up to `timeout` s for its
        requests in flight; -> how many were still in flight at the end. No worker is started
        again from now on."""
        with self._lock:
            self._draining = True
            # one still starting too: it reads the drain once it listens
            workers = [w for w in self._workers if w is not None and w.proc.poll() is None]
        for w in workers:
            w.drained = None
            w.drained_evt.clear()
            self._send(w, {"op": "drain", "timeout": timeout})
        deadline = time.monotonic() + timeout + 2
        left = 0
        for w in workers:
            w.drained_evt.wait(max(0.0, deadline - time.monotonic()))
            left += w.drained if w.drained is not None else (w.stats["inflight"] if w.proc.poll() is None else 0)
        return left

    # -- figures --------------------------------------------------------------------------------
    def _sum(self, key: str) -> int:
        with self._lock:
            live = sum(w.stats[key] for w in self._workers if w is not None and not w.retired)
            return live + self._totals.get(key, 0)

    @property
    def inflight(self) -> int:
        with self._lock:
            return sum(w.stats["inflight"] for w in self._workers if w is not None and w.listening)

    @property
    def served(self) -> int:
        return self._sum("served")

    @property
    def rejected(self) -> int:
        return self._sum("rejected")

    @property
    def listening(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers if w is not None and w.listening)

    def pids(self) -> List[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers if w is not None and w.proc.poll() is None]

    def healthy(self) -> bool:
        """Every worker listens and nobody else does on the port."""
        return self.listening == self.n and not self.foreign

    def state(self) -> dict:
        with self._lock:
            per = [{"slot": w.slot, "pid": w.proc.pid, "listening": w.listening,
                    "served": w.stats["served"], "inflight": w.stats["inflight"]}
                   for w in self._workers if w is not None]
        return asdict(PoolState(self.n, sum(p["listening"] for p in per), self.restarts, self.foreign, per))

    # -- workers ----------------------------------------------------------------------------------
    def _command(self, slot: int) -> List[str]:
        cmd = [sys.executable, "-m", "wenet_triton.serving.guard", "--host", self.host,
               "--port", str(self.port), "--worker", str(slot)]
        cmd += ["--repo", self.repo] if self.repo else ["--limits", json.dumps(asdict(self.limits))]
        with self._lock:
            if self._backend and not self._down:
                cmd += ["--backend", self._backend]
            else:
                cmd += ["--down", self._down or "starting"]
        if self.profile_dir:
            cmd += ["--profile", os.path.join(self.profile_dir, f"guard_worker{slot}_{int(time.time())}.prof")]
        return cmd

    def _spawn(self, slot: int) -> _Worker:
        # cwd: the directory holding this wenet_triton, so that `-m` imports this checkout's
        proc = subprocess.Popen(self._command(slot), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, bufsize=1, cwd=package_parent())
        w = _Worker(slot, proc, time.monotonic(), last_beat=time.monotonic())
        w.reader = threading.Thread(target=self._read, args=(w,), name=f"guard-worker{slot}", daemon=True)
        w.reader.start()
        with self._lock:
            self._workers[slot] = w
        return w

    def _wait_ready(self, w: _Worker):
        if not w.ready.wait(self.start_timeout) or not w.listening:
            err = w.error or (f"exited with code {w.proc.poll()}" if w.proc.poll() is not None
                              else f"not listening after {self.start_timeout:.0f} s")
            raise ServerError(f"guard worker {w.slot} could not serve {self.host}:{self.port} "
                              f"({self.flag}): {err}")
        if self.port == 0:
            self.port = w.port

    def _read(self, w: _Worker):
        """The worker's messages (its stdout), until it exits."""
        try:
            for line in w.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "stats" in msg:
                    with self._lock:
                        w.stats = msg["stats"]
                    w.last_beat = time.monotonic()
                elif "ready" in msg:
                    w.port = int(msg["ready"])
                    w.last_beat = time.monotonic()
                    self._catch_up(w)
                    w.ready.set()
                elif "drained" in msg:
                    w.drained = int(msg["drained"])
                    w.drained_evt.set()
                elif "error" in msg:
                    w.error = str(msg["error"])
        except (OSError, ValueError):
            pass
        finally:
            w.ready.set()
            w.drained_evt.set()

    def _catch_up(self, w: _Worker):
        """What changed while the worker started (its command line had the state of then)."""
        with self._lock:
            backend, down = self._backend, self._down
        if backend and not down:
            self._send(w, {"op": "backend", "url": backend})
        else:
            self._send(w, {"op": "down", "reason": down or "starting"})

    def _send(self, w: _Worker, msg: dict):
        try:
            w.proc.stdin.write(json.dumps(msg) + "\n")
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it is gone: the monitor sees to it

    def _retire(self, w: _Worker):
        with self._lock:
            if not w.retired:
                w.retired = True
                for k in self._totals:
                    self._totals[k] += int(w.stats.get(k, 0))

    def _watch(self):
        last_scan = 0.0
        last_pass = judge_from = time.monotonic()
        while not self._quit.wait(0.25):
            now = time.monotonic()
            late, last_pass = now - last_pass, now
            with self._lock:
                if self._stopping or self._draining:
                    continue
            if late > max(1.0, self.stall_timeout / 4):
                # this process did not run for a while (host overload, a long pause): the
                # workers' beats may wait unread in their pipes; read them before judging
                judge_from = now + 2.0
                self._event(f"guard pool: its watcher ran {late:.1f} s late (this process stalled); "
                            "judging the workers' heartbeats again in 2 s")
            for slot in range(self.n):
                w = self._workers[slot]
                code = w.proc.poll()
                if code is not None:
                    if not w.retired:
                        self._retire(w)
                        lived = now - w.started
                        self._backoff[slot] = 0.5 if lived > 10 else min(self._backoff[slot] * 2, 10.0)
                        self._next_spawn[slot] = now + (0 if lived > 10 else self._backoff[slot])
                        self._event(f"guard worker {slot} (pid {w.proc.pid}) exited with code {code}"
                                    + (f" ({w.error})" if w.error else "") + ": starting it again")
                    if now >= self._next_spawn[slot]:
                        with self._lock:
                            if self._stopping or self._draining:
                                break
                            self.restarts += 1
                        nw = self._spawn(slot)
                        self._event(f"guard worker {slot} started again (pid {nw.proc.pid})")
                elif w.listening and now >= judge_from and now - w.last_beat > self.stall_timeout:
                    self._event(f"guard worker {slot} (pid {w.proc.pid}) did not beat for "
                                f"{now - w.last_beat:.0f} s: its threads' stacks go to the log, "
                                "then it is killed")
                    try:  # faulthandler in the worker (guard.main)
                        w.proc.send_signal(signal.SIGUSR1)
                        time.sleep(0.5)
                    except OSError:
                        pass
                    w.proc.kill()
                elif not w.ready.is_set() and now - w.started > self.start_timeout:
                    self._event(f"guard worker {slot} (pid {w.proc.pid}) not listening after "
                                f"{self.start_timeout:.0f} s: killing it")
                    w.proc.kill()
            if now - last_scan > 2 and self.listening == self.n:
                last_scan = now
                other = self._foreign_listeners()
                if other != self.foreign:
                    self.foreign = other
                    if other:
                        self._event(f"port {self.port} ({self.flag}) is shared with {other} "
                                    f"(SO_REUSEPORT): health stays false while it listens there")

    def _foreign_listeners(self) -> str:
        """'' when every socket listening on the port is one of the workers'; else who else
        listens (pid and command, when this user may see it). Checked twice before it counts:
        a worker that just exited or started is not someone else."""
        for _ in range(2):
            listeners = procs.listening_sockets(self.port, self.host)
            if not listeners:
                return ""
            ours = set()
            for pid in self.pids():
                ours |= procs.socket_inodes(pid)
            others = [inode for inode in listeners if inode not in ours]
            if not others:
                return ""
            time.sleep(0.1)
        owner = procs.socket_owner(others[0])
        if owner is None:
            return "a socket of another process (not visible to this user)"
        return f"another process (pid {owner}: {procs.command_line(owner)[:80]})"

    def _event(self, msg: str):
        if self._on_event is not None:
            self._on_event(msg)
        else:
            log.info("%s", msg)
