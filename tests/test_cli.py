import os
import subprocess
import sys

import pytest
from conftest import model_dir, shared_path, wav_path

CLI = os.path.join(os.path.dirname(sys.executable), "wenet-triton")
COMMANDS = ["export", "transcribe", "cer", "lm", "build-plugins", "build", "bench", "build-repo", "serve",
            "calibrate-fp8"]


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


def test_lm_command_builds_an_arpa_that_transcribe_uses(tmp_path, exports):
    text = tmp_path / "text"
    with open(shared_path("synth", "train.txt"), encoding="utf-8") as f:
        text.write_text("".join(next(f) for _ in range(3000)), encoding="utf-8")
    arpa = tmp_path / "lm.arpa.gz"
    res = subprocess.run([CLI, "lm", "--model", model_dir("u2pp_conformer"), "--text", str(text),
                          "--with-ids", "--order", "3", "--min-count", "1,2,2", "--out", str(arpa)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "3,000 sentences" in res.stderr and arpa.exists()
    res = subprocess.run([CLI, "transcribe", "--model", model_dir("u2pp_conformer"), "--engine-dir",
                          exports["u2pp_conformer"], "--lm", str(arpa), "--lm-weight", "0.5",
                          wav_path("test_000001")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "# LM" in res.stderr and res.stdout.startswith("test_000001\t")


@pytest.mark.parametrize("args,msg", [
    (["lm", "--text", "nowhere.txt"], "cannot read text nowhere.txt"),
    (["lm", "--text", "x", "--min-count", "1,two"], "--min-count takes comma-separated integers"),
    (["transcribe", "--lm", "nowhere.arpa"], "LM file not found: nowhere.arpa"),
])
def test_lm_mistakes_are_clear_errors(tmp_path, args, msg):
    res = subprocess.run([CLI, *args, "--model", model_dir("u2pp_conformer"),
                          *(["--out", str(tmp_path / "o.arpa")] if args[0] == "lm" else
                            [wav_path("test_000001")])],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode != 0 and msg in res.stderr, res.stderr
