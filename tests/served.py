"""A `wenet-triton serve` process for tests (supervisor + tritonserver on loopback ports):
its health, its tritonserver's pid and /dev/shm regions, its log; shared by the hardening
and failover tests."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as tritonclient
from conftest import ROOT

from wenet_triton.serving import procs
from wenet_triton.serving.server import free_port


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def processes_with(tag):
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if tag in line and "ps -ww -eo" not in line]


class ServedProcess:
    """`wenet-triton serve --repo REPO` with fast probes; http: also an HTTP port."""

    def __init__(self, repo, tmp, name="serve", http=False, drain_timeout=30, extra_args=(), env=None):
        self.name, self.repo = name, repo
        self.grpc_port, self.metrics_port, self.health_port = (free_port() for _ in range(3))
        self.http_port = free_port() if http else None
        self.url = f"127.0.0.1:{self.grpc_port}"
        self.health_url = f"http://127.0.0.1:{self.health_port}/healthz"
        self.log_path = os.path.join(tmp, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.regions = set()  # every python-backend region its tritonservers used
        args = ["serve", "--repo", repo, "--grpc-port", str(self.grpc_port), "--metrics-port",
                str(self.metrics_port), "--health-port", str(self.health_port), "--probe-interval", "1",
                "--probe-timeout", "15", "--restart-after", "2", "--drain-timeout", str(drain_timeout)]
        if http:
            args += ["--http-port", str(self.http_port)]
        self.proc = subprocess.Popen([sys.executable, "-m", "wenet_triton.cli", *args, *extra_args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(cli_env(), **(env or {})), cwd=tmp)

    def health(self):
        try:
            with urllib.request.urlopen(self.health_url, timeout=3) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return None, {}

    def wait_healthy(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, self.tail()
            if self.health()[0] == 200:
                self.note_regions()
                return time.time()
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not healthy after {timeout} s\n{self.tail()}")

    def triton_pid(self):
        for pid in procs.children(self.proc.pid):
            if "tritonserver" in " ".join(procs._cmdline(pid)[:1]) and procs.alive(pid):
                return pid
        return None

    def note_regions(self):
        pid = self.triton_pid()
        if pid:
            self.regions |= procs.server_regions(pid)

    def tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def infer_batch(url, wavs):
    """One request carrying several utterances (WAV [B, N] zero-padded, WAV_LENS [B, 1])."""
    wav = np.zeros((len(wavs), max(len(w) for w in wavs)), np.float32)
    for i, w in enumerate(wavs):
        wav[i, :len(w)] = w
    client = tritonclient.InferenceServerClient(url)
    a = tritonclient.InferInput("WAV", list(wav.shape), "FP32")
    a.set_data_from_numpy(wav)
    b = tritonclient.InferInput("WAV_LENS", [len(wavs), 1], "INT32")
    b.set_data_from_numpy(np.array([[len(w)] for w in wavs], np.int32))
    res = client.infer("attention_rescoring", [a, b])
    return [t[0].decode("utf-8") for t in res.as_numpy("TRANSCRIPTS")]


def export_u2pp(tmp_path_factory, tag, verify=True):
    """The shared u2pp_conformer checkpoint exported with its reference decoding settings
    (beam, CTC and reverse weights) into a fresh temp dir -> the export dir."""
    from conftest import model_dir, reference

    from wenet_triton.engines.export import export_onnx

    dec, _ = reference("u2pp_conformer")
    d = str(tmp_path_factory.mktemp(tag))
    export_onnx(model_dir("u2pp_conformer"), d, beam_size=dec["beam_size"],
                ctc_weight=dec["ctc_weight"], reverse_weight=dec["reverse_weight"], verify=verify)
    return d


def serve_for_module(repo, tmp, figures, title, **kw):
    """A module fixture's body (`yield from`): a ServedProcess over repo, healthy (its start
    time in figures), then stopped with no process left; figures printed under title."""
    s = ServedProcess(repo, tmp, **kw)
    try:
        t0 = time.time()
        s.wait_healthy(240)
        figures["start to healthy (s)"] = round(time.time() - t0, 1)
        yield s
    finally:
        s.stop()
        time.sleep(0.5)
        leftover = processes_with(repo)
        assert not leftover, leftover
        print(f"\n{title}:", json.dumps(figures, indent=1))



FAKE_MPS = '''#!{python}
"""A stand-in for nvidia-cuda-mps-control (no GPU here): `-d` starts a daemon that listens
on the fifo CUDA_MPS_PIPE_DIRECTORY/control and writes its pid beside it; without arguments
stdin goes to that fifo; the daemon exits on `quit`, removing both."""
import os, sys
pipe, logs = os.environ["CUDA_MPS_PIPE_DIRECTORY"], os.environ["CUDA_MPS_LOG_DIRECTORY"]
control = os.path.join(pipe, "control")
if sys.argv[1:] == ["-d"]:
    if os.fork():
        sys.exit(0)
    os.setsid()
    os.mkfifo(control)
    with open(os.path.join(pipe, "nvidia-cuda-mps-control.pid"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        with open(control) as f:
            if "quit" in f.read():
                break
    os.remove(control)
    with open(os.path.join(logs, "control.log"), "a") as f:
        f.write("quit\\n")
elif not sys.argv[1:]:
    with open(control, "w") as f:
        f.write(sys.stdin.read())
else:
    sys.exit(f"unexpected arguments {{sys.argv[1:]}}")
'''


def fake_mps_control(bin_dir) -> str:
    """An executable nvidia-cuda-mps-control stand-in in bin_dir (put bin_dir first on PATH)."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "nvidia-cuda-mps-control")
    with open(path, "w") as f:
        f.write(FAKE_MPS.format(python=sys.executable))
    os.chmod(path, 0o755)
    return path


def environ_of(pid) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.split("=", 1) for e in f.read().decode(errors="replace").split("\0") if "=" in e)
