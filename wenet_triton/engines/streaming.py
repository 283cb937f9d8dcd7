"""The chunk encoder as an engine: per-stream state, one batched step over any streams
(torch or onnxruntime), and its ONNX export with WeNet's GPU streaming I/O (verified in
onnxruntime against torch at several batch sizes, offsets and cache fills)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch

from wenet_triton.contract import STREAMING_ENCODER_OUTPUTS, streaming_encoder_io
from wenet_triton.engines.cuda_streaming import ChunkSlot, CudaChunkBackend
from wenet_triton.engines.export import OPSET
from wenet_triton.model.checkpoint import CheckpointError
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.streaming import ChunkEncoder, _ChunkEncoderNoCnn, streaming_settings

log = logging.getLogger(__name__)


STREAMING_CONFIG_NAME = "streaming_encoder.json"


STREAMING_ONNX_NAME = "streaming_encoder.onnx"


@dataclass
class EncoderState:
    """What a stream carries from one chunk to the next (one stream; no batch dim)."""
    offset: int
    att_cache: np.ndarray   # (layers, heads, C, 2*d_k) float32, right-aligned
    cnn_cache: np.ndarray   # (layers, D, kernel-1) float32
    cache_mask: np.ndarray  # (1, C) float32

    @classmethod
    def initial(cls, settings: Dict) -> "EncoderState":
        s = settings
        c = max(s["required_cache_size"], 0)  # a finite cache starts full size, all masked
        return cls(0, np.zeros((s["num_layers"], s["attention_heads"], c, 2 * s["d_k"]), np.float32),
                   np.zeros((s["num_layers"], s["output_size"], s["cnn_module_kernel_cache"]),
                            np.float32),
                   np.zeros((1, c), np.float32))


def stack_states(states: Sequence[EncoderState]) -> Dict[str, np.ndarray]:
    """Batch the states of several streams; caches of different lengths (unlimited cache)
    are left-padded with masked frames, which the chunk encoder ignores."""
    C = max(s.att_cache.shape[2] for s in states)
    att = np.zeros((len(states),) + states[0].att_cache.shape[:2] + (C, states[0].att_cache.shape[3]),
                   np.float32)
    mask = np.zeros((len(states), 1, C), np.float32)
    for i, s in enumerate(states):
        c = s.att_cache.shape[2]
        att[i, :, :, C - c:] = s.att_cache
        mask[i, :, C - c:] = s.cache_mask
    return {"offset": np.array([[s.offset] for s in states], np.int64), "att_cache": att,
            "cnn_cache": np.stack([s.cnn_cache for s in states]).astype(np.float32, copy=False),
            "cache_mask": mask}


class TorchChunkBackend:
    """Runs `ChunkEncoder` in PyTorch (CPU or CUDA, fp32)."""
    def __init__(self, model: ASRModel, settings: Dict, device: str = "cpu"):
        self.settings = settings
        self.device = torch.device(device)
        self.module = ChunkEncoder(model.to(self.device).eval(), settings["decoding_chunk_size"],
                                   settings["num_decoding_left_chunks"],
                                   settings["beam_size"]).eval()
        self.inputs, self.outputs = streaming_encoder_io(settings)

    def run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feed[k])).to(self.device)
                    for k in ("chunk_xs", "chunk_lens", "offset", "att_cache", "cnn_cache",
                              "cache_mask")]
            outs = self.module(*args)
        return {k: v.cpu().numpy() for k, v in zip(STREAMING_ENCODER_OUTPUTS, outs)}


class OnnxChunkBackend:
    """Runs an exported streaming_encoder.onnx in onnxruntime."""
    def __init__(self, path: str, settings: Optional[Dict] = None, providers=None, threads: int = 0):
        if settings is None:
            with open(os.path.join(os.path.dirname(path), STREAMING_CONFIG_NAME)) as f:
                settings = json.load(f)
        self.settings = settings
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=providers or ["CPUExecutionProvider"])
        self.inputs, self.outputs = streaming_encoder_io(settings)

    def run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        types = {"chunk_lens": np.int32, "offset": np.int64}
        outs = self.session.run(self.outputs, {k: np.ascontiguousarray(feed[k], types.get(k, np.float32))
                                               for k in self.inputs})
        return dict(zip(self.outputs, outs))


@dataclass
class ChunkOutput:
    """The valid encoder frames one step gave one stream."""
    chunk_out: np.ndarray      # (t, D)
    log_probs: np.ndarray      # (t, beam)
    log_probs_idx: np.ndarray  # (t, beam)


class ChunkRunner:
    """One batched chunk step over any streams (each with its own state) on a backend."""
    def __init__(self, backend):
        self.backend = backend
        self.settings = backend.settings

    def initial_state(self) -> EncoderState:
        return EncoderState.initial(self.settings)

    def check_windows(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """-> their lengths; ValueError unless each has context..decoding_window frames."""
        s = self.settings
        lens = np.array([len(w) for w in windows], np.int32)
        if lens.min() < s["context"] or lens.max() > s["decoding_window"]:
            raise ValueError(f"chunk windows must have {s['context']}..{s['decoding_window']} "
                             f"frames, got {lens.tolist()}")
        return lens

    def step(self, windows: Sequence[np.ndarray], states: Sequence[EncoderState]
             ) -> Tuple[List[ChunkOutput], List[EncoderState]]:
        s = self.settings
        lens = self.check_windows(windows)
        x = np.zeros((len(windows), int(lens.max()), s["feat_size"]), np.float32)
        for i, w in enumerate(windows):
            x[i, :len(w)] = w
        feed = stack_states(states)
        feed.update(chunk_xs=x, chunk_lens=lens)
        out = self.backend.run(feed)
        results, new_states = [], []
        n = s["required_cache_size"]
        for i, st in enumerate(states):
            t = int(out["chunk_out_lens"][i])
            results.append(ChunkOutput(out["chunk_out"][i, :t], out["log_probs"][i, :t],
                                       out["log_probs_idx"][i, :t]))
            att, mask = out["r_att_cache"][i], out["r_cache_mask"][i]
            if n < 0:  # unlimited: drop this batch's left padding of shorter caches
                keep = st.att_cache.shape[2] + out["chunk_out"].shape[1]
                att, mask = att[:, :, att.shape[2] - keep:], mask[:, mask.shape[1] - keep:]
            cnn = out["r_cnn_cache"][i] if "r_cnn_cache" in out else st.cnn_cache
            new_states.append(EncoderState(int(out["r_offset"][i, 0]), att, cnn, mask))
        return results, new_states


class DeviceChunkRunner(ChunkRunner):
    """ChunkRunner over `CudaChunkBackend`: every stream's state stays on the device, so a
    state is a `ChunkSlot` handle (from `initial_state()`) rather than an `EncoderState`.
    `step(windows, states)` updates the handles in place and returns them as the new states,
    so callers that keep the returned states (`encode_chunked`, `StreamDecoder`) work
    unchanged; a state passed to step is consumed (it is the stream's next state too). A
    dropped handle frees its slot; `release(state)` frees it at once."""
    backend: CudaChunkBackend

    def initial_state(self) -> ChunkSlot:
        return self.backend.initial_state()

    def step(self, windows: Sequence[np.ndarray], states: Sequence[ChunkSlot]
             ) -> Tuple[List[ChunkOutput], List[ChunkSlot]]:
        if not len(windows):
            return [], []
        self.check_windows(windows)
        outs = self.backend.step(windows, states)
        return [ChunkOutput(*o) for o in outs], list(states)

    def release(self, state: ChunkSlot) -> None:
        self.backend.release(state)

    def load(self, state: EncoderState) -> ChunkSlot:
        """A device state holding `state` (its cache must have the backend's length)."""
        return self.backend.load_state(state.offset, state.att_cache, state.cnn_cache,
                                       state.cache_mask)

    def read(self, state: ChunkSlot) -> EncoderState:
        """The device state as an `EncoderState` (float32 copies; tests, debugging)."""
        return EncoderState(*self.backend.read_state(state))


def encode_chunked(runner: ChunkRunner, windows: Sequence[Sequence[np.ndarray]]
                   ) -> Dict[str, np.ndarray]:
    """WeNet's forward_chunk_by_chunk for several utterances at once (their chunks in
    lockstep, one batched step per chunk index) -> the encoder dict the search and rescoring
    take: encoder_out (B,T',D) zero-padded, encoder_out_lens, beam_log_probs(_idx)."""
    states = [runner.initial_state() for _ in windows]
    pieces: List[List[ChunkOutput]] = [[] for _ in windows]
    for k in range(max((len(w) for w in windows), default=0)):
        active = [i for i, w in enumerate(windows) if len(w) > k]
        outs, new = runner.step([windows[i][k] for i in active], [states[i] for i in active])
        for i, o, st in zip(active, outs, new):
            pieces[i].append(o)
            states[i] = st
    s = runner.settings
    lens = np.array([sum(len(o.chunk_out) for o in p) for p in pieces], np.int32)
    T = max(int(lens.max()) if len(lens) else 0, 1)
    B, beam = len(windows), s["beam_size"]
    enc = {"encoder_out": np.zeros((B, T, s["output_size"]), np.float32),
           "encoder_out_lens": lens,
           "beam_log_probs": np.zeros((B, T, beam), np.float32),
           "beam_log_probs_idx": np.zeros((B, T, beam), np.int64)}
    for b, p in enumerate(pieces):
        if p:
            n = lens[b]
            enc["encoder_out"][b, :n] = np.concatenate([o.chunk_out for o in p])
            enc["beam_log_probs"][b, :n] = np.concatenate([o.log_probs for o in p])
            enc["beam_log_probs_idx"][b, :n] = np.concatenate([o.log_probs_idx for o in p])
    return enc


def _dummy_chunk_inputs(settings: Dict, batch: int, cache_t: int, frames: Optional[int] = None,
                        seed: int = 0, offsets=None):
    g = torch.Generator().manual_seed(seed)
    s = settings
    T = frames or s["decoding_window"]
    x = torch.randn(batch, T, s["feat_size"], generator=g) * 3 + 10
    lens = torch.full((batch,), T, dtype=torch.int32)
    if batch > 1:
        lens[-1] = max(s["context"], T - 5)  # a shorter last chunk, padded
    off = torch.tensor(offsets if offsets is not None else
                       [cache_t + i * s["decoding_chunk_size"] for i in range(batch)],
                       dtype=torch.int64)[:, None]
    att = torch.randn(batch, s["num_layers"], s["attention_heads"], cache_t, 2 * s["d_k"],
                      generator=g)
    cnn = torch.randn(batch, s["num_layers"], s["output_size"], s["cnn_module_kernel_cache"],
                      generator=g)
    mask = torch.ones(batch, 1, cache_t)
    if batch > 1 and cache_t:
        mask[0, :, : cache_t // 2] = 0  # a stream whose cache is not full yet
    return x, lens, off, att, cnn, mask


def export_chunk_encoder(model: ASRModel, out_dir: str, chunk_size: int, left_chunks: int,
                         beam_size: int = 10, verify: bool = True) -> Dict:
    """Write streaming_encoder.onnx (+ streaming_encoder.json) into out_dir: the chunk encoder
    with WeNet's GPU streaming I/O. Batch is dynamic (streams at different offsets); chunk_xs'
    time axis is dynamic too (a last, shorter window need not be padded); the cache axis is
    fixed at left_chunks * chunk frames, or dynamic with left_chunks -1 (a cache that grows)."""
    if left_chunks == 0:
        raise ValueError("export needs left chunks > 0 (a finite cache) or -1 (unlimited)")
    enc = ChunkEncoder(model, chunk_size, left_chunks, beam_size).eval()
    s = dict(enc.settings)
    ins, outs = streaming_encoder_io(s)
    cache_t = s["required_cache_size"] if s["required_cache_size"] > 0 else 3 * chunk_size
    args = _dummy_chunk_inputs(s, 3, cache_t)
    module = enc
    if not s["cnn_module_kernel_cache"]:
        module = _ChunkEncoderNoCnn(enc)
        args = args[:4] + args[5:]
    axes = {n: {0: "B"} for n in ins + outs}
    axes["chunk_xs"][1] = "T"
    for n in ("log_probs", "log_probs_idx", "chunk_out"):
        axes[n][1] = "T_OUT"
    if s["required_cache_size"] < 0:
        axes["att_cache"][3] = axes["cache_mask"][2] = "C"
        axes["r_att_cache"][3] = axes["r_cache_mask"][2] = "C_OUT"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, STREAMING_ONNX_NAME)
    log.info("exporting chunk encoder (chunk %d, left chunks %d) -> %s", chunk_size, left_chunks, path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET,
                          input_names=ins, output_names=outs, do_constant_folding=True,
                          dynamic_axes=axes)
    _static_cache_dims(path, s)
    s["input_names"], s["output_names"] = ins, outs
    with open(os.path.join(out_dir, STREAMING_CONFIG_NAME), "w") as f:
        json.dump(s, f, indent=2)
    if verify:
        s["verification"] = verify_chunk_export(model, path, s)
        with open(os.path.join(out_dir, STREAMING_CONFIG_NAME), "w") as f:
            json.dump(s, f, indent=2)
    return s


def _static_cache_dims(path: str, s: Dict) -> None:
    """The exporter leaves the sliced cache outputs' lengths symbolic; write the fixed ones
    (conv cache always, attention cache when finite) into the graph's output shapes."""
    fixed = {"r_cnn_cache": {3: s["cnn_module_kernel_cache"]}}
    if s["required_cache_size"] >= 0:
        fixed.update(r_att_cache={3: s["required_cache_size"]},
                     r_cache_mask={2: s["required_cache_size"]})
    m = onnx.load(path)
    for o in m.graph.output:
        for axis, size in fixed.get(o.name, {}).items():
            d = o.type.tensor_type.shape.dim[axis]
            d.ClearField("dim_param")
            d.dim_value = size
    onnx.save(m, path)


def verify_chunk_export(model: ASRModel, path: str, settings: Dict, tol: float = 1e-4) -> Dict:
    """onnxruntime against PyTorch at several batch sizes, offsets, cache lengths and chunk
    lengths (a length frozen at export would show up here)."""
    onnx.checker.check_model(path)
    ort_b = OnnxChunkBackend(path, settings)
    pt = TorchChunkBackend(model, settings)
    s = settings
    n = s["required_cache_size"]
    cases = [(1, n if n > 0 else 0, None, [0]), (2, n if n > 0 else 5 * s["decoding_chunk_size"], None, None),
             (5, n if n > 0 else 2 * s["decoding_chunk_size"], s["context"] + 1, [7, 0, 300, 41, 2000])]
    report = {}
    for batch, cache_t, frames, offs in cases:
        x, lens, off, att, cnn, mask = _dummy_chunk_inputs(s, batch, cache_t, frames, seed=batch,
                                                          offsets=offs)
        feed = {"chunk_xs": x.numpy(), "chunk_lens": lens.numpy(), "offset": off.numpy(),
                "att_cache": att.numpy(), "cnn_cache": cnn.numpy(), "cache_mask": mask.numpy()}
        a, b = pt.run(feed), ort_b.run(feed)
        errs = {}
        for k in ort_b.outputs:
            if a[k].shape != b[k].shape:
                raise RuntimeError(f"chunk export: {k} shape {b[k].shape} != PyTorch {a[k].shape} "
                                   f"(B={batch}, C={cache_t})")
            if k == "log_probs_idx":
                errs[k] = float((a[k][..., 0] != b[k][..., 0]).sum())
            elif k == "chunk_out":  # padded frames are garbage in both
                errs[k] = max((float(np.abs(a[k][i, :m] - b[k][i, :m]).max())
                               for i, m in enumerate(a["chunk_out_lens"]) if m), default=0.0)
            elif k == "log_probs":
                errs[k] = max((float((np.abs(a[k][i, :m] - b[k][i, :m]) / (1 + np.abs(a[k][i, :m]))).max())
                               for i, m in enumerate(a["chunk_out_lens"]) if m), default=0.0)
            elif k in ("r_att_cache", "r_cnn_cache"):
                errs[k] = float(np.abs(a[k] - b[k]).max()) if a[k].size else 0.0
            else:
                errs[k] = float(np.abs(a[k].astype(np.float64) - b[k]).max()) if a[k].size else 0.0
        key = f"B{batch}_C{cache_t}_T{x.shape[1]}"
        report[key] = errs
        bad = {k: v for k, v in errs.items() if not v <= (10 * tol if k == "log_probs" else tol)}
        # r_att_cache includes padded frames of a short last chunk: garbage but finite and equal
        if bad:
            raise RuntimeError(f"chunk export differs from PyTorch at {key}: {bad}")
        log.info("verify chunk export %s: %s", key, errs)
    return report


def _code_fingerprint(model_dir: str, chunk_size: int, left_chunks: int, beam_size: int) -> str:
    h = hashlib.sha1(f"{os.path.abspath(model_dir)}|{chunk_size}|{left_chunks}|{beam_size}".encode())
    for name in ("train.yaml", "final.pt"):
        p = os.path.join(model_dir, name)
        st = os.stat(p) if os.path.exists(p) else None
        h.update(f"{name}:{st.st_size if st else -1}:{int(st.st_mtime) if st else -1}".encode())
    # the code that shapes the export (found through the modules, wherever they live)
    for mod in (CheckpointError.__module__, ASRModel.__module__, ChunkEncoder.__module__, __name__):
        with open(sys.modules[mod].__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def ensure_chunk_export(model: ASRModel, engine_dir: str, chunk_size: int, left_chunks: int,
                        beam_size: int) -> str:
    """The chunk encoder export for these settings under engine_dir (exported once)."""
    fp = _code_fingerprint(model.spec.model_dir, chunk_size, left_chunks, beam_size)
    out = os.path.join(engine_dir, f"streaming_chunk{chunk_size}_left{left_chunks}")
    cfg = os.path.join(out, STREAMING_CONFIG_NAME)
    if os.path.exists(cfg):
        with open(cfg) as f:
            if json.load(f).get("fingerprint") == fp:
                return os.path.join(out, STREAMING_ONNX_NAME)
    s = export_chunk_encoder(model, out, chunk_size, left_chunks, beam_size)
    s["fingerprint"] = fp
    with open(cfg, "w") as f:
        json.dump(s, f, indent=2)
    return os.path.join(out, STREAMING_ONNX_NAME)


def open_chunk_runner(backend: str, model: ASRModel, chunk_size: int, left_chunks: int = -1,
                      beam_size: int = 10, engine_dir: Optional[str] = None, device: str = "cpu",
                      threads: int = 0, dtype: Optional[str] = None) -> ChunkRunner:
    """backend "torch" (ChunkEncoder in PyTorch), "onnxruntime" (exported once into
    engine_dir; a finite cache needs left_chunks > 0, or -1) or "torch_cuda" (the GPU
    engine's chunk forward with the streams' caches on the device, `DeviceChunkRunner`; a
    finite cache only, left_chunks >= 0; dtype float16 by default; on device "cpu" it runs
    eagerly in float32 without the CUDA kernels, for tests)."""
    if backend == "torch":
        return ChunkRunner(TorchChunkBackend(
            model, streaming_settings(model, chunk_size, left_chunks, beam_size), device))
    if backend == "torch_cuda":
        settings = streaming_settings(model, chunk_size, left_chunks, beam_size)
        cuda = device.startswith("cuda")
        return DeviceChunkRunner(CudaChunkBackend(
            model, settings, device, dtype, use_kernels=None if cuda else False))
    if backend == "onnxruntime":
        if engine_dir is None:
            raise ValueError("the onnxruntime chunk encoder needs an engine dir")
        path = ensure_chunk_export(model, engine_dir, chunk_size, left_chunks, beam_size)
        return ChunkRunner(OnnxChunkBackend(path, threads=threads))
    raise ValueError(f"chunk decoding runs on the torch, onnxruntime or torch_cuda engine, not {backend!r}")
