#!/usr/bin/env python3
"""Build TensorRT plans from an export dir (encoder.onnx / decoder.onnx of `wenet-triton
export`): optimization profiles from a YAML, FP16 with numerically sensitive layers pinned to
FP32, optional INT8 (entropy calibration over real fbank features, cached), a timing cache,
plugin libraries, and a JSON of each engine's I/O.

    wenet-triton build --engine tensorrt --model MODEL_DIR --out trt/ [--int8 --calib-wavs wavs/]
    python3 -m wenet_triton.trt.build --export-dir onnx/ --out trt/ --fp16
    python3 -m wenet_triton.trt.build --export-dir onnx/ --plan-only      # no TensorRT needed

NOT EXECUTED in this project's environments (TensorRT cannot be installed there); written
against the TensorRT 10 Python API. `--plan-only` runs everywhere: it prints the profiles and
the ONNX nodes that will be pinned to FP32, and the tests check it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
from typing import Dict, List

import numpy as np
import onnx
import yaml

from wenet_triton.audio.frontend import Fbank, pad_feats, read_audio
from wenet_triton.contract import EngineSettings
from wenet_triton.trt import graph_passes

# Ops whose FP16 rounding costs accuracy (reductions, exp/log, normalization statistics,
# top-k ties): kept in FP32. The published FP16 attempts that lost 1.4 CER points ran these
# in FP16.
FP32_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "Softmax", "LogSoftmax",
            "Exp", "Log", "Pow", "Sqrt", "Div", "TopK", "CumSum")
DEFAULT_PROFILES = {
    "encoder": {"batch": [1, 16, 64], "frames": [10, 1000, 3000]},
    "decoder": {"batch": [1, 16, 64], "enc_frames": [1, 250, 750], "hyp_len": [3, 40, 120]},
}


def fp32_nodes(onnx_path: str, extra_patterns: List[str]) -> List[str]:
    """Names of ONNX nodes to pin to FP32: sensitive op types, plus name regexes."""
    model = onnx.load(onnx_path, load_external_data=False)
    pats = [re.compile(p) for p in extra_patterns]
    return [n.name for n in model.graph.node
            if n.op_type in FP32_OPS or any(p.search(n.name) for p in pats)]


def profile_shapes(kind: str, prof: Dict, settings: EngineSettings) -> Dict[str, List[tuple]]:
    """input name -> [min, opt, max] shapes."""
    beam, D, F = settings.beam_size, settings.output_size, settings.input_dim
    if kind == "encoder":
        b, t = prof["batch"], prof["frames"]
        return {"speech": [(b[i], t[i], F) for i in range(3)], "speech_lengths": [(b[i],) for i in range(3)]}
    b, t, L = prof["batch"], prof["enc_frames"], prof["hyp_len"]
    shapes = {"encoder_out": [(b[i], t[i], D) for i in range(3)],
              "encoder_out_lens": [(b[i],) for i in range(3)],
              "hyps_pad_sos_eos": [(b[i], beam, L[i] + 2) for i in range(3)],
              "hyps_lens_sos": [(b[i], beam) for i in range(3)],
              "ctc_score": [(b[i], beam) for i in range(3)]}
    if settings.decoder_has_reverse_input:
        shapes["r_hyps_pad_sos_eos"] = shapes["hyps_pad_sos_eos"]
    return shapes


class _Calibrator:
    """INT8 entropy calibration over real fbank features (TensorRT 10; removed in 11)."""
    @staticmethod
    def make(trt, feats_batches, cache_path):
        import torch

        base = trt.IInt8EntropyCalibrator2

        class Calib(base):
            def __init__(self):
                base.__init__(self)
                self.batches = iter(feats_batches)
                self.buffers = {}

            def get_batch_size(self):
                return 1

            def get_batch(self, names):
                try:
                    x, lens = next(self.batches)
                except StopIteration:
                    return None
                self.buffers = {"speech": torch.from_numpy(np.ascontiguousarray(x)).cuda(),
                                "speech_lengths": torch.from_numpy(lens.astype(np.int32)).cuda()}
                return [int(self.buffers[n].data_ptr()) for n in names]

            def read_calibration_cache(self):
                if os.path.exists(cache_path):
                    with open(cache_path, "rb") as f:
                        return f.read()
                return None

            def write_calibration_cache(self, cache):
                with open(cache_path, "wb") as f:
                    f.write(cache)

        return Calib()


def _calibration_feats(wav_dir: str, settings: EngineSettings, n: int, batch: int):

    fb = Fbank(settings.fbank)
    files = sorted(glob.glob(os.path.join(wav_dir, "*.wav")))[:n]
    if not files:
        raise SystemExit(f"--calib-wavs {wav_dir}: no wavs")
    feats = [fb(read_audio(f)) for f in files]
    return [pad_feats(feats[i:i + batch]) for i in range(0, len(feats), batch)]


def build_engine(trt, onnx_path: str, plan_path: str, shapes: Dict, pinned: List[str], a,
                 timing_cache, calib=None) -> Dict:
    logger = trt.Logger(trt.Logger.INFO if a.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SystemExit(f"{onnx_path}: TensorRT's ONNX parser failed: {errs[:3]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, a.workspace_gb << 30)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in shapes.items():
        profile.set_shape(name, mn, opt, mx)
    config.add_optimization_profile(profile)
    pinned_layers = 0
    if a.fp16 or a.int8:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned_set = set(pinned)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            # the ONNX parser names layers after their nodes (possibly with a suffix)
            if layer.name in pinned_set or layer.name.split(" ")[0] in pinned_set or \
                    any(layer.name.startswith(p + "_") for p in pinned_set):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float32, trt.float16):
                        layer.set_output_type(j, trt.float32)
                pinned_layers += 1
    if a.int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calib
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SystemExit(f"TensorRT failed to build {plan_path} (rerun with --verbose)")
    with open(plan_path, "wb") as f:
        f.write(serialized)
    io = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io.append({"name": t.name, "io": "input", "dtype": str(t.dtype), "shape": list(t.shape)})
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io.append({"name": t.name, "io": "output", "dtype": str(t.dtype), "shape": list(t.shape)})
    return {"plan": os.path.basename(plan_path), "io": io, "pinned_fp32_layers": pinned_layers,
            "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
            "fp16": bool(a.fp16 or a.int8), "int8": bool(a.int8)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export-dir", required=True, help="output of `wenet-triton export`")
    p.add_argument("--out", default=None, help="where plans go (default: the export dir)")
    p.add_argument("--profiles", help="YAML: {encoder: {batch: [min,opt,max], frames: [...]}, decoder: {...}}")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--int8", action="store_true", help="INT8 with entropy calibration (TensorRT 10)")
    p.add_argument("--calib-wavs", help="wav dir for INT8 calibration")
    p.add_argument("--calib-count", type=int, default=200)
    p.add_argument("--fp32-layers", nargs="*", default=[], help="extra node-name regexes to keep in FP32")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin .so files to load")
    p.add_argument("--plugin-nodes", action="store_true",
                   help="rewrite the graphs with plugin nodes first (WenetAddLayerNorm, "
                   "WenetGluDwConv, WenetLogSoftmaxTopK; needs --plugins libwenet_trt_plugins.so)")
    p.add_argument("--attention-plugin", action="store_true",
                   help="with --plugin-nodes, the encoder's self-attention -> WenetRelPosAttention too "
                   "(exact; slower than the unfused math at long inputs on an H200, so opt-in)")
    p.add_argument("--workspace-gb", type=int, default=8)
    p.add_argument("--timing-cache", default=None, help="default: <out>/timing.cache")
    p.add_argument("--plan-only", action="store_true", help="print profiles and FP32 pins; no TensorRT")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)


    settings = EngineSettings.load(a.export_dir)
    profs = dict(DEFAULT_PROFILES)
    if a.profiles:
        with open(a.profiles) as f:
            profs.update(yaml.safe_load(f) or {})
    if a.plugin_nodes and not (a.plugins or a.plan_only):
        raise SystemExit("--plugin-nodes needs --plugins libwenet_trt_plugins.so (csrc/build.sh trt)")
    out = a.out or a.export_dir
    os.makedirs(out, exist_ok=True)
    sources = {k: os.path.join(a.export_dir, f"{k}.onnx") for k in ("encoder", "decoder")}
    if a.plugin_nodes:  # graph passes + plugin nodes (wenet_triton/trt/graph_passes.py)

        for kind, src in sources.items():
            model, rep = graph_passes.optimize(onnx.load(src), plugin_nodes=True,
                                               attention_plugin=a.attention_plugin)
            sources[kind] = os.path.join(out, f"{kind}.plugins.onnx")
            onnx.save(model, sources[kind])
            print(f"{kind}: {rep['nodes_before']} -> {rep['nodes_after']} nodes, plugin nodes "
                  f"{rep.get('add_layernorm_plugins', 0)} WenetAddLayerNorm, "
                  f"{rep.get('conv_module_plugins', 0)} WenetGluDwConv, "
                  f"{rep.get('log_softmax_topk_plugins', 0)} WenetLogSoftmaxTopK, "
                  f"{rep.get('attention_plugins', 0)} attention", flush=True)
    plan = {}
    for kind in ("encoder", "decoder"):
        onnx_path = sources[kind]
        plan[kind] = {"shapes": profile_shapes(kind, profs[kind], settings),
                      "fp32_nodes": fp32_nodes(onnx_path, a.fp32_layers) if (a.fp16 or a.int8) else []}
    if a.plan_only:
        print(json.dumps({k: {"shapes": {n: [list(s) for s in v] for n, v in d["shapes"].items()},
                              "fp32_nodes": len(d["fp32_nodes"])} for k, d in plan.items()}, indent=1))
        return plan
    try:
        import tensorrt as trt
    except ImportError:
        raise SystemExit("TensorRT is not installed: run this inside NVIDIA's Triton/TensorRT image "
                         "(Dockerfile.triton), or use --plan-only to inspect the build plan")
    if a.int8 and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise SystemExit(f"TensorRT {trt.__version__} has no implicit INT8 calibration; "
                         "quantize explicitly (Q/DQ) instead")
    if a.int8 and not a.calib_wavs:
        raise SystemExit("--int8 needs --calib-wavs (real audio for calibration)")
    for lib in a.plugins:
        trt.get_plugin_registry().load_library(lib)
    cache_path = a.timing_cache or os.path.join(out, "timing.cache")
    logger = trt.Logger(trt.Logger.WARNING)
    cfg0 = trt.Builder(logger).create_builder_config()
    blob = open(cache_path, "rb").read() if os.path.exists(cache_path) else b""
    timing_cache = cfg0.create_timing_cache(blob)
    report = {}
    for kind in ("encoder", "decoder"):
        calib = None
        if a.int8 and kind == "encoder":
            feats = _calibration_feats(a.calib_wavs, settings, a.calib_count, 1)
            calib = _Calibrator.make(trt, feats, os.path.join(out, "encoder_int8.cache"))
        print(f"building {kind}: {len(plan[kind]['fp32_nodes'])} ONNX nodes pinned to FP32", flush=True)
        ak = argparse.Namespace(**vars(a))
        ak.int8 = a.int8 and kind == "encoder"  # the decoder stays FP16 (no calibration data)
        report[kind] = build_engine(trt, sources[kind],
                                    os.path.join(out, f"{kind}.plan"), plan[kind]["shapes"],
                                    plan[kind]["fp32_nodes"], ak, timing_cache, calib)
    with open(cache_path, "wb") as f:
        f.write(memoryview(timing_cache.serialize()))
    with open(os.path.join(out, "trt_engines.json"), "w") as f:
        json.dump({"tensorrt": trt.__version__, "engines": report}, f, indent=2)
    print(f"wrote {out}/encoder.plan, decoder.plan, trt_engines.json")
    return report


if __name__ == "__main__":
    main()
