"""CTC prefix beam search with n-gram LM fusion on the GPU, for a whole batch in one launch
(csrc/ctc_search_gpu.cu: one thread block per utterance running csrc/ctc_search_block.h, the
C++ search's algorithm step for step), plus the steps after it on the GPU: the attention
decoder's inputs packed from the n-best tensors and the rescored winner picked.

Exact: the same n-best token ids as the C++ search (decode/native.py); scores equal up to
the last bits of the GPU's exp/log. The C++ search stays the CPU path and the fallback.
Top-k token ids must be distinct within a frame (what a top-k gives).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from wenet_triton.decode.native import lm_gpu_tables, lm_tables, nbest_lists
from wenet_triton.engines import kernels


class GpuLM:
    """An `decode.lm.NgramLM` as GPU hash tables (the C++ search's own tables, copied)."""
    def __init__(self, lm, device):
        keys, logp, bow, offsets, masks = lm_gpu_tables(lm)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.keys = torch.from_numpy(keys).to(self.device)
        self.logp = torch.from_numpy(logp).to(self.device)
        self.bow = torch.from_numpy(bow).to(self.device)
        self.eos = int(lm.eos)
        self.tables = lm_tables(lm, [t.data_ptr() for t in (self.keys, self.logp, self.bow)], offsets, masks)


@dataclass
class SearchOutput:
    """The n-best of a batch, on the device: tokens (B, beam, L) int32, lens (B, beam) int32,
    ctc (B, beam) float64, count (B,) int32 (hypotheses per utterance, >= 1), lm (B, beam)
    float64 or None (LM log-prob with </s>; the list is then ordered by the fused score).
    host_lens / host_count: copies of lens and count in host memory once
    copy_lengths_to_host() was queued and its stream passed that point; the packing and
    fetching below then size their tensors without a device-to-host synchronisation."""
    tokens: torch.Tensor
    lens: torch.Tensor
    ctc: torch.Tensor
    count: torch.Tensor
    lm: Optional[torch.Tensor]
    host_lens: Optional[torch.Tensor] = None
    host_count: Optional[torch.Tensor] = None

    def rows(self, a: int, b: int) -> "SearchOutput":
        """Utterances a..b-1 (views)."""
        cut = lambda t: None if t is None else t[a:b]  # noqa: E731
        return SearchOutput(self.tokens[a:b], self.lens[a:b], self.ctc[a:b], self.count[a:b],
                            cut(self.lm), cut(self.host_lens), cut(self.host_count))

    def to_lists(self) -> List[List[tuple]]:
        """-> per utterance [(tokens, ctc[, lm]), ...], as the C++ search returns them."""
        lm = None if self.lm is None else self.lm.cpu().numpy()
        return nbest_lists(self.tokens.cpu().numpy(), self.lens.cpu().numpy(), self.ctc.cpu().numpy(),
                           self.count.cpu().numpy(), lm)

    def copy_lengths_to_host(self) -> None:
        """Queue copies of lens and count into (pinned) host memory on the current stream;
        host_lens / host_count hold them once that stream is past this call (record an
        event after it and wait for that before reading them)."""
        self.host_lens, self.host_count = _to_host_async(self.lens), _to_host_async(self.count)


def _to_host_async(t: torch.Tensor) -> torch.Tensor:
    """A host copy of t queued on the current stream (pinned memory when t is on a GPU)."""
    if t.device.type != "cuda":
        return t.clone()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


_WORK: dict = {}


def _workspace(device: torch.device, nbytes: int) -> torch.Tensor:
    """A scratch buffer of at least nbytes per (device, current stream), grown by half again
    when too small: searches on one stream run one after the other, so they may share it, and
    a replaced buffer goes back to that stream's memory pool."""
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    w = _WORK.get(key)
    if w is None or w.numel() < nbytes:
        w = _WORK[key] = torch.empty(max(nbytes, int(1.5 * w.numel()) if w is not None else 0),
                                     dtype=torch.uint8, device=device)
    return w


def ctc_search(topv: torch.Tensor, topi: torch.Tensor, lens: torch.Tensor, beam: int, blank: int = 0,
               lm: Optional[GpuLM] = None, lm_weight: float = 0.0, length_bonus: float = 0.0
               ) -> SearchOutput:
    """(B, T, K) top-k log-probs (float, descending) / ids and (B,) frame counts, on one CUDA
    device -> the n-best of each utterance (see SearchOutput), on the current stream."""
    if topv.device.type != "cuda":
        raise ValueError(f"ctc_search runs on a CUDA device; the inputs are on {topv.device}")
    if topv.dim() != 3 or topi.shape != topv.shape or lens.shape != topv.shape[:1]:
        raise ValueError(f"ctc_search expects topv/topi (B, T, K) and lens (B,); got "
                         f"{tuple(topv.shape)}, {tuple(topi.shape)}, {tuple(lens.shape)}")
    if lm is not None and lm.device != topv.device:
        raise ValueError(f"the LM tables are on {lm.device}, the inputs on {topv.device}")
    L = kernels.load().lib
    topv = topv.float().contiguous()
    topi = topi.long().contiguous()
    lens = lens.to(torch.int32).contiguous()
    B, T, K = topv.shape
    dev = topv.device
    max_len = max(T, 1)
    tokens = torch.zeros((B, beam, max_len), dtype=torch.int32, device=dev)
    out_lens = torch.zeros((B, beam), dtype=torch.int32, device=dev)
    ctc = torch.zeros((B, beam), dtype=torch.float64, device=dev)
    count = torch.zeros(B, dtype=torch.int32, device=dev)
    status = torch.zeros(B, dtype=torch.int32, device=dev)
    lm_out = torch.zeros((B, beam), dtype=torch.float64, device=dev) if lm is not None else None
    per_utt = int(L.wk_ctc_search_workspace(T, K, beam))
    work = _workspace(dev, max(1, B * per_utt))
    p = kernels._ptr
    code = L.wk_ctc_search(
        p(topv), p(topi), p(lens), B, T, K, beam, blank, max_len, p(tokens), p(out_lens), p(ctc),
        p(count), p(status), ctypes.byref(lm.tables) if lm is not None else None,
        lm.eos if lm is not None else 0, float(lm_weight), float(length_bonus), p(lm_out),
        p(work), kernels._stream())
    kernels._check(code, "wk_ctc_search")
    return SearchOutput(tokens, out_lens, ctc, count, lm_out)


def rescoring_tensors(out: SearchOutput, beam: int, sos: int, eos: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention decoder's inputs from an n-best on any device, as
    decode.search.rescoring_inputs packs them from lists (short lists filled with their last
    hypothesis): hyps_pad_sos_eos, hyps_lens_sos, r_hyps_pad_sos_eos (int64, (B, beam, L+2))
    and ctc_score (float32)."""
    dev = out.tokens.device
    B = out.tokens.shape[0]
    slot = torch.minimum(torch.arange(beam, device=dev)[None, :], (out.count.long() - 1).clamp(min=0)[:, None])
    n = out.lens.long().gather(1, slot)                              # (B, beam)
    L = _packed_len(out, beam) if out.host_lens is not None else max(int(n.max()) if n.numel() else 0, 0)
    toks = out.tokens.long().gather(1, slot[:, :, None].expand(B, beam, out.tokens.shape[2]))[:, :, :L]
    q = torch.arange(L, device=dev)[None, None, :]
    inside = q < n[:, :, None]
    pad = torch.full((B, beam, L + 2), eos, dtype=torch.int64, device=dev)
    rpad = pad.clone()
    pad[:, :, 1:L + 1] = torch.where(inside, toks, eos)
    rev = (n[:, :, None] - 1 - q).clamp(min=0)                       # token n-1-q for q < n
    rpad[:, :, 1:L + 1] = torch.where(inside, toks.gather(2, rev), eos)
    pad[:, :, 0] = sos
    rpad[:, :, 0] = sos
    return pad, (n + 1).to(torch.int32), rpad, out.ctc.gather(1, slot).float()


def pick_rescored(out: SearchOutput, scores: torch.Tensor, best: torch.Tensor,
                  lm_rescore_weight: float = 0.0) -> torch.Tensor:
    """(B,) index of each utterance's rescored winner: the decoder's best index, or with LM
    scores, the first argmax of decoder score + lm_rescore_weight * LM over the real
    hypotheses (decode.search.pick_rescored on tensors)."""
    best = best.reshape(-1).long()
    if out.lm is None or not lm_rescore_weight:
        return best
    beam = scores.shape[1]
    total = scores.double() + lm_rescore_weight * out.lm[:, :beam]
    real = torch.arange(beam, device=scores.device)[None, :] < out.count.long()[:, None]
    return torch.where(real, total, torch.full_like(total, -np.inf)).argmax(dim=1)


def _packed_len(out: SearchOutput, beam: int) -> int:
    """The longest hypothesis rescoring_tensors packs (slots past count repeat the last one),
    from the host copies of lens and count."""
    lens, count = out.host_lens.numpy(), out.host_count.numpy().astype(np.int64)
    slot = np.minimum(np.arange(beam)[None, :], np.maximum(count - 1, 0)[:, None])
    n = np.take_along_axis(lens, slot, axis=1)
    return max(int(n.max()) if n.size else 0, 0)


class TokenFetch:
    """The winners' token ids on their way to the host (see fetch_best_tokens)."""
    def __init__(self, toks: torch.Tensor, n: torch.Tensor, done: Optional[torch.cuda.Event]):
        self.toks, self.n, self.done = toks, n, done

    def lists(self) -> List[List[int]]:
        """Wait for the copies (this thread only) -> token ids per utterance."""
        if self.done is not None:
            self.done.synchronize()
        toks = self.toks.numpy()
        return [toks[b, :k].tolist() for b, k in enumerate(self.n.numpy().tolist())]


def fetch_best_tokens(out: SearchOutput, index: torch.Tensor, blocking: bool = False) -> TokenFetch:
    """Queue the copy of hypothesis index[b] of each utterance to the host on the current
    stream; TokenFetch.lists() waits for it (blocking: asleep, not spinning on a core). With
    the host lengths (copy_lengths_to_host) nothing here waits for the GPU, so a caller can
    queue this under a lock and wait after releasing it."""
    B = out.tokens.shape[0]
    rows = torch.arange(B, device=out.tokens.device)
    n = out.lens[rows, index]
    if out.host_lens is not None:  # an upper bound of n: every hypothesis' length
        L = int(out.host_lens.numpy().max()) if B else 0
    else:
        L = max(int(n.max()) if B else 0, 0)
    toks = _to_host_async(out.tokens[rows, index, :L])
    n = _to_host_async(n)
    done = None
    if out.tokens.device.type == "cuda":
        done = torch.cuda.Event(blocking=blocking)
        done.record(torch.cuda.current_stream(out.tokens.device))
    return TokenFetch(toks, n, done)


def best_tokens(out: SearchOutput, index: torch.Tensor) -> List[List[int]]:
    """The token ids of hypothesis index[b] of each utterance, on the host (one copy)."""
    return fetch_best_tokens(out, index).lists()
