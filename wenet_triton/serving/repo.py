"""Render the Triton model repository from the templates (package data) for one model + engine."""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from string import Template
from typing import Dict, Optional

import yaml

from wenet_triton.contract import CONFIG_NAME, REPO_ENGINES, EngineSettings
from wenet_triton.decode.options import Decoding, resolve
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.paths import templates_dir

log = logging.getLogger(__name__)

MODELS = ("feature_extractor", "encoder", "decoder", "scoring", "attention_rescoring")
# cpu: feature_extractor per request; cuda: feature_extractor batched on the GPU;
# encoder: fbank batched inside the encoder model's process (one GPU process, no extra hop)
FEATURE_DEVICES = ("cpu", "cuda", "encoder")
# ensemble: the models above; fused: one python model `fused` does it all (attention_rescoring
# is then an ensemble of that one step, so clients see the same model and I/O)
PIPELINES = ("ensemble", "fused")
FUSED_MODELS = ("fused", "attention_rescoring")


def _merge(base: Dict, over: Dict) -> Dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_serving_config(path: Optional[str] = None, overrides: Optional[Dict] = None) -> Dict:
    with open(os.path.join(templates_dir(), "serving.yaml")) as f:
        cfg = yaml.safe_load(f)
    if path:
        with open(path) as f:
            cfg = _merge(cfg, yaml.safe_load(f) or {})
    return _merge(cfg, overrides or {})


def _batching(m: Dict, max_batch: int) -> str:
    sizes = [s for s in m.get("preferred_batch_sizes", []) if s <= max_batch]
    pref = f"  preferred_batch_size: [ {', '.join(map(str, sizes))} ]\n" if sizes else ""
    return ("dynamic_batching {\n" + pref
            + f"  max_queue_delay_microseconds: {int(m.get('max_queue_delay_us', 1000))}\n}}")


def _instances(m: Dict) -> str:
    return f"instance_group [ {{ count: {int(m.get('instances', 1))} kind: {m.get('kind', 'KIND_CPU')} }} ]"


def _engine_params(engine: str, cfg: Dict) -> str:
    e = cfg.get("engine", {})
    dtype = e.get("dtype") or ("float16" if engine == "torch_cuda" else "")
    params = {"engine": engine, "threads": str(e.get("threads", 0)), "dtype": dtype,
              "device": "cuda" if engine == "torch_cuda" else e.get("device", "cpu")}
    return _pbtxt_params(params)


def _pbtxt_params(params: Dict) -> str:
    """config.pbtxt `parameters` entries (string values) for a python model."""
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                     for k, v in params.items())


def _frontend_values(fused: bool, input_dim: int, min_frames: int, cfg: Dict) -> Dict[str, str]:
    """Template values that route WAV through feature_extractor, or straight to the encoder."""
    wav_map = ('      input_map { key: "WAV" value: "WAV" }\n'
               '      input_map { key: "WAV_LENS" value: "WAV_LENS" }\n')
    if fused:
        params = {"frontend": "fbank", "fbank_impl": cfg.get("feature_impl") or "knf",
                  "max_audio_seconds": cfg.get("max_audio_seconds", 60), "min_frames": min_frames,
                  "accept_int16_range": _flag(cfg.get("accept_int16_range"))}
        return {
            "frontend_step": "",
            "encoder_input_map": wav_map,
            "encoder_inputs": ('  { name: "WAV" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true },\n'
                               '  { name: "WAV_LENS" data_type: TYPE_INT32 dims: [ 1 ] }'),
            "encoder_frontend_parameters": _pbtxt_params(params),
        }
    return {
        "frontend_step": ('    {\n      model_name: "feature_extractor"\n      model_version: -1\n'
                          + wav_map + '      output_map { key: "speech" value: "SPEECH" }\n'
                          '      output_map { key: "speech_lengths" value: "SPEECH_LENGTHS" }\n    },\n'),
        "encoder_input_map": ('      input_map { key: "speech" value: "SPEECH" }\n'
                              '      input_map { key: "speech_lengths" value: "SPEECH_LENGTHS" }\n'),
        "encoder_inputs": (f'  {{ name: "speech" data_type: TYPE_FP32 dims: [ -1, {input_dim} ] '
                           'allow_ragged_batch: true },\n'
                           '  { name: "speech_lengths" data_type: TYPE_INT32 dims: [ 1 ] }'),
        "encoder_frontend_parameters": "",
    }


def build_repo(model_dir: str, out: str, engine: str = "onnxruntime",
               config: Optional[str] = None, overrides: Optional[Dict] = None,
               engine_dir: Optional[str] = None, ctc_weight: Optional[float] = None,
               reverse_weight: Optional[float] = None, decoding: Optional[Decoding] = None) -> str:
    """Export (if needed) and write a complete Triton repository to `out`.
    decoding: beam and LM (default: the model's decoding.yaml); a serving config's
    beam_size wins over it."""
    if engine not in REPO_ENGINES:
        raise ValueError(f"engine {engine!r} not available for the model repository "
                         f"({', '.join(REPO_ENGINES)})")
    cfg = load_serving_config(config, overrides)
    decoding = decoding or resolve(model_dir)
    beam = int(cfg.get("beam_size") or decoding.beam_size)
    engine_dir = engine_dir or ensure_export(model_dir, None, beam, ctc_weight, reverse_weight)
    settings = EngineSettings.load(engine_dir)
    if settings.beam_size != beam:
        raise ValueError(f"engine dir beam_size {settings.beam_size} != serving beam_size {beam}")
    max_batch = int(cfg["max_batch_size"])
    fe_device = cfg.get("feature_device") or "cpu"
    if fe_device not in FEATURE_DEVICES:
        raise ValueError(f"feature_device {fe_device!r}: use one of {', '.join(FEATURE_DEVICES)}")
    if fe_device == "encoder" and engine == "tensorrt":
        # a TensorRT plan takes features: keep the feature_extractor model (CPU fbank)
        log.warning("feature_device: encoder needs a python encoder model; with tensorrt "
                    "the feature_extractor computes fbank on the CPU instead")
        fe_device = "cpu"
    fused = fe_device == "encoder"  # fbank inside the encoder's process
    min_frames = settings.right_context + 1
    values = {
        "max_batch_size": max_batch, "input_dim": settings.input_dim,
        "output_size": settings.output_size, "vocab_size": settings.vocab_size,
        "beam_size": beam, "max_audio_seconds": cfg.get("max_audio_seconds", 60),
        "min_frames": min_frames,
        "max_batch_audio_seconds": cfg.get("max_batch_audio_seconds") or 0,
        "accept_int16_range": _flag(cfg.get("accept_int16_range")),
        # cuda: one batched torch fbank per dynamic batch on the GPU. Measured on an H200 it
        # was slower than CPU fbank (another process time-sliced on the GPU), so opt-in.
        "fe_device": fe_device,
        "fe_impl": cfg.get("feature_impl") or "knf",
        **_frontend_values(fused, settings.input_dim, min_frames, cfg),
        "engine_parameters": _engine_params(engine, cfg),
        "scoring_parameters": _scoring_params(decoding),
        "reverse_input": ("  { name: \"r_hyps_pad_sos_eos\" data_type: TYPE_INT64 dims: "
                          f"[ {beam}, -1 ] allow_ragged_batch: true }},\n"
                          if settings.decoder_has_reverse_input else ""),
        "reverse_input_trt": ("  { name: \"r_hyps_pad_sos_eos\" data_type: TYPE_INT64 dims: "
                              f"[ {beam}, -1 ] }},\n" if settings.decoder_has_reverse_input else ""),
        # TensorRT batches only equal shapes: the feature extractor pads each dynamic batch
        "fe_pad": "true" if engine == "tensorrt" or cfg.get("feature_pad_batch") else "false",
    }
    if _pipeline(cfg, engine) == "fused":
        return _build_fused(model_dir, out, engine, engine_dir, cfg, decoding, beam, values)
    tdir = templates_dir()
    if os.path.exists(out):
        shutil.rmtree(out)
    for name in MODELS:
        if fused and name == "feature_extractor":
            continue
        m = cfg.get("models", {}).get(name, {})
        v = dict(values, dynamic_batching=_batching(m, max_batch), instance_group=_instances(m))
        tmpl = os.path.join(tdir, name, "config.pbtxt.tmpl")
        if engine == "tensorrt" and name in ("encoder", "decoder"):
            tmpl = os.path.join(tdir, name, "config.tensorrt.pbtxt.tmpl")
        with open(tmpl) as f:
            text = Template(f.read()).substitute(v)
        vdir = os.path.join(out, name, "1")
        os.makedirs(vdir)
        with open(os.path.join(out, name, "config.pbtxt"), "w") as f:
            f.write(text)
        src = os.path.join(tdir, name, "1", "model.py")
        if os.path.exists(src) and not (engine == "tensorrt" and name in ("encoder", "decoder")):
            shutil.copyfile(src, os.path.join(vdir, "model.py"))
        if name != "attention_rescoring":  # every python model reads the settings
            shutil.copyfile(os.path.join(engine_dir, CONFIG_NAME), os.path.join(vdir, CONFIG_NAME))
    if engine == "tensorrt":  # plans from `wenet-triton build --engine tensorrt`
        for name in ("encoder", "decoder"):
            plan = os.path.join(engine_dir, f"{name}.plan")
            if not os.path.exists(plan):
                raise FileNotFoundError(f"{plan} not found: run `wenet-triton build --engine tensorrt "
                                        f"--out {engine_dir}` on the serving GPU first")
            _link(plan, os.path.join(out, name, "1", "model.plan"))
    elif engine == "onnxruntime":
        _link(os.path.join(engine_dir, "encoder.onnx"), os.path.join(out, "encoder", "1", "encoder.onnx"))
        _link(os.path.join(engine_dir, "decoder.onnx"), os.path.join(out, "decoder", "1", "decoder.onnx"))
    else:  # torch engines load the checkpoint itself: ship it inside the repository
        for name in ("encoder", "decoder"):
            mdir = os.path.join(out, name, "1", "model")
            os.makedirs(mdir)
            for f in os.listdir(model_dir):
                src = os.path.join(model_dir, f)
                if os.path.isfile(src) and (f in ("train.yaml", "final.pt", "global_cmvn")
                                            or f.endswith(".txt")):
                    _link(src, os.path.join(mdir, f))
    shutil.copyfile(os.path.join(engine_dir, "units.txt"), os.path.join(out, "scoring", "1", "units.txt"))
    if decoding.lm:  # the scoring model reads it from its version dir
        _link(decoding.lm, os.path.join(out, "scoring", "1", _lm_name(decoding.lm)))
    with open(os.path.join(out, "serving.json"), "w") as f:
        json.dump({"model_dir": os.path.abspath(model_dir), "engine": engine,
                   "engine_dir": os.path.abspath(engine_dir), "config": cfg,
                   "decoding": dict(decoding.as_dict(), beam_size=beam)}, f, indent=2)
    log.info("wrote Triton repository %s (engine %s, max batch %d)", out, engine, max_batch)
    return out


def _flag(value) -> str:
    """A YAML boolean as a config.pbtxt string parameter."""
    return "true" if str(value).lower() in ("true", "1", "yes") else "false"


def _lm_name(path: str) -> str:
    return "lm.arpa.gz" if path.endswith(".gz") else "lm.arpa"


def _scoring_params(decoding: Decoding) -> str:
    """The scoring model's LM parameters (none without an LM)."""
    if not decoding.lm:
        return ""
    params = {"lm_file": _lm_name(decoding.lm), "lm_weight": decoding.lm_weight,
              "lm_rescore_weight": decoding.lm_rescore_weight, "length_bonus": decoding.length_bonus}
    return _pbtxt_params(params)


def _link(src: str, dst: str):
    """Hard-link big artifacts when on one filesystem, else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _pipeline(cfg: Dict, engine: str) -> str:
    pipeline = cfg.get("pipeline") or "ensemble"
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}")
    if pipeline == "fused" and engine == "tensorrt":
        # plans are served by Triton's TensorRT backend, not by a python model
        log.warning("pipeline: fused needs a python engine; with tensorrt the ensemble is served")
        return "ensemble"
    return pipeline


def _build_fused(model_dir: str, out: str, engine: str, engine_dir: str, cfg: Dict,
                 decoding: Decoding, beam: int, values: Dict) -> str:
    """`pipeline: fused`: the `fused` python model (fbank, encoder, search with the LM,
    rescoring, text in one process) and `attention_rescoring` as its one-step ensemble."""
    tdir = templates_dir()
    if os.path.exists(out):
        shutil.rmtree(out)
    m = cfg.get("models", {}).get("fused", {})
    max_batch = int(cfg["max_batch_size"])
    fe_device = cfg.get("feature_device") or "cpu"
    params = {"fbank_impl": cfg.get("feature_impl") or "knf",
              # cpu: per-request CPU fbank; cuda/encoder: batched on the engine's device (GPU)
              "fbank_device": "cpu" if fe_device == "cpu" else "engine",
              "search_threads": int(m.get("search_threads", 2)),
              "max_inflight": int(m.get("max_inflight", 2)),
              "async_responses": _flag(m.get("async_responses", True)),
              "rescore_batch": max_batch}
    v = dict(values, dynamic_batching=_batching(m, max_batch), instance_group=_instances(m),
             fused_parameters=_pbtxt_params(params))
    for name, tmpl in (("fused", "config.pbtxt.tmpl"), ("attention_rescoring", "config.fused.pbtxt.tmpl")):
        with open(os.path.join(tdir, name, tmpl)) as f:
            text = Template(f.read()).substitute(v)
        os.makedirs(os.path.join(out, name, "1"))
        with open(os.path.join(out, name, "config.pbtxt"), "w") as f:
            f.write(text)
    vdir = os.path.join(out, "fused", "1")
    shutil.copyfile(os.path.join(tdir, "fused", "1", "model.py"), os.path.join(vdir, "model.py"))
    for f in (CONFIG_NAME, "units.txt"):
        shutil.copyfile(os.path.join(engine_dir, f), os.path.join(vdir, f))
    if engine == "onnxruntime":
        for part in ("encoder", "decoder"):
            _link(os.path.join(engine_dir, f"{part}.onnx"), os.path.join(vdir, f"{part}.onnx"))
    else:  # torch engines load the checkpoint itself
        mdir = os.path.join(vdir, "model")
        os.makedirs(mdir)
        for f in os.listdir(model_dir):
            src = os.path.join(model_dir, f)
            if os.path.isfile(src) and (f in ("train.yaml", "final.pt", "global_cmvn") or f.endswith(".txt")):
                _link(src, os.path.join(mdir, f))
    if decoding.lm:
        _link(decoding.lm, os.path.join(vdir, _lm_name(decoding.lm)))
    with open(os.path.join(out, "serving.json"), "w") as f:
        json.dump({"model_dir": os.path.abspath(model_dir), "engine": engine,
                   "engine_dir": os.path.abspath(engine_dir), "config": cfg, "pipeline": "fused",
                   "decoding": dict(decoding.as_dict(), beam_size=beam)}, f, indent=2)
    log.info("wrote Triton repository %s (engine %s, pipeline fused, max batch %d)", out, engine, max_batch)
    return out
