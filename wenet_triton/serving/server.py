"""Start and stop a real tritonserver for a rendered repository.

Binary lookup order: $TRITONSERVER, `tritonserver` on PATH (NVIDIA's image has it in
/opt/tritonserver/bin), then the one inside the `nvidia-pytriton` wheel. For the wheel's
server we assemble a backend directory with the python backend and the stub for this
Python, and run it with this interpreter's bin/ first on PATH (the stub takes its prefix
and site-packages from there) and the wheel's bundled libraries on LD_LIBRARY_PATH.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

from wenet_triton.paths import PACKAGE_DIR, cache_root
from wenet_triton.serving import procs, pyshm

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    pass


# Endpoints no client of ours needs: registering shared memory by name, loading/unloading
# models, changing log and trace settings. Triton answers them only with this header and a
# per-process random value that nobody outside is told.
RESTRICTED_APIS = "shared-memory,model-repository,logging,trace"
ADMIN_HEADER = "wenet-triton-admin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether `port` cannot be bound on `host` (something listens there)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass
class TritonInstall:
    binary: str
    backend_dir: Optional[str]
    env: dict


def _bundle_dirs():
    """(tritonserver dir, bundled-libs dir) of $WENET_TRITON_SERVER_DIR (layout: bin/,
    backends/python/, python_backend_stubs/X.Y/, libs/) or of the nvidia-pytriton wheel,
    located without importing it (its __init__ pulls in many packages)."""
    env = os.environ.get("WENET_TRITON_SERVER_DIR")
    if env:
        return env, os.path.join(env, "libs")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    pkg = list(spec.submodule_search_locations)[0]
    return os.path.join(pkg, "tritonserver"), os.path.join(os.path.dirname(pkg), "nvidia_pytriton.libs")


def _pytriton_install(cache: str) -> Optional[TritonInstall]:
    base, libdir = _bundle_dirs()
    if base is None:
        return None
    binary = os.path.join(base, "bin", "tritonserver")
    if not os.path.exists(binary):
        return None
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = os.path.join(base, "python_backend_stubs", ver, "triton_python_backend_stub")
    if not os.path.exists(stub):
        raise ServerError(f"the Triton bundle in {base} has no python backend stub for Python {ver}")
    backends = os.path.join(cache, f"triton_backends_py{ver}")
    pydir = os.path.join(backends, "python")
    os.makedirs(pydir, exist_ok=True)
    for src in (os.path.join(base, "backends", "python", "libtriton_python.so"),
                os.path.join(base, "backends", "python", "triton_python_backend_utils.py"), stub):
        dst = os.path.join(pydir, os.path.basename(src))
        if not os.path.exists(dst) or os.path.getsize(dst) != os.path.getsize(src):
            shutil.copy2(src, dst)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR"), libdir, env.get("LD_LIBRARY_PATH")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return TritonInstall(binary, backends, env)


def find_tritonserver(cache: Optional[str] = None) -> TritonInstall:
    explicit = os.environ.get("TRITONSERVER") or shutil.which("tritonserver")
    if explicit:
        return TritonInstall(explicit, None, dict(os.environ))
    inst = _pytriton_install(cache or cache_root())
    if inst is None:
        raise ServerError("no tritonserver found: install the server extra "
                          "(`pip install -e .[server]`, which brings nvidia-pytriton's "
                          "tritonserver), use NVIDIA's Triton image, or set $TRITONSERVER")
    return inst


def package_parent() -> str:
    """The directory holding the wenet_triton package this process runs. tritonserver starts
    there: the python backend stub ignores $PYTHONPATH but puts its working directory ('')
    first on sys.path, so the models import this checkout's wenet_triton, not another
    (editable) install's."""
    return os.path.dirname(PACKAGE_DIR)


class TritonServer:
    """A tritonserver process: `with TritonServer(repo) as s: ...` starts, waits, stops."""

    def __init__(self, repo: str, http_port: Optional[int] = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, host: str = "127.0.0.1", log_file: Optional[str] = None,
                 extra_args: Optional[List[str]] = None, log_verbose: int = 0,
                 grpc_host: Optional[str] = None, server_id: Optional[str] = None,
                 exit_timeout: Optional[int] = None, env: Optional[Dict[str, str]] = None):
        """http_port None: no HTTP endpoint. grpc_host: gRPC's bind address when it differs
        from host (HTTP, metrics). server_id: Triton's --id, checked by wait_ready so that
        another server on the port is never taken for this one (default: a random one).
        env: variables added to the server's environment (e.g. an MPS daemon's pipe)."""
        self.repo = os.path.abspath(repo)
        self.grpc_host = grpc_host or host
        self.server_id = server_id or f"wenet-triton-{uuid.uuid4().hex[:12]}"
        self.admin_key = uuid.uuid4().hex
        self.exit_timeout = exit_timeout
        self.regions: Set[str] = set()  # its python-backend /dev/shm regions, seen while it ran
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = host
        self.log_file = log_file
        self.extra_args = extra_args or []
        self.env = dict(env or {})
        self.log_verbose = log_verbose
        self.proc: Optional[subprocess.Popen] = None
        self.shm_plan = None  # pyshm.ShmPlan of the last start
        self._log = None

    @property
    def grpc_url(self) -> str:
        host = self.grpc_host if self.grpc_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"{host}:{self.grpc_port}"

    def is_ours(self, client) -> bool:
        """Whether the server answering `client` is this process (its --id), not another
        Triton that holds the port."""
        return client.get_server_metadata().name == self.server_id

    def record_regions(self) -> Set[str]:
        """Note the python-backend /dev/shm regions it and its stubs use now (stop() removes
        them, also after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.regions |= procs.server_regions(self.proc.pid)
        return self.regions

    def command(self, inst: TritonInstall) -> List[str]:
        cmd = [inst.binary, f"--model-repository={self.repo}",
               f"--http-port={self.http_port or 0}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", f"--http-address={self.host}",
               f"--grpc-address={self.grpc_host}", "--exit-on-error=true",
               f"--log-verbose={self.log_verbose}"]
        # latency quantiles per model (nv_inference_*_summary_us{quantile=...}) for dashboards
        cmd += [f"--id={self.server_id}", f"--metrics-address={self.host}",
                "--metrics-config=summary_latencies=true",
                f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_key}"]
        if self.http_port:
            cmd.append(f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_key}")
        else:
            cmd.append("--allow-http=false")
        if self.exit_timeout is not None:
            cmd.append(f"--exit-timeout-secs={int(self.exit_timeout)}")
        if inst.backend_dir:
            cmd.append(f"--backend-directory={inst.backend_dir}")
        return cmd + self.shm_args() + self.extra_args

    def shm_args(self) -> List[str]:
        """The python backend's region size for this repository (serving/pyshm.py): every
        region starts at the most one instance holds, so none grows under load; nothing
        when the caller's extra_args set it."""
        if any(a.startswith("--backend-config=python,shm-") for a in self.extra_args):
            return []
        try:
            plan = pyshm.plan(self.repo, override_mb=pyshm.serving_override(self.repo))
        except pyshm.ShmError as e:
            raise ServerError(str(e)) from None
        if plan is None:
            return []
        self.shm_plan = plan
        (log.info if plan.fits else log.warning)("%s", plan.summary())
        return plan.args()

    def process_env(self, inst: TritonInstall) -> Dict[str, str]:
        """tritonserver's environment: the install's, plus `env`; TRITON_CACHE_DIR (where the
        Triton-lang kernels of the torch_cuda engine keep their compiled code) defaults to
        triton_kernels/ in $WENET_TRITON_CACHE, so that a container whose cache is a volume
        compiles them once, not on the first batches after every start (seconds on an H200,
        2026-12-04). A TRITON_CACHE_DIR already set is kept."""
        env = dict(inst.env, **self.env)
        env.setdefault("TRITON_CACHE_DIR", os.path.join(cache_root(), "triton_kernels"))
        return env

    def start(self, timeout: float = 180.0) -> "TritonServer":
        inst = find_tritonserver()
        for what, host, port in (("gRPC", self.grpc_host, self.grpc_port),
                                 ("HTTP", self.host, self.http_port),
                                 ("metrics", self.host, self.metrics_port)):
            if port and port_in_use(host, port):  # fail now, not after loading the models
                raise ServerError(f"{what} port {port} on {host} is already in use")
        cmd = self.command(inst)
        log.info("starting %s", " ".join(cmd).replace(self.admin_key, "<secret>"))
        out = None
        if self.log_file:
            self._log = open(self.log_file, "ab")
            out = self._log
        # own process group, so stop() also reaps the python backend stubs
        self.proc = subprocess.Popen(cmd, env=self.process_env(inst), stdout=out, stderr=subprocess.STDOUT
                                     if out else None, start_new_session=True, cwd=package_parent())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float):
        import tritonclient.grpc as grpcclient

        deadline = time.time() + timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()  # reaps stubs left in its group, removes the regions noted so far
                raise ServerError(f"tritonserver exited with code {code}"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            # note the stubs' regions as they appear while the models load: a server stopped
            # or killed before it is ready must not leave them in /dev/shm
            self.record_regions()
            try:
                if client.is_server_ready() and client.is_model_ready("attention_rescoring") \
                        and self.is_ours(client):
                    self.record_regions()
                    log.info("Triton ready: gRPC %s:%d, HTTP %s, metrics %d", self.grpc_host,
                             self.grpc_port, self.http_port, self.metrics_port)
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f} s"
                          + (f"; see {self.log_file}" if self.log_file else ""))

    def terminate(self):
        """Ask tritonserver to shut down (SIGINT to its group); safe in a signal handler."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30.0):
        if self.proc is None:
            return
        self.record_regions()  # the stubs started since the last look
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        # the stubs run in the same process group; make sure none is left
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None
        removed = procs.remove_regions(self.regions)  # what a killed server or stub left
        if removed:
            log.info("removed %d shared-memory regions left in /dev/shm", len(removed))
        self.regions = set()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
