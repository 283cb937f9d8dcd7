"""The TensorRT builder's plan (profiles, FP32 pins) runs without TensorRT; the build itself
must fail with a clear message where TensorRT is absent."""
import importlib.util
import os
import sys

import onnx
import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "build_engines"))
import build_trt  # noqa: E402


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
