"""The TensorRT builder's plan (profiles, FP32 pins) runs without TensorRT; the build itself
must fail with a clear message where TensorRT is absent."""
import importlib.util
import os

import onnx
import pytest
from conftest import ROOT

from wenet_triton.trt import build as build_trt  # noqa: E402


@pytest.mark.parametrize("name,reverse", [("u2pp_conformer", True), ("conformer_2021", False)])
def test_plan_pins_sensitive_ops_and_profiles_match_io(name, reverse, exports):
    plan = build_trt.main(["--export-dir", exports[name], "--fp16", "--plan-only"])
    enc = onnx.load(os.path.join(exports[name], "encoder.onnx"), load_external_data=False)
    ln = [n.name for n in enc.graph.node if n.op_type in ("LayerNormalization", "Softmax", "TopK")]
    assert ln and set(ln) <= set(plan["encoder"]["fp32_nodes"])
    assert not [n for n in plan["encoder"]["fp32_nodes"]
                if n in {m.name for m in enc.graph.node if m.op_type == "MatMul"}]
    assert set(plan["encoder"]["shapes"]) == {i.name for i in enc.graph.input}
    dec = onnx.load(os.path.join(exports[name], "decoder.onnx"), load_external_data=False)
    assert set(plan["decoder"]["shapes"]) == {i.name for i in dec.graph.input}
    assert ("r_hyps_pad_sos_eos" in plan["decoder"]["shapes"]) == reverse
    for shapes in plan["encoder"]["shapes"].values():  # min <= opt <= max
        assert all(a <= b <= c for a, b, c in zip(*shapes))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_build_without_tensorrt_says_so(exports):
    with pytest.raises(SystemExit, match="TensorRT is not installed"):
        build_trt.main(["--export-dir", exports["conformer_2021"], "--fp16"])


def _parse_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", ["u2pp_conformer", "conformer_2021"])
def test_rendered_configs_parse_as_triton_model_configs(name, exports, tmp_path):
    """Every config.pbtxt, for the onnxruntime and the tensorrt layouts, is a valid Triton
    ModelConfig; the tensorrt one serves plans with the contract's I/O."""
    import shutil

    from conftest import model_dir

    from wenet_triton.serving.repo import MODELS, build_repo

    repo = build_repo(model_dir(name), str(tmp_path / "ort"), "onnxruntime", engine_dir=exports[name])
    for m in MODELS:
        cfg = _parse_config(os.path.join(repo, m, "config.pbtxt"))
        assert cfg.name == m
    trt_dir = tmp_path / "trt_build"
    shutil.copytree(exports[name], trt_dir)
    with pytest.raises(FileNotFoundError, match="encoder.plan not found"):
        build_repo(model_dir(name), str(tmp_path / "x"), "tensorrt", engine_dir=str(trt_dir))
    for p in ("encoder", "decoder"):
        (trt_dir / f"{p}.plan").write_bytes(b"plan bytes")
    repo = build_repo(model_dir(name), str(tmp_path / "trt"), "tensorrt", engine_dir=str(trt_dir))
    enc = _parse_config(os.path.join(repo, "encoder", "config.pbtxt"))
    dec = _parse_config(os.path.join(repo, "decoder", "config.pbtxt"))
    assert enc.platform == dec.platform == "tensorrt_plan"
    assert [i.name for i in enc.input] == ["speech", "speech_lengths"]
    assert list(enc.input[1].reshape.shape) == []  # [B] tensors in the plan
    names = [i.name for i in dec.input]
    assert ("r_hyps_pad_sos_eos" in names) == (name == "u2pp_conformer")
    for p in ("encoder", "decoder"):
        assert os.path.exists(os.path.join(repo, p, "1", "model.plan"))
        assert not os.path.exists(os.path.join(repo, p, "1", "model.py"))
    fe = _parse_config(os.path.join(repo, "feature_extractor", "config.pbtxt"))
    assert fe.parameters["pad_to_batch_max"].string_value == "true"
    assert fe.parameters["fbank_impl"].string_value == "knf"  # serving.yaml default
    # the GPU hosts' config puts fbank in the encoder; a plan cannot: feature_extractor stays
    gpu_yaml = os.path.join(ROOT, "configs", "serving_gpu.yaml")
    repo = build_repo(model_dir(name), str(tmp_path / "trt_gpu"), "tensorrt", config=gpu_yaml,
                      engine_dir=str(trt_dir))
    steps = _parse_config(os.path.join(repo, "attention_rescoring", "config.pbtxt")).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["feature_extractor", "encoder", "scoring"]
    # ... while a python encoder takes the WAV itself (the ensemble pipeline; the default
    # pipeline: fused is tested in test_fused_serving.py)
    repo = build_repo(model_dir(name), str(tmp_path / "fused"), "onnxruntime", config=gpu_yaml,
                      overrides={"pipeline": "ensemble"}, engine_dir=exports[name])
    assert not os.path.exists(os.path.join(repo, "feature_extractor"))
    steps = _parse_config(os.path.join(repo, "attention_rescoring", "config.pbtxt")).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["encoder", "scoring"]
    assert dict(steps[0].input_map) == {"WAV": "WAV", "WAV_LENS": "WAV_LENS"}
    enc = _parse_config(os.path.join(repo, "encoder", "config.pbtxt"))
    assert [i.name for i in enc.input] == ["WAV", "WAV_LENS"]
    assert enc.parameters["frontend"].string_value == "fbank"
    assert enc.instance_group[0].count == 2


def test_plugin_nodes_plan_writes_rewritten_graphs(exports, tmp_path):
    out = str(tmp_path / "trt")
    with pytest.raises(SystemExit, match="--plugin-nodes needs --plugins"):
        build_trt.main(["--export-dir", exports["u2pp_conformer"], "--out", out, "--plugin-nodes"])
    build_trt.main(["--export-dir", exports["u2pp_conformer"], "--out", out, "--fp16",
                    "--plan-only", "--plugin-nodes"])
    plugged = onnx.load(os.path.join(out, "encoder.plugins.onnx")).graph.node
    assert "WenetRelPosAttention" not in [n.op_type for n in plugged]
    build_trt.main(["--export-dir", exports["u2pp_conformer"], "--out", out, "--fp16",
                    "--plan-only", "--plugin-nodes", "--attention-plugin"])
    enc = onnx.load(os.path.join(out, "encoder.plugins.onnx"))
    ops = [n.op_type for n in enc.graph.node]
    assert ops.count("WenetLogSoftmaxTopK") == 1 and ops.count("WenetAddLayerNorm") >= 8
    assert ops.count("WenetGluDwConv") == 6  # u2pp: one per block
    assert ops.count("WenetRelPosAttention") == 6 and "Softmax" not in ops
    # the plugin names are the ones csrc/wenet_trt_plugins.cpp registers
    src = open(os.path.join(ROOT, "wenet_triton", "csrc", "wenet_trt_plugins.cpp")).read()
    assert all(f"\"{op}\"" in src for op in ("WenetLogSoftmaxTopK", "WenetAddLayerNorm", "WenetGluDwConv",
                                                "WenetRelPosAttention", "WenetAttention"))
