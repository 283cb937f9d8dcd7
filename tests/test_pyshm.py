"""Sizing the python backend's /dev/shm regions from a rendered repository (serving/pyshm.py)."""
import json
import os

import pytest
from conftest import model_dir

from wenet_triton.serving import pyshm
from wenet_triton.serving.server import ServerError, TritonServer

MB = 1 << 20
SECOND = 16000 * 4  # bytes of one second of 16 kHz float32 samples


@pytest.fixture(scope="module")
def fused_repo(tmp_path_factory, exports):
    """The GPU default's shape (pipeline fused, 64 rows, 3 batches in flight, 4 instances)
    rendered with the CPU engine."""
    from wenet_triton.serving.repo import build_repo

    out = str(tmp_path_factory.mktemp("pyshm") / "repo")
    return build_repo(model_dir("u2pp_conformer"), out, "onnxruntime", engine_dir=exports["u2pp_conformer"],
                      overrides={"pipeline": "fused", "max_batch_size": 64, "max_audio_seconds": 60,
                                 "models": {"fused": {"instances": 4, "max_inflight": 3}}})


def test_regions_hold_every_batch_in_flight_when_shm_allows(fused_repo):
    p = pyshm.plan(fused_repo, free=64 << 30)
    assert p.instances == 4
    # 3 batches past the device stage + the one arriving, 64 rows of 60 s samples each
    assert p.default_bytes >= 4 * 64 * 60 * SECOND
    assert p.default_bytes < 1.25 * 4 * 64 * 60 * SECOND  # not oversized: headroom only
    assert p.fits and "growth" not in p.summary()
    assert p.args()[0] == f"--backend-config=python,shm-default-byte-size={p.default_bytes}"


def test_small_shm_is_shared_and_the_log_says_how_much_more_is_needed(fused_repo):
    p = pyshm.plan(fused_repo, free=2048 * MB)  # docker compose's old shm_size: 2gb
    assert p.instances * p.default_bytes <= 0.8 * 2048 * MB
    assert p.default_bytes >= 300 * MB  # still 64 x 20 s x 4 batches
    assert not p.fits
    assert "shm_size" in p.summary() and "short of it by" in p.summary()


def test_too_little_shm_is_a_clear_error_before_tritonserver_starts(fused_repo):
    with pytest.raises(pyshm.ShmError, match=r"/dev/shm has 10 MB free; .* 4 python-backend instances"):
        pyshm.plan(fused_repo, free=10 * MB)
    with pytest.raises(pyshm.ShmError, match=r"python_shm_mb 512 x 4 python instances = 2048 MB"):
        pyshm.plan(fused_repo, free=1024 * MB, override_mb=512)


def test_serving_config_python_shm_mb_sets_the_size_and_caller_args_win(fused_repo, tmp_path):
    cfg_path = os.path.join(fused_repo, "serving.json")
    with open(cfg_path) as f:
        saved = f.read()
    try:
        doc = json.loads(saved)
        doc["config"]["python_shm_mb"] = 96
        with open(cfg_path, "w") as f:
            json.dump(doc, f)
        s = TritonServer(fused_repo)
        assert s.shm_args()[0] == f"--backend-config=python,shm-default-byte-size={96 * MB}"
        doc["config"]["python_shm_mb"] = "lots"
        with open(cfg_path, "w") as f:
            json.dump(doc, f)
        with pytest.raises(ServerError, match="python_shm_mb 'lots': use auto or a size in MB"):
            s.shm_args()
        mine = TritonServer(fused_repo, extra_args=["--backend-config=python,shm-default-byte-size=9999999"])
        assert mine.shm_args() == []
    finally:
        with open(cfg_path, "w") as f:
            f.write(saved)


def test_ensemble_steps_count_only_the_outputs_the_ensemble_maps(tmp_path, exports):
    """The CPU default's encoder is asked for encoder_out and the beam tensors, not its
    vocabulary-wide ctc_log_probs (300 kB per second of audio here)."""
    from wenet_triton.serving.repo import build_repo

    repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "repo"), "onnxruntime",
                      engine_dir=exports["u2pp_conformer"], overrides={"max_audio_seconds": 30})
    needs = {m.name: m for m in pyshm.model_needs(repo)}
    assert "ctc_log_probs" not in needs["encoder"].why and "encoder_out" in needs["encoder"].why
    # 16 rows x 30 s of fbank frames (100/s x 80 float32) in, at least
    assert needs["encoder"].bytes_per_instance >= 16 * 30 * 100 * 80 * 4
    assert needs["streaming"].instances == 1 and "BLS to decoder" in needs["streaming"].why


def test_instances_on_several_gpus_each_get_a_region(fused_repo, tmp_path):
    """`gpus: [0, 1]` renders `count: N kind: KIND_GPU gpus: [0, 1]`: N regions per GPU."""
    import shutil

    repo = str(tmp_path / "repo")
    shutil.copytree(fused_repo, repo, symlinks=True)
    cfg = os.path.join(repo, "attention_rescoring", "config.pbtxt")
    with open(cfg) as f:
        text = f.read()
    assert "count: 4 kind: KIND_CPU" in text
    with open(cfg, "w") as f:
        f.write(text.replace("count: 4 kind: KIND_CPU", "count: 3 kind: KIND_GPU gpus: [ 0, 1 ]"))
    p = pyshm.plan(repo, free=64 << 30)
    assert p.instances == 6
