import os
import subprocess
import sys

import pytest

from conftest import model_dir, wav_path

CLI = os.path.join(os.path.dirname(sys.executable), "wenet-triton")
COMMANDS = ["export", "transcribe", "cer", "build-plugins", "build", "bench", "build-repo", "serve"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    res = subprocess.run([CLI, cmd, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage: wenet-triton " + cmd in res.stdout


def test_transcribe_prints_utt_tab_text_and_names_bad_files(tmp_path, exports):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    res = subprocess.run([CLI, "transcribe", "--model", model_dir("u2pp_conformer"), "--engine-dir",
                          exports["u2pp_conformer"], wav_path("test_000001"), str(bad),
                          wav_path("test_000002")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1  # one input failed
    lines = res.stdout.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["test_000001", "test_000002"]
    assert all(len(ln.split("\t")) == 2 and ln.split("\t")[1] for ln in lines)
    assert "broken.wav: not a readable audio file" in res.stderr


def test_missing_model_dir_is_a_clear_error(tmp_path):
    res = subprocess.run([CLI, "transcribe", "--model", str(tmp_path / "nope"), wav_path("test_000001")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "model directory not found" in res.stderr
