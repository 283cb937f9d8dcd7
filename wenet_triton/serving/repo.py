"""Render the Triton model repository from the templates (package data) for one model + engine."""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from string import Template
from typing import Dict, List, Optional

import yaml

from wenet_triton.contract import CONFIG_NAME, REPO_ENGINES, EngineSettings
from wenet_triton.decode.options import Decoding, resolve
from wenet_triton.engines.artifacts import ensure_export
from wenet_triton.engines.streaming import STREAMING_CONFIG_NAME, STREAMING_ONNX_NAME, ensure_chunk_export
from wenet_triton.model.checkpoint import CheckpointError, load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import check_streamable
from wenet_triton.paths import templates_dir

log = logging.getLogger(__name__)

MODELS = ("feature_extractor", "encoder", "decoder", "scoring", "attention_rescoring")
STREAMING_MODEL = "streaming"  # sequence-batched chunk-by-chunk recognition, beside the ensemble
# cpu: feature_extractor per request; cuda: feature_extractor batched on the GPU;
# encoder: fbank batched inside the encoder model's process (one GPU process, no extra hop)
FEATURE_DEVICES = ("cpu", "cuda", "encoder")
# ensemble: the models above; fused: one python model does it all, served as
# `attention_rescoring` itself (models.fused.entry direct) or as `fused` behind a one-step
# `attention_rescoring` ensemble (entry ensemble); clients see the same model and I/O either way
PIPELINES = ("ensemble", "fused")
FUSED_ENTRIES = ("direct", "ensemble")


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


def _instances(m: Dict, gpus: Optional[List[int]] = None) -> str:
    """instance_group; with gpus: `instances` instances on each of those GPUs (KIND_GPU)."""
    if gpus:
        return (f"instance_group [ {{ count: {int(m.get('instances', 1))} kind: KIND_GPU "
                f"gpus: [ {', '.join(map(str, gpus))} ] }} ]")
    return f"instance_group [ {{ count: {int(m.get('instances', 1))} kind: {m.get('kind', 'KIND_CPU')} }} ]"


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without a GPU or a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(value) -> Optional[List[int]]:
    """The `gpus` setting (serving.yaml key, `--gpus`): "0,1" or [0, 1] (CUDA device ids),
    "all" (every GPU visible here), None/""/[]: not set (one device, as without it)."""
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        return None
    if isinstance(value, str) and value.strip().lower() == "all":
        n = visible_gpus()
        if n == 0:
            raise ValueError("gpus all: no CUDA GPU is visible here (torch.cuda.device_count() is 0: "
                             "check the driver, CUDA_VISIBLE_DEVICES and that torch is a CUDA build)")
        return list(range(n))
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else value
    ids = []
    for x in items:
        t = str(x).strip()
        if isinstance(x, bool) or not t.isdigit():
            raise ValueError(f"gpus {value!r}: {t!r} is not a device id (give ids like 0,1 or all)")
        if int(t) in ids:
            raise ValueError(f"gpus {value!r}: device {int(t)} listed twice")
        ids.append(int(t))
    return ids


def _gpu_models(engine: str, cfg: Dict, fe_device: str) -> List[str]:
    """The python models that run on a CUDA device (their `device` parameter says cuda)."""
    names = ["encoder", "decoder"] if engine == "torch_cuda" or (
        engine == "torch" and cfg.get("engine", {}).get("device") == "cuda") else []
    return names + (["feature_extractor"] if fe_device == "cuda" else [])


def _multi_gpus(gpus: Optional[List[int]], engine: str, gpu_models: List[str]) -> Optional[List[int]]:
    """The GPUs to spread the GPU models over; None when the rendering stays as without
    `gpus` (not set, or just device 0: the cuda models already run there)."""
    if gpus and not gpu_models and engine != "tensorrt":
        log.warning("gpus %s: no model runs on a GPU with engine %s (use torch_cuda); ignored",
                    gpus, engine)
    return None if not gpus or gpus == [0] else gpus


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
    streaming_config(cfg)  # a bad streaming section fails before any export
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
    gpu_ids, gpu_models = parse_gpus(cfg.get("gpus")), _gpu_models(engine, cfg, fe_device)
    gpus = _multi_gpus(gpu_ids, engine, gpu_models)
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
        # the fused model runs the engine: on each listed GPU when the engine is a GPU one
        return _build_fused(model_dir, out, engine, engine_dir, cfg, decoding, beam, values,
                            gpus if "encoder" in gpu_models else None)
    tdir = templates_dir()
    if os.path.exists(out):
        shutil.rmtree(out)
    for name in MODELS:
        if fused and name == "feature_extractor":
            continue
        m = cfg.get("models", {}).get(name, {})
        v = dict(values, dynamic_batching=_batching(m, max_batch),
                 instance_group=_instances(m, gpus if name in gpu_models else None))
        tmpl = os.path.join(tdir, name, "config.pbtxt.tmpl")
        if engine == "tensorrt" and name in ("encoder", "decoder"):
            tmpl = os.path.join(tdir, name, "config.tensorrt.pbtxt.tmpl")
            # one instance per GPU: every visible one, or those of `gpus` (even just [0])
            v["instance_group"] = _instances({"instances": 1, "kind": "KIND_GPU"}, gpu_ids)
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
            _ship_checkpoint(model_dir, os.path.join(out, name, "1", "model"))
    shutil.copyfile(os.path.join(engine_dir, "units.txt"), os.path.join(out, "scoring", "1", "units.txt"))
    if decoding.lm:  # the scoring model reads it from its version dir
        _link(decoding.lm, os.path.join(out, "scoring", "1", _lm_name(decoding.lm)))
    stream = _render_streaming(model_dir, out, engine, engine_dir, cfg, values, decoding)
    with open(os.path.join(out, "serving.json"), "w") as f:
        json.dump({"model_dir": os.path.abspath(model_dir), "engine": engine,
                   "engine_dir": os.path.abspath(engine_dir), "config": cfg,
                   "decoding": dict(decoding.as_dict(), beam_size=beam), "streaming": stream},
                  f, indent=2)
    log.info("wrote Triton repository %s (engine %s, max batch %d)", out, engine, max_batch)
    return out


def _ship_checkpoint(model_dir: str, mdir: str):
    """The checkpoint files the torch engines load, linked into a model's version dir."""
    os.makedirs(mdir)
    for f in os.listdir(model_dir):
        src = os.path.join(model_dir, f)
        if os.path.isfile(src) and (f in ("train.yaml", "final.pt", "global_cmvn") or f.endswith(".txt")):
            _link(src, os.path.join(mdir, f))


def streaming_config(cfg: Dict) -> Dict:
    """The serving config's `streaming` section, checked (a finite cache, sane limits)."""
    st = dict(cfg.get("streaming") or {})
    st.setdefault("enabled", "auto")
    out = {"enabled": str(st["enabled"]).lower(), "chunk_size": int(st.get("chunk_size", 16)),
           "left_chunks": int(st.get("left_chunks", 4)), "max_streams": int(st.get("max_streams", 64)),
           "idle_seconds": float(st.get("idle_seconds", 30)),
           "max_chunk_seconds": float(st.get("max_chunk_seconds", 2)),
           "max_batch_size": int(st.get("max_batch_size", 0)),
           "rescore": str(st.get("rescore", "auto")).lower(),
           "fbank": str(st.get("fbank", "auto")).lower(),
           "search_threads": int(st.get("search_threads", 1)),
           "rescore_graphs": str(st.get("rescore_graphs", True)).lower(),
           "rescore_warmup_seconds": float(st.get("rescore_warmup_seconds", 20)),
           "async_responses": str(st.get("async_responses", False)).lower(),
           "max_inflight": int(st.get("max_inflight", 2))}
    if out["async_responses"] not in ("true", "false"):
        raise ValueError(f"streaming.async_responses {st['async_responses']!r}: use true (a decoding "
                         "thread answers through response senders while Triton hands over the next "
                         "batch) or false (execute() answers its batch)")
    if out["max_inflight"] < 1:
        raise ValueError(f"streaming.max_inflight must be >= 1, got {out['max_inflight']}")
    if out["rescore_graphs"] not in ("true", "false"):
        raise ValueError(f"streaming.rescore_graphs {st['rescore_graphs']!r}: use true (CUDA graphs over "
                         "coarse shape buckets for the finals' decoder on a GPU) or false (eager)")
    if not 0 <= out["rescore_warmup_seconds"] <= 600:
        raise ValueError(f"streaming.rescore_warmup_seconds must be within 0..600 (finals up to this "
                         f"long get their decoder graphs at load; 0: none), got {out['rescore_warmup_seconds']}")
    if out["enabled"] not in ("auto", "true", "false"):
        raise ValueError(f"streaming.enabled {st['enabled']!r}: use auto, true or false")
    if out["fbank"] not in ("auto", "knf", "torch"):
        raise ValueError(f"streaming.fbank {st['fbank']!r}: use auto, knf or torch")
    if out["search_threads"] < 0:
        raise ValueError(f"streaming.search_threads must be >= 0 (0: all cores), got {out['search_threads']}")
    if out["chunk_size"] <= 0:
        raise ValueError(f"streaming.chunk_size must be > 0, got {out['chunk_size']}")
    if out["left_chunks"] <= 0:
        raise ValueError(f"streaming.left_chunks must be > 0 (the served attention cache is finite: "
                         f"left_chunks x chunk_size frames), got {out['left_chunks']}")
    for k in ("max_streams", "idle_seconds", "max_chunk_seconds"):
        if out[k] <= 0:
            raise ValueError(f"streaming.{k} must be > 0, got {out[k]}")
    if out["max_batch_size"] < 0:
        raise ValueError(f"streaming.max_batch_size must be >= 0 (0: the serving max_batch_size), "
                         f"got {out['max_batch_size']}")
    if out["rescore"] not in ("auto", "local", "bls"):
        raise ValueError(f"streaming.rescore {st['rescore']!r}: use auto, local (the decoder in the "
                         "streaming instance) or bls (a call to the `decoder` model)")
    return out


def _render_streaming(model_dir: str, out: str, engine: str, engine_dir: str, cfg: Dict,
                      values: Dict, decoding: Decoding) -> Optional[Dict]:
    """The `streaming` model beside the ensemble when the checkpoint can stream (else a log
    line and None: the ensemble is served alone). Chunk encoder: the onnxruntime chunk export
    (exported once into engine_dir) with engine onnxruntime; on torch_cuda and tensorrt hosts
    the GPU engine's chunk encoder (`torch_cuda`: engine.dtype, float16 by default; the
    streams' caches stay on the GPU); with engine torch the PyTorch model on its device.
    Fbank (`streaming.fbank`): knf per stream on the CPU, or torch batched over a batch's
    streams on the chunk encoder's device (auto: torch where that is a GPU, else knf)."""
    st = streaming_config(cfg)
    if st["enabled"] == "false":
        return None
    try:
        spec = load_model_dir(model_dir)
        check_streamable(spec)
    except CheckpointError as e:
        if st["enabled"] == "true":
            raise
        log.warning("serving without the `%s` model (chunk-by-chunk recognition): %s",
                    STREAMING_MODEL, e)
        return None
    e = cfg.get("engine", {})
    params = {}
    if engine == "onnxruntime":
        chunk_engine, device = "onnxruntime", "cpu"
    elif engine in ("torch_cuda", "tensorrt"):  # the GPU engine's chunk forward, caches on the GPU
        chunk_engine, device = "torch_cuda", "cuda"
        params["dtype"] = e.get("dtype") or "float16"
    else:
        chunk_engine, device = "torch", e.get("device", "cpu")
    fbank = st["fbank"]
    if fbank == "auto":
        fbank = "torch" if device.startswith("cuda") else "knf"
    # "cuda": the instance's GPU, where the model puts the torch chunk encoder
    fe_device = "cuda" if fbank == "torch" and device.startswith("cuda") else "cpu"
    m = cfg.get("models", {}).get(STREAMING_MODEL, {})
    max_batch = st["max_batch_size"] or int(values["max_batch_size"])
    # the final transcript's attention rescoring: in the instance on a GPU (no BLS hop on the
    # chunk path), else a BLS call to the shared `decoder` model
    rescore = st["rescore"] if st["rescore"] != "auto" else ("local" if device.startswith("cuda") else "bls")
    sizes = [x for x in m.get("preferred_batch_sizes", []) if x <= max_batch]
    v = dict(values, **{k: st[k] for k in ("chunk_size", "left_chunks", "max_streams",
                                           "idle_seconds", "max_chunk_seconds")})
    v.update(
        max_batch_size=max_batch, decoder_max_batch=int(values["max_batch_size"]),
        idle_us=int(st["idle_seconds"] * 1e6),
        # Triton queues sequences beyond its candidates; the model refuses beyond max_streams,
        # so give Triton room for the refused ones (they hold a slot until END or idle timeout)
        max_candidates=2 * st["max_streams"] * max(1, int(m.get("instances", 1))),
        preferred_batch=(f"    preferred_batch_size: [ {', '.join(map(str, sizes))} ]\n" if sizes else ""),
        queue_delay_us=int(m.get("max_queue_delay_us", 2000)),
        instance_group=_instances(m),
        engine_parameters=_pbtxt_params(dict({"engine": chunk_engine, "device": device,
                                              "threads": str(e.get("threads", 0)),
                                              "rescore": rescore, "fbank": fbank,
                                              "feature_device": fe_device,
                                              "search_threads": st["search_threads"],
                                              "rescore_graphs": st["rescore_graphs"],
                                              "rescore_warmup_seconds": st["rescore_warmup_seconds"],
                                              "async_responses": st["async_responses"],
                                              "max_inflight": st["max_inflight"]}, **params)))
    with open(os.path.join(templates_dir(), STREAMING_MODEL, "config.pbtxt.tmpl")) as f:
        text = Template(f.read()).substitute(v)
    vdir = os.path.join(out, STREAMING_MODEL, "1")
    os.makedirs(vdir)
    with open(os.path.join(out, STREAMING_MODEL, "config.pbtxt"), "w") as f:
        f.write(text)
    shutil.copyfile(os.path.join(templates_dir(), STREAMING_MODEL, "1", "model.py"),
                    os.path.join(vdir, "model.py"))
    shutil.copyfile(os.path.join(engine_dir, CONFIG_NAME), os.path.join(vdir, CONFIG_NAME))
    shutil.copyfile(os.path.join(engine_dir, "units.txt"), os.path.join(vdir, "units.txt"))
    if decoding.lm:
        _link(decoding.lm, os.path.join(vdir, _lm_name(decoding.lm)))
    if chunk_engine == "onnxruntime":
        onnx_path = ensure_chunk_export(ASRModel.from_spec(spec), engine_dir, st["chunk_size"],
                                        st["left_chunks"], int(values["beam_size"]))
        _link(onnx_path, os.path.join(vdir, STREAMING_ONNX_NAME))
        shutil.copyfile(os.path.join(os.path.dirname(onnx_path), STREAMING_CONFIG_NAME),
                        os.path.join(vdir, STREAMING_CONFIG_NAME))
    if chunk_engine != "onnxruntime" or rescore == "local":
        _ship_checkpoint(model_dir, os.path.join(vdir, "model"))
    log.info("`%s` model: chunk %d encoder frames, %d left chunks, %s chunk encoder on %s, "
             "up to %d streams, batches of up to %d chunks, %s rescoring, fbank %s on %s",
             STREAMING_MODEL, st["chunk_size"], st["left_chunks"], chunk_engine, device,
             st["max_streams"], max_batch, rescore, fbank, fe_device)
    return dict(st, engine=chunk_engine, device=device, rescore=rescore, max_batch_size=max_batch,
                fbank=fbank, feature_device=fe_device)


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


def _warm_seconds(m: Dict, cfg: Dict) -> float:
    """models.fused.warm_graphs_seconds: within 0..max_audio_seconds (a named error otherwise)."""
    sec = float(m.get("warm_graphs_seconds", 0) or 0)
    top = float(cfg.get("max_audio_seconds", 60))
    if not 0 <= sec <= top:
        raise ValueError(f"models.fused.warm_graphs_seconds must be within 0..max_audio_seconds ({top:g}): "
                         f"the encoder graphs for requests up to this long are captured at load; got {sec:g}")
    return sec


def _build_fused(model_dir: str, out: str, engine: str, engine_dir: str, cfg: Dict,
                 decoding: Decoding, beam: int, values: Dict,
                 gpus: Optional[List[int]] = None) -> str:
    """`pipeline: fused`: one python model (fbank, encoder, search with the LM, rescoring,
    text in one process), named `attention_rescoring` (models.fused.entry direct, the
    default) or `fused` with `attention_rescoring` as its one-step ensemble (entry ensemble:
    the ensemble's scheduling cost 15 % of the throughput on an H200, 2026-12-02)."""
    tdir = templates_dir()
    m = cfg.get("models", {}).get("fused", {})
    entry = str(m.get("entry", "direct")).lower()
    if entry not in FUSED_ENTRIES:
        raise ValueError(f"models.fused.entry {m.get('entry')!r}: use direct (the fused model is "
                         "attention_rescoring) or ensemble (attention_rescoring is a one-step "
                         "ensemble of the `fused` model)")
    name = "attention_rescoring" if entry == "direct" else "fused"
    if os.path.exists(out):
        shutil.rmtree(out)
    max_batch = int(cfg["max_batch_size"])
    fe_device = cfg.get("feature_device") or "cpu"
    params = {"fbank_impl": cfg.get("feature_impl") or "knf",
              # cpu: per-request CPU fbank; cuda/encoder: batched on the engine's device (GPU)
              "fbank_device": "cpu" if fe_device == "cpu" else "engine",
              "search_device": str(m.get("search_device", "auto")),
              "search_threads": int(m.get("search_threads", 2)),
              "max_inflight": int(m.get("max_inflight", 2)),
              "async_responses": _flag(m.get("async_responses", True)),
              "stage_threads": int(m.get("stage_threads", 1)),
              "device_stage": str(m.get("device_stage", "execute")),
              "blocking_waits": _flag(m.get("blocking_waits", True)),
              # encoder CUDA graphs captured at load for requests up to this long (0: on first use)
              "warm_graphs_seconds": _warm_seconds(m, cfg),
              "rescore_batch": max_batch}
    v = dict(values, dynamic_batching=_batching(m, max_batch), instance_group=_instances(m, gpus),
             fused_parameters=_pbtxt_params(params), model_name=name)
    renders = [(name, os.path.join(tdir, "fused", "config.pbtxt.tmpl"))]
    if entry == "ensemble":
        renders.append(("attention_rescoring", os.path.join(tdir, "attention_rescoring", "config.fused.pbtxt.tmpl")))
    for model, tmpl in renders:
        with open(tmpl) as f:
            text = Template(f.read()).substitute(v)
        os.makedirs(os.path.join(out, model, "1"))
        with open(os.path.join(out, model, "config.pbtxt"), "w") as f:
            f.write(text)
    vdir = os.path.join(out, name, "1")
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
                   "fused_entry": entry,
                   "decoding": dict(decoding.as_dict(), beam_size=beam)}, f, indent=2)
    log.info("wrote Triton repository %s (engine %s, pipeline fused, max batch %d)", out, engine, max_batch)
    return out
