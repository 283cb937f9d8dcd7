"""The chunk encoder of live streams on the GPU engine (`torch_cuda` chunk backend).

`CudaChunkBackend` runs `FastModel.encode_chunk` (packed fp16 weights, fused kernels, CUDA
graphs per batch bucket) and keeps every stream's caches on the device, in slot pools:

- att pool (S, layers, heads, C, 2*d_k), cnn pool (S, layers, lorder, D) (engine dtype),
  mask pool (S, C) bool; slot 0 is scratch (the rows that pad a batch up to its bucket read
  it and are never written back);
- a stream's state is a `ChunkSlot` handle (its slot and offset); the slot is freed when
  the handle is garbage-collected (live streams are dropped in many places: idle timeout,
  errors, a client that goes away) or by `release`; the pools grow (doubling) when full and
  a freed slot is reused by the next stream;
- a step copies the windows (padded to `decoding_window` frames; chunk_lens carry the real
  lengths) and the slots' ids and offsets to the device, gathers the slots' caches, runs the
  chunk forward (one CUDA graph per batch bucket), scatters the new caches back and copies
  only chunk_out and the CTC top-k to the host (one packed float32 transfer).

Finite caches only (left_chunks >= 0, what serving uses): an unlimited, growing cache
(left_chunks -1) is a ValueError here; offline `transcribe --chunk-size` keeps the torch /
onnxruntime chunk encoders for it. On a CPU (device "cpu", fp32, use_kernels=False) the same
code runs eagerly: that is how CI checks it against `ChunkEncoder`.
"""
from __future__ import annotations

import queue
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from wenet_triton.engines.cuda import DTYPES, CudaEngine, FastModel, _Graphs, _on_device, _round_up
from wenet_triton.model.conformer import ASRModel


class _FreeSlots:
    """Free slot ids. Handles' finalizers give theirs back from wherever the last reference
    went (any thread, the GC, even in the middle of `take`): SimpleQueue.put is reentrant."""
    def __init__(self):
        self.q: "queue.SimpleQueue[int]" = queue.SimpleQueue()

    def put(self, slot: int) -> None:
        self.q.put(slot)

    def take(self) -> Optional[int]:
        try:
            return self.q.get_nowait()
        except queue.Empty:
            return None

    def __len__(self) -> int:
        return self.q.qsize()


class ChunkSlot:
    """One stream's encoder state in a `CudaChunkBackend`: its slot in the device pools and
    its offset (encoder frames produced so far). A step updates it in place. The slot goes
    back to the pool when the handle is garbage-collected, or at `release()`."""
    __slots__ = ("owner", "slot", "offset", "_finalizer", "__weakref__")

    def __init__(self, owner: "CudaChunkBackend", slot: int, free: _FreeSlots):
        self.owner, self.slot, self.offset = owner, slot, 0
        self._finalizer = weakref.finalize(self, free.put, slot)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Give the slot back now (idempotent); the handle cannot be stepped afterwards."""
        self._finalizer()

    def __repr__(self):
        return f"ChunkSlot(slot={self.slot}, offset={self.offset}, alive={self.alive})"


class CudaChunkBackend:
    """Batched chunk steps of streams whose caches live on the device (see the module doc).

    model: the ASRModel (or pass `fm`, an encoder FastModel to share, e.g. a CudaEngine's);
    settings: `streaming_settings(...)` with required_cache_size >= 0; dtype float16 (default
    on CUDA), bfloat16 or float32 (default on a CPU); cuda_graphs: default on CUDA;
    slots: initial pool capacity (streams; it doubles when full).
    """
    BATCH_BUCKETS = CudaEngine.BATCH_BUCKETS

    def __init__(self, model: Optional[ASRModel], settings: Dict, device: str = "cuda",
                 dtype: Optional[str] = None, use_kernels: Optional[bool] = None,
                 cuda_graphs: Optional[bool] = None, slots: int = 8,
                 fm: Optional[FastModel] = None):
        s = settings
        if s["required_cache_size"] < 0:
            raise ValueError(
                "the torch_cuda chunk encoder keeps a finite attention cache (left_chunks >= 0; "
                f"served: > 0); left_chunks {s['num_decoding_left_chunks']} (unlimited, a growing "
                "cache) runs on the torch or onnxruntime chunk encoder")
        self.settings = settings
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if fm is None:
            dtype = dtype or ("float16" if cuda else "float32")
            fm = FastModel(model, DTYPES[dtype], device, use_kernels, decoder=False)
        if fm.device != self.device:
            raise ValueError(f"the FastModel is on {fm.device}, not {self.device}")
        self.fm = fm
        for stages, _ in fm.layers:
            for kind, _, p, _ in stages:
                if kind == "conv" and not p["causal"]:
                    raise ValueError("chunk decoding needs a causal conv module")
        self.beam = int(s["beam_size"])
        self.window = int(s["decoding_window"])
        self.C = int(s["required_cache_size"])
        self.lorder = int(s["cnn_module_kernel_cache"])
        self.L, self.h, self.dk, self.D = (int(s["num_layers"]), int(s["attention_heads"]),
                                           int(s["d_k"]), int(s["output_size"]))
        self.graphs = _Graphs(self._forward, cuda if cuda_graphs is None else bool(cuda_graphs and cuda))
        self._free = _FreeSlots()
        self._host: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # pinned staging per bucket
        self.capacity = 0
        self.att = self.cnn = self.mask = None
        with self._on(), torch.inference_mode():
            self._grow(max(2, int(slots) + 1))

    # -- slots ---------------------------------------------------------------------------------
    def _on(self):
        return torch.cuda.device(self.device) if self.device.type == "cuda" else _Null()

    def _pools(self, n: int):
        dev, dt = self.device, self.fm.dtype
        return (torch.zeros(n, self.L, self.h, self.C, 2 * self.dk, dtype=dt, device=dev),
                torch.zeros(n, self.L, self.lorder, self.D, dtype=dt, device=dev),
                torch.zeros(n, self.C, dtype=torch.bool, device=dev))

    def _grow(self, n: int) -> None:
        """Pools of n slots (old contents kept); the new slots join the free list."""
        pools = self._pools(n)
        if self.capacity:
            for new, old in zip(pools, (self.att, self.cnn, self.mask)):
                new[: self.capacity].copy_(old)
        self.att, self.cnn, self.mask = pools
        for slot in range(max(self.capacity, 1), n):  # slot 0: scratch
            self._free.put(slot)
        self.capacity = n

    @property
    def live_slots(self) -> int:
        """Slots held by live handles."""
        return self.capacity - 1 - len(self._free)

    @torch.inference_mode()
    def initial_state(self) -> ChunkSlot:
        """A new stream: a zeroed slot (empty, fully masked cache) at offset 0."""
        with self._on():
            slot = self._free.take()
            if slot is None:
                self._grow(2 * self.capacity)
                slot = self._free.take()
            self.att[slot].zero_()
            self.cnn[slot].zero_()
            self.mask[slot].zero_()
        return ChunkSlot(self, slot, self._free)

    def release(self, state: ChunkSlot) -> None:
        state.release()

    @torch.inference_mode()
    def load_state(self, offset: int, att_cache: np.ndarray, cnn_cache: np.ndarray,
                   cache_mask: np.ndarray) -> ChunkSlot:
        """A stream from caches in the chunk encoder's I/O layout (one stream, no batch dim:
        att (L,h,C,2dk), cnn (L,D,lorder), mask (1,C)), e.g. an `EncoderState`."""
        if att_cache.shape != (self.L, self.h, self.C, 2 * self.dk):
            raise ValueError(f"att_cache of shape {att_cache.shape}, expected "
                             f"{(self.L, self.h, self.C, 2 * self.dk)}")
        st = self.initial_state()
        with self._on():
            self.att[st.slot].copy_(torch.from_numpy(np.asarray(att_cache)))
            if self.lorder:
                self.cnn[st.slot].copy_(torch.from_numpy(np.asarray(cnn_cache)).transpose(-1, -2))
            self.mask[st.slot].copy_(torch.from_numpy(np.asarray(cache_mask).reshape(-1) > 0.5))
        st.offset = int(offset)
        return st

    @torch.inference_mode()
    def read_state(self, state: ChunkSlot) -> Tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(offset, att (L,h,C,2dk), cnn (L,D,lorder), mask (1,C)) float32: the state in the
        chunk encoder's I/O layout (tests, debugging)."""
        self._check([state])
        with self._on():
            return (state.offset, self.att[state.slot].float().cpu().numpy(),
                    self.cnn[state.slot].transpose(-1, -2).float().cpu().numpy(),
                    self.mask[state.slot].float().cpu().numpy()[None])

    def _check(self, states: Sequence[ChunkSlot]) -> None:
        for st in states:
            if not isinstance(st, ChunkSlot) or st.owner is not self:
                raise ValueError("a state that this chunk backend did not make (use its initial_state())")
            if not st.alive:
                raise ValueError(f"stream state {st} was released")
        if len({id(st) for st in states}) != len(states):
            raise ValueError("a stream appears twice in one chunk step")

    # -- steps ---------------------------------------------------------------------------------
    def _bucket(self, b: int) -> int:
        for s in self.BATCH_BUCKETS:
            if b <= s:
                return s
        return _round_up(b, self.BATCH_BUCKETS[-1])

    def _forward(self, xs, meta, att, cnn, mask):
        """Inside the graph: meta (3,Bb) int64 = slot ids (unused here), lens, offsets."""
        out, out_lens, topv, topi, r_att, r_cnn, r_mask = self.fm.encode_chunk(
            xs, meta[1].to(torch.int32), meta[2], att, cnn, mask, self.beam)
        packed = torch.cat([out.float(), topv, topi.float()], dim=-1)  # one D2H copy
        return packed, r_att, r_cnn, r_mask

    def _staging(self, Bb: int):
        if Bb not in self._host:
            pin = self.device.type == "cuda"
            self._host[Bb] = (torch.zeros(Bb, self.window, self.settings["feat_size"], pin_memory=pin),
                              torch.zeros(3, Bb, dtype=torch.int64, pin_memory=pin))
        return self._host[Bb]

    def step(self, windows: Sequence[np.ndarray], states: Sequence[ChunkSlot]
             ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One chunk step of len(windows) streams (window i of stream states[i]; each window
        of context..decoding_window frames). Updates the states in place -> per stream
        (chunk_out (t,D) f32, log_probs (t,beam) f32, log_probs_idx (t,beam) int64)."""
        if len(windows) != len(states):
            raise ValueError(f"{len(windows)} windows for {len(states)} states")
        if not len(windows):
            return []
        self._check(states)
        return self._step(windows, states)

    @_on_device
    @torch.inference_mode()
    def _step(self, windows, states):
        B = len(windows)
        Bb = self._bucket(B)
        x_host, meta_host = self._staging(Bb)
        x_np, meta_np = x_host.numpy(), meta_host.numpy()
        x_np[:] = 0
        meta_np[0], meta_np[1], meta_np[2] = 0, self.window, 0  # pad rows: scratch slot 0
        for i, (w, st) in enumerate(zip(windows, states)):
            x_np[i, :len(w)] = w
            meta_np[:, i] = (st.slot, len(w), st.offset)
        dev = self.device
        cur = {}

        def make():
            return (torch.zeros(Bb, self.window, x_np.shape[2], device=dev),
                    torch.zeros(3, Bb, dtype=torch.int64, device=dev), *self._pools(Bb))

        def fill(inp):
            xs, meta, att, cnn, mask = inp
            xs.copy_(x_host, non_blocking=True)
            meta.copy_(meta_host, non_blocking=True)
            for pool, buf in ((self.att, att), (self.cnn, cnn), (self.mask, mask)):
                torch.index_select(pool, 0, meta[0], out=buf)
            cur["meta"] = meta

        packed, r_att, r_cnn, r_mask = self.graphs(Bb, make, fill)
        slots = cur["meta"][0, :B]
        self.att.index_copy_(0, slots, r_att[:B])
        if self.lorder:
            self.cnn.index_copy_(0, slots, r_cnn[:B])
        self.mask.index_copy_(0, slots, r_mask[:B])
        host = packed[:B].cpu().numpy()  # waits for the step: the staging buffers are free again
        D, k = self.D, self.beam
        res = []
        for i, st in enumerate(states):
            t = self._out_frames(int(meta_np[1, i]))
            st.offset += t
            res.append((np.ascontiguousarray(host[i, :t, :D]),
                        np.ascontiguousarray(host[i, :t, D:D + k]),
                        host[i, :t, D + k:].astype(np.int64)))
        return res

    def warmup(self, max_batch: int) -> None:
        """Run one step at every batch bucket up to max_batch (captures their CUDA graphs
        now rather than at the first live step of that size); the pools end up with at least
        max_batch slots. Leaves no stream behind."""
        feats = np.zeros((self.window, self.settings["feat_size"]), np.float32)
        top = self._bucket(max(1, max_batch))
        for b in sorted(set(self.BATCH_BUCKETS) | {top}):
            if b > top:
                break
            states = [self.initial_state() for _ in range(b)]
            self.step([feats] * b, states)
            for st in states:
                st.release()

    def _out_frames(self, frames: int) -> int:
        """Valid encoder frames of a window of `frames` frames (the subsampled mask's sum)."""
        for k, s in self.fm.layout:
            frames = (frames - k) // s + 1 if frames >= k else 0
        return frames


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
