"""A CUDA MPS control daemon of the server's own (`wenet-triton serve --mps`).

Without MPS the GPU runs the kernels of different processes in turns (time slices): one
python-backend instance's GPU search, a kernel of a few dozen blocks, holds the whole GPU
while the other instance's encoder waits. Under MPS the instances' kernels run side by side.
On an H200 (2026-12-01, `benchmarks/results/h200_2026-12-01e/`) the fused model's wait for its
search fell from ~10 to ~6.7 ms per batch and 2 instances served 3,523 instead of 3,347
infer/s at concurrency 256; 3 instances 4,229 at 512.

Whether `serve` starts one: `--mps` / `--no-mps`, else the serving config's `mps` key
(`mps_mode`): false (the default), true (a missing control program is an error), or auto
(started when the control program is on PATH and a GPU is visible; otherwise `serve` says so
and goes on in time slices). configs/serving_gpu.yaml sets auto.

The daemon gets a private pipe and log directory (CUDA_MPS_PIPE_DIRECTORY,
CUDA_MPS_LOG_DIRECTORY), so only the processes started with `env()` (tritonserver and its
stubs) use it; other CUDA programs on the host keep their own way. stop() asks it to quit
and removes the directories.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Dict, Optional, Tuple

from wenet_triton.serving import procs
from wenet_triton.serving.repo_json import repo_config
from wenet_triton.serving.server import ServerError

log = logging.getLogger("wenet_triton.mps")
CONTROL = "nvidia-cuda-mps-control"


class MpsError(ServerError):
    """The daemon is missing or did not start (serve reports it and exits)."""


MPS_MODES = ("false", "true", "auto")


def mps_mode(cli: Optional[bool], repo: Optional[str]) -> str:
    """'true', 'false' or 'auto': `--mps` / `--no-mps` (cli True / False) if given, else the
    repository's `mps` (serving.yaml, kept in serving.json), else 'false'."""
    if cli is not None:
        return "true" if cli else "false"
    value = repo_config(repo).get("mps")
    mode = "false" if value is None else str(value).strip().lower()
    if mode not in MPS_MODES:
        raise ServerError(f"serving config mps: {value!r}; use true, false or auto")
    return mode


def gpu_device_files(dev: str = "/dev") -> int:
    """NVIDIA GPU device files here (/dev/nvidia0, ...): what a process of this host or
    container could open, without initialising CUDA in the supervisor."""
    try:
        return sum(1 for n in os.listdir(dev) if n.startswith("nvidia") and n[6:].isdigit())
    except OSError:
        return 0


def start_for(mode: str, gpus: Callable[[], int] = gpu_device_files, binary: Optional[str] = None
              ) -> Optional["MpsDaemon"]:
    """The daemon `serve` runs for an mps mode (mps_mode), or None. auto: only when the control
    program is there and gpus() > 0 (default: GPU device files in /dev); a daemon that then
    fails to start is logged and skipped (the instances share the GPU in time slices). true:
    MpsError when it cannot start."""
    if mode == "false":
        return None
    daemon = MpsDaemon(binary)
    if mode == "true":
        return daemon.start()
    if not daemon.binary or not os.access(daemon.binary, os.X_OK):
        log.info("mps auto: %s not on PATH; the model instances share the GPU in time slices", CONTROL)
        return None
    if gpus() <= 0:
        log.info("mps auto: no GPU visible; no MPS daemon")
        return None
    try:
        return daemon.start()
    except MpsError as e:
        log.warning("mps auto: the MPS daemon did not start (%s); serving without it", e)
        return None


class MpsDaemon:
    def __init__(self, binary: Optional[str] = None):
        """binary: the control program (default: nvidia-cuda-mps-control on PATH). The pipe and
        log directories go into a new temporary directory (`root`) when it starts."""
        self.binary = binary or shutil.which(CONTROL)
        self.root: Optional[str] = None

    @property
    def pipe_dir(self) -> str:
        return os.path.join(self.root or "", "pipe")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root or "", "log")

    def env(self) -> Dict[str, str]:
        """The variables that make a CUDA process a client of this daemon."""
        if self.root is None:
            return {}
        return {"CUDA_MPS_PIPE_DIRECTORY": self.pipe_dir, "CUDA_MPS_LOG_DIRECTORY": self.log_dir}

    def _run(self, args, stdin: Optional[str] = None, timeout: float = 10.0) -> Tuple[int, str]:
        """-> (exit code, its output). The output goes through a file, not a pipe: the daemon
        `-d` forks may hold the descriptors it inherited, and a pipe would wait for it."""
        with tempfile.TemporaryFile("w+") as out:
            r = subprocess.run([self.binary] + args, input=stdin, text=True, stdout=out,
                               stderr=subprocess.STDOUT, env=dict(os.environ, **self.env()),
                               timeout=timeout)
            out.seek(0)
            return r.returncode, out.read().strip()

    def start(self, timeout: float = 10.0) -> "MpsDaemon":
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise MpsError(f"MPS (--mps, or the serving config's mps: true): {CONTROL} not found "
                           "on PATH (it comes with the NVIDIA driver, and the NVIDIA container "
                           "runtime mounts it into GPU containers); put it on PATH, or serve "
                           "with --no-mps (mps: auto goes on without it)")
        self.root = tempfile.mkdtemp(prefix="wenet-triton-mps-")
        os.makedirs(self.pipe_dir)
        os.makedirs(self.log_dir)
        try:
            code, output = self._run(["-d"], timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise MpsError(f"{CONTROL} -d did not return within {timeout:g} s") from None
        if code != 0:
            detail = output or self._log_tail()
            self._remove()
            raise MpsError(f"{CONTROL} -d failed (exit {code}): {detail}")
        control = os.path.join(self.pipe_dir, "control")
        deadline = time.monotonic() + timeout
        while not os.path.exists(control):  # the daemon's command pipe: it is listening
            if time.monotonic() > deadline:
                detail = self._log_tail()
                self.stop()
                raise MpsError(f"the MPS daemon did not open {control} within {timeout:g} s"
                               + (f": {detail}" if detail else ""))
            time.sleep(0.05)
        log.info("MPS control daemon up (pipe %s)", self.pipe_dir)
        return self

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.log_dir, "control.log")) as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0):
        """Ask the daemon to quit (it ends its MPS server first), then remove its directories."""
        if self.root is None:
            return
        control = os.path.join(self.pipe_dir, "control")
        if os.path.exists(control):
            pid = self._pid()
            try:
                self._run([], stdin="quit\n", timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("the MPS daemon did not take `quit` within %g s", timeout)
            deadline = time.monotonic() + timeout
            while (procs.alive(pid) if pid else os.path.exists(control)) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._remove()

    def _pid(self) -> Optional[int]:
        """The control daemon's pid (it writes it beside its pipes), if readable."""
        try:
            with open(os.path.join(self.pipe_dir, CONTROL + ".pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _remove(self):
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
