"""`wenet-triton serve --mps`: the CUDA MPS control daemon of the server's own (serving/mps.py).
No GPU here: nvidia-cuda-mps-control is a stand-in speaking its protocol (served.FAKE_MPS: `-d`
starts a daemon listening on <pipe dir>/control, `quit` on that pipe ends it). That the real
daemon lets the instances' kernels share the GPU was measured on an H200 (README, MPS);
tests/test_hardening.py serves under the stand-in and checks every tritonserver it starts,
restarts included, gets the daemon's pipe."""
import json
import os
import subprocess
import sys

import pytest
from served import cli_env, fake_mps_control

from wenet_triton.serving import procs
from wenet_triton.serving.mps import MpsDaemon, MpsError, gpu_device_files, mps_mode, start_for
from wenet_triton.serving.server import ServerError, free_port


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


@pytest.mark.parametrize("how", ["flag", "config"])
def test_serve_with_mps_but_no_daemon_program_exits_naming_it(tmp_path, how):
    """`--mps`, or `mps: true` in the repository's serving config: no daemon program is an error."""
    env = dict(cli_env(), PATH=os.path.dirname(sys.executable))  # python, no MPS program
    flag = ["--mps"] if how == "flag" else []
    if how == "config":
        (tmp_path / "serving.json").write_text(json.dumps({"config": {"mps": True}}))
    r = subprocess.run([sys.executable, "-m", "wenet_triton.cli", "serve", "--repo", str(tmp_path),
                        *flag, "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
                        "--health-port", "0", "--no-guard"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode != 0
    assert "nvidia-cuda-mps-control not found on PATH" in r.stderr, r.stderr[-2000:]


def test_mps_setting_the_flag_wins_over_the_serving_config(tmp_path):
    assert mps_mode(None, None) == "false" and mps_mode(None, str(tmp_path)) == "false"
    for value, want in ((True, "true"), (False, "false"), ("auto", "auto"), ("AUTO", "auto")):
        (tmp_path / "serving.json").write_text(json.dumps({"config": {"mps": value}}))
        assert mps_mode(None, str(tmp_path)) == want
        assert mps_mode(True, str(tmp_path)) == "true"     # --mps
        assert mps_mode(False, str(tmp_path)) == "false"   # --no-mps
    (tmp_path / "serving.json").write_text(json.dumps({"config": {"mps": "sometimes"}}))
    with pytest.raises(ServerError, match="mps: 'sometimes'; use true, false or auto"):
        mps_mode(None, str(tmp_path))


def test_auto_starts_the_daemon_only_with_its_program_and_a_gpu(tmp_path):
    binary = fake_mps_control(str(tmp_path / "bin"))
    missing = str(tmp_path / "none" / "nvidia-cuda-mps-control")
    assert start_for("false", lambda: 1, binary) is None
    assert start_for("auto", lambda: 0, binary) is None         # no GPU: no daemon
    assert start_for("auto", lambda: 1, missing) is None        # no program: time slices
    with pytest.raises(MpsError, match="not found on PATH"):
        start_for("true", lambda: 1, missing)                   # asked for: an error
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    assert start_for("auto", lambda: 1, str(broken)) is None    # fails to start: goes on without
    for mode in ("auto", "true"):
        d = start_for(mode, lambda: 1, binary)
        try:
            assert d is not None and os.path.exists(os.path.join(d.root, "pipe", "control"))
        finally:
            d.stop()
        assert d.root is None


def test_gpu_device_files_counts_nvidia_n_only(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps", "null"):
        (tmp_path / name).write_text("")
    assert gpu_device_files(str(tmp_path)) == 2
    assert gpu_device_files(str(tmp_path / "absent")) == 0
