"""Start and stop a real tritonserver for a rendered repository.

Binary lookup order: $TRITONSERVER, `tritonserver` on PATH (NVIDIA's image has it in
/opt/tritonserver/bin), then the one inside the `nvidia-pytriton` wheel. For the wheel's
server we assemble a backend directory with the python backend and the stub for this
Python, and run it with this interpreter's bin/ first on PATH (the stub takes its prefix
and site-packages from there) and the wheel's bundled libraries on LD_LIBRARY_PATH.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from typing import List, Optional

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonInstall:
    binary: str
    backend_dir: Optional[str]
    env: dict


def _bundle_dirs():
    """(tritonserver dir, bundled-libs dir) of $WENET_TRITON_SERVER_DIR (layout: bin/,
    backends/python/, python_backend_stubs/X.Y/, libs/) or of the nvidia-pytriton wheel,
    located without importing it (its __init__ pulls in many packages)."""
    import importlib.util

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
    from .artifacts import cache_root

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
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TritonServer:
    """A tritonserver process: `with TritonServer(repo) as s: ...` starts, waits, stops."""

    def __init__(self, repo: str, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, host: str = "0.0.0.0", log_file: Optional[str] = None,
                 extra_args: Optional[List[str]] = None, log_verbose: int = 0):
        self.repo = os.path.abspath(repo)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = host
        self.log_file = log_file
        self.extra_args = extra_args or []
        self.log_verbose = log_verbose
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self, inst: TritonInstall) -> List[str]:
        cmd = [inst.binary, f"--model-repository={self.repo}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", f"--http-address={self.host}",
               f"--grpc-address={self.host}", "--exit-on-error=true",
               f"--log-verbose={self.log_verbose}"]
        if inst.backend_dir:
            cmd.append(f"--backend-directory={inst.backend_dir}")
        return cmd + self.extra_args

    def start(self, timeout: float = 180.0) -> "TritonServer":
        inst = find_tritonserver()
        cmd = self.command(inst)
        log.info("starting %s", " ".join(cmd))
        out = None
        if self.log_file:
            self._log = open(self.log_file, "ab")
            out = self._log
        # own process group, so stop() also reaps the python backend stubs
        self.proc = subprocess.Popen(cmd, env=inst.env, stdout=out, stderr=subprocess.STDOUT
                                     if out else None, start_new_session=True, cwd=package_parent())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float):
        import tritonclient.grpc as grpcclient

        deadline = time.time() + timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.proc.returncode}"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                if client.is_server_ready() and client.is_model_ready("attention_rescoring"):
                    log.info("Triton ready: gRPC %s:%d, HTTP %d, metrics %d", self.host,
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
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
