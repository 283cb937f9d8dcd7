"""Docker files are not built here (no Docker engine); check what can be checked: the
compose file's structure against the serving contract and the Dockerfile's references."""
import os
import re

import yaml
from conftest import ROOT


def test_compose_serves_triton_with_gpu_and_healthcheck():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        c = yaml.safe_load(f)
    t = c["services"]["triton"]
    assert t["build"]["dockerfile"] == "Dockerfile.triton"
    # gRPC and metrics, published on the host's loopback only (closed by default)
    assert {p.rsplit(":", 1)[1] for p in t["ports"]} == {"8001", "8002"}
    assert all(p.startswith("127.0.0.1:") for p in t["ports"])
    dev = t["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert "localhost:8003/healthz" in " ".join(t["healthcheck"]["test"])  # the supervisor's
    assert any(v.endswith(":/models/model:ro") for v in t["volumes"])
    assert any(v.split(":")[0] == "cache" for v in t["volumes"]) and "cache" in c["volumes"]
    loc = c["services"]["locust"]
    assert loc["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "loadtest/locustfile.py" in loc["command"] and "-t" in loc["command"]


def test_dockerfile_copies_existing_paths_and_entrypoint():
    text = open(os.path.join(ROOT, "Dockerfile.triton")).read()
    assert re.search(r"^FROM nvcr.io/nvidia/tritonserver:\$\{TRITON_TAG\}", text, re.M)
    assert re.search(r"^ARG TRITON_TAG=\d\d\.\d\d-py3$", text, re.M)  # pinned tag
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")  # the server does not run as root
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert os.path.exists(os.path.join(ROOT, src)), src
    entry = re.search(r'ENTRYPOINT \[.*"(/opt/wenet-triton/[^"]+)"\]', text).group(1)
    assert os.path.exists(os.path.join(ROOT, entry.replace("/opt/wenet-triton/", "")))
    cfg = re.search(r"SERVING_CONFIG=/opt/wenet-triton/(\S+)", text).group(1)
    assert os.path.exists(os.path.join(ROOT, cfg))


def _tool(*names):
    import shutil

    for n in names:
        path = shutil.which(n) or shutil.which(os.path.join(os.path.dirname(os.sys.executable), n))
        if path:
            return path
    import pytest

    pytest.skip(f"none of {names} installed (.ci/run installs them)")


def test_compose_file_validates():
    """`docker-compose config` (v1, Debian's package) checks the file against the compose schema
    without a Docker engine."""
    import subprocess

    exe = _tool("docker-compose")
    res = subprocess.run([exe, "-f", os.path.join(ROOT, "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


def test_dockerfile_lints_clean():
    import subprocess

    res = subprocess.run([_tool("hadolint"), os.path.join(ROOT, "Dockerfile.triton")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shell_scripts_pass_shellcheck():
    import glob
    import subprocess

    scripts = sorted(glob.glob(os.path.join(ROOT, "scripts", "**", "*.sh"), recursive=True)
                     + glob.glob(os.path.join(ROOT, "recipes", "**", "*.sh"), recursive=True)
                     + glob.glob(os.path.join(ROOT, "docker", "*.sh"))
                     + glob.glob(os.path.join(ROOT, "wenet_triton", "csrc", "*.sh")))
    scripts.append(os.path.join(ROOT, ".ci", "run"))
    res = subprocess.run([_tool("shellcheck"), "-S", "warning", *scripts], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout
