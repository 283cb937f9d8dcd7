"""`wenet-triton serve --mps`: the CUDA MPS control daemon of the server's own (serving/mps.py).
No GPU here: nvidia-cuda-mps-control is a stand-in speaking its protocol (served.FAKE_MPS: `-d`
starts a daemon listening on <pipe dir>/control, `quit` on that pipe ends it). That the real
daemon lets the instances' kernels share the GPU was measured on an H200 (README, MPS);
tests/test_hardening.py serves under the stand-in and checks every tritonserver it starts,
restarts included, gets the daemon's pipe."""
import os
import subprocess
import sys

import pytest
from served import cli_env, fake_mps_control

from wenet_triton.serving import procs
from wenet_triton.serving.mps import MpsDaemon, MpsError
from wenet_triton.serving.server import free_port


def test_daemon_starts_with_a_private_pipe_and_quits(tmp_path):
    binary = fake_mps_control(str(tmp_path / "bin"))
    d = MpsDaemon(binary=binary).start()
    root, env = d.root, d.env()
    try:
        assert env == {"CUDA_MPS_PIPE_DIRECTORY": os.path.join(root, "pipe"),
                       "CUDA_MPS_LOG_DIRECTORY": os.path.join(root, "log")}
        assert os.path.exists(os.path.join(root, "pipe", "control"))
        pid = d._pid()
        assert pid and procs.alive(pid)
    finally:
        d.stop()
    assert not procs.alive(pid)  # it only exits on `quit`
    assert not os.path.exists(root) and d.env() == {}


def test_missing_control_program_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    before = set(os.listdir("/tmp"))
    with pytest.raises(MpsError, match="nvidia-cuda-mps-control not found"):
        MpsDaemon().start()
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("wenet-triton-mps-")}


def test_daemon_that_fails_to_start_is_reported(tmp_path):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text("#!/bin/sh\necho 'An instance of this daemon is already running' >&2\nexit 3\n")
    binary.chmod(0o755)
    d = MpsDaemon(binary=str(binary))
    with pytest.raises(MpsError, match=r"exit 3\): An instance of this daemon is already running"):
        d.start()
    assert d.root is None


def test_serve_with_mps_but_no_daemon_program_exits_naming_it(tmp_path):
    env = dict(cli_env(), PATH=os.path.dirname(sys.executable))  # python, no MPS program
    r = subprocess.run([sys.executable, "-m", "wenet_triton.cli", "serve", "--repo", str(tmp_path),
                        "--mps", "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
                        "--health-port", "0", "--no-guard"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode != 0
    assert "--mps: nvidia-cuda-mps-control not found" in r.stderr, r.stderr[-2000:]
