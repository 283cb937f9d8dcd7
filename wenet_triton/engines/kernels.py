"""Build and bind csrc/wenet_kernels.cu.

`build()` compiles the shared library with nvcc (one command: `wenet-triton build-plugins`);
`ops()` loads it through ctypes and registers torch custom ops `wenet::*` that launch the
kernels on the current CUDA stream (so they are captured by CUDA graphs). The same .so's C
launchers back the TensorRT plugins. Reference implementations in plain torch sit beside
each op; the tests compare the two.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
from typing import List, Optional, Tuple

import torch

from wenet_triton.paths import build_native, cache_root, prebuilt_dir

log = logging.getLogger(__name__)
LIB_NAME = "libwenet_kernels.so"
_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def default_lib_path() -> str:
    """$WENET_KERNELS_LIB, else the prebuilt one ($WENET_TRITON_PREBUILT), else the cache's."""
    pre = prebuilt_dir()
    if pre and os.path.exists(os.path.join(pre, LIB_NAME)):
        default = os.path.join(pre, LIB_NAME)
    else:
        default = os.path.join(cache_root(), "native", LIB_NAME)
    return os.environ.get("WENET_KERNELS_LIB", default)


def build(out: Optional[str] = None, archs: Optional[List[str]] = None, nvcc: str = "nvcc") -> str:
    """Compile the kernels into a shared library; archs like ['90', '80'] (default: the
    visible GPU's, else 80+90)."""
    out = out or default_lib_path()
    if shutil.which(nvcc) is None:
        raise RuntimeError(f"{nvcc} not found: the CUDA toolkit is needed to build the plugins")
    if archs is None:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            archs = [f"{major}{minor}"]
        else:
            archs = ["80", "90"]
    log.info("building %s for sm_%s", out, ",".join(archs))
    build_native("kernels", out, archs, env={"NVCC": nvcc})
    return out


class _Lib:
    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        lib.wk_version.restype = ctypes.c_int
        if lib.wk_version() != 8:  # first: an old build lacks the newer symbols
            raise OSError(f"{path} is an old build: run `wenet-triton build-plugins` again")
        P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        lib.wk_add_layernorm.argtypes = [P, P, P, P, F, P, P, I, I, F, I, P]
        lib.wk_add_layernorm2.argtypes = [P, P, P, P, F, P, P, F, P, P, F, I, I, I, P]
        lib.wk_add_layernorm_parts.argtypes = [P, P, P, P, I, P, F, P, P, I, I, F, I, P]
        lib.wk_add_layernorm2_parts.argtypes = [P, P, P, P, I, P, F, P, P, F, P, P, F, I, I, I, P]
        lib.wk_glu_dwconv.argtypes = [P, P, P, P, P, P, P, P, I, I, I, I, I, F, I, P]
        lib.wk_log_softmax_topk.argtypes = [P, P, P, P, I, I, I, I, I, P]
        lib.wk_log_softmax_gather.argtypes = [P, P, P, P, I, I, I, I, I, P]
        lib.wk_attention.argtypes = [P] * 7 + [I] * 10 + [F, I, P]
        L = ctypes.c_longlong
        lib.wk_pack_rel_keys.argtypes = [P, P, P, I, I, I, I, L, L, I, P]
        lib.wk_ctc_search_workspace.argtypes = [I, I, I]
        lib.wk_ctc_search_workspace.restype = ctypes.c_int64
        D = ctypes.c_double
        lib.wk_ctc_search.argtypes = [P, P, P, I, I, I, I, I, I, P, P, P, P, P, P, I, D, D, P, P, P]
        for f in (lib.wk_add_layernorm, lib.wk_add_layernorm2, lib.wk_glu_dwconv, lib.wk_log_softmax_topk,
                  lib.wk_log_softmax_gather, lib.wk_attention, lib.wk_ctc_search, lib.wk_pack_rel_keys,
                  lib.wk_add_layernorm_parts, lib.wk_add_layernorm2_parts):
            f.restype = ctypes.c_int
        self.lib = lib


_LIB: Optional[_Lib] = None


def load(path: Optional[str] = None) -> _Lib:
    global _LIB
    if _LIB is None:
        path = path or default_lib_path()
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: run `wenet-triton build-plugins` first")
        _LIB = _Lib(path)
    return _LIB


_WARNED = []


def available() -> bool:
    """Whether the kernels can run here: a CUDA GPU and a library of this version. On a GPU
    host without one (not built, or an old build) the torch_cuda engine runs the plain torch
    ops instead, slower: that is said once in the log."""
    if not torch.cuda.is_available():
        return False
    try:
        load()
        return True
    except OSError as e:  # FileNotFoundError too
        if not _WARNED:
            _WARNED.append(True)
            log.warning("CUDA kernels not used (%s); the torch_cuda engine runs without them", e)
        return False


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def _check(code: int, name: str):
    if code != 0:
        raise RuntimeError(f"{name} failed with CUDA error {code}")


# -- custom ops ------------------------------------------------------------------------------
@torch.library.custom_op("wenet::add_layernorm", mutates_args=())
def add_layernorm(x: torch.Tensor, delta: torch.Tensor, alpha: float, gamma: torch.Tensor,
                  beta: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, LayerNorm(s)) with s = x + alpha*delta, in one pass; fp32 statistics."""
    x, delta = x.contiguous(), delta.contiguous()
    cols = x.shape[-1]
    s, y = torch.empty_like(x), torch.empty_like(x)
    _check(load().lib.wk_add_layernorm(
        _ptr(s), _ptr(y), _ptr(x), _ptr(delta), alpha, _ptr(gamma), _ptr(beta),
        x.numel() // cols, cols, eps, _DTYPES[x.dtype], _stream()), "wk_add_layernorm")
    return s, y


@add_layernorm.register_fake
def _(x, delta, alpha, gamma, beta, eps):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("wenet::add_layernorm2", mutates_args=())
def add_layernorm2(x: torch.Tensor, delta: torch.Tensor, alpha: float, gamma1: torch.Tensor,
                   beta1: torch.Tensor, eps1: float, gamma2: torch.Tensor, beta2: torch.Tensor,
                   eps2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(z, LayerNorm2(z)) with z = LayerNorm1(x + alpha*delta), in one pass: a conformer
    layer's norm_final and the next norm (the next layer's first, or after_norm). Equal, bit
    for bit, to add_layernorm then layernorm on its output."""
    x, delta = x.contiguous(), delta.contiguous()
    cols = x.shape[-1]
    z, y = torch.empty_like(x), torch.empty_like(x)
    _check(load().lib.wk_add_layernorm2(
        _ptr(z), _ptr(y), _ptr(x), _ptr(delta), alpha, _ptr(gamma1), _ptr(beta1), eps1,
        _ptr(gamma2), _ptr(beta2), eps2, x.numel() // cols, cols, _DTYPES[x.dtype], _stream()),
        "wk_add_layernorm2")
    return z, y


@add_layernorm2.register_fake
def _(x, delta, alpha, gamma1, beta1, eps1, gamma2, beta2, eps2):
    return torch.empty_like(x), torch.empty_like(x)


def parts_fit(x: torch.Tensor) -> bool:
    """Whether add_layernorm_parts / add_layernorm2_parts take rows like x (16-bit or fp32
    rows of a multiple of 8 columns, at most 1,024 (fp16/bf16) or 512 (fp32))."""
    cols = x.shape[-1]
    return cols % 8 == 0 and cols * x.element_size() <= 2048


def _parts_kernel_takes(x, parts, *others) -> bool:
    """The vector kernel's conditions: rows parts_fit() takes, fp32 partials, 16-byte aligned
    pointers (a view into the middle of a tensor may not be)."""
    return (parts_fit(x) and parts.dtype == torch.float32
            and all(t.data_ptr() % 16 == 0 for t in (x, parts, *others)))


@torch.library.custom_op("wenet::add_layernorm_parts", mutates_args=())
def add_layernorm_parts(x: torch.Tensor, parts: torch.Tensor, bias: torch.Tensor, alpha: float,
                        gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """add_layernorm with delta = (sum of parts (S, *x.shape) in fp32 + bias) rounded to x's
    dtype: a GEMM's split-K partials reduced in the kernel that consumes its output. Rows the
    vector kernel does not take (unaligned, too wide) are reduced first, then add_layernorm."""
    x, parts = x.contiguous(), parts.contiguous()
    if not _parts_kernel_takes(x, parts, bias, gamma, beta):  # reduce here, then the plain kernel
        return add_layernorm(x, ref_parts_delta(parts, bias, x.dtype), alpha, gamma, beta, eps)
    cols = x.shape[-1]
    s, y = torch.empty_like(x), torch.empty_like(x)
    _check(load().lib.wk_add_layernorm_parts(
        _ptr(s), _ptr(y), _ptr(x), _ptr(parts), parts.shape[0], _ptr(bias), alpha, _ptr(gamma),
        _ptr(beta), x.numel() // cols, cols, eps, _DTYPES[x.dtype], _stream()), "wk_add_layernorm_parts")
    return s, y


@add_layernorm_parts.register_fake
def _(x, parts, bias, alpha, gamma, beta, eps):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("wenet::add_layernorm2_parts", mutates_args=())
def add_layernorm2_parts(x: torch.Tensor, parts: torch.Tensor, bias: torch.Tensor, alpha: float,
                         gamma1: torch.Tensor, beta1: torch.Tensor, eps1: float, gamma2: torch.Tensor,
                         beta2: torch.Tensor, eps2: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """add_layernorm2 with delta given as split-K partials + bias (see add_layernorm_parts)."""
    x, parts = x.contiguous(), parts.contiguous()
    if not _parts_kernel_takes(x, parts, bias, gamma1, beta1, gamma2, beta2):
        return add_layernorm2(x, ref_parts_delta(parts, bias, x.dtype), alpha, gamma1, beta1, eps1,
                              gamma2, beta2, eps2)
    cols = x.shape[-1]
    z, y = torch.empty_like(x), torch.empty_like(x)
    _check(load().lib.wk_add_layernorm2_parts(
        _ptr(z), _ptr(y), _ptr(x), _ptr(parts), parts.shape[0], _ptr(bias), alpha, _ptr(gamma1),
        _ptr(beta1), eps1, _ptr(gamma2), _ptr(beta2), eps2, x.numel() // cols, cols, _DTYPES[x.dtype],
        _stream()), "wk_add_layernorm2_parts")
    return z, y


@add_layernorm2_parts.register_fake
def _(x, parts, bias, alpha, gamma1, beta1, eps1, gamma2, beta2, eps2):
    return torch.empty_like(x), torch.empty_like(x)


def ref_parts_delta(parts: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The GEMM output the partials stand for: their fp32 sum (in order, as the kernel adds
    them) + bias, rounded to dtype."""
    d = parts[0].float()
    for s in range(1, parts.shape[0]):
        d = d + parts[s].float()
    return (d + bias.float()).to(dtype)


@torch.library.custom_op("wenet::layernorm", mutates_args=())
def layernorm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with fp32 statistics for fp16/bf16/fp32 rows."""
    x = x.contiguous()
    cols = x.shape[-1]
    y = torch.empty_like(x)
    _check(load().lib.wk_add_layernorm(
        None, _ptr(y), _ptr(x), None, 0.0, _ptr(gamma), _ptr(beta), x.numel() // cols, cols,
        eps, _DTYPES[x.dtype], _stream()), "wk_add_layernorm")
    return y


@layernorm.register_fake
def _(x, gamma, beta, eps):
    return torch.empty_like(x)


def ref_add_layernorm(x, delta, alpha, gamma, beta, eps):
    s = x.float() + (alpha * delta.float() if delta is not None else 0)
    y = torch.nn.functional.layer_norm(s, (x.shape[-1],), gamma.float(), beta.float(), eps)
    return s.to(x.dtype), y.to(x.dtype)


@torch.library.custom_op("wenet::glu_dwconv", mutates_args=())
def glu_dwconv(h: torch.Tensor, lens: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
               pad_value: torch.Tensor, ln_gamma: Optional[torch.Tensor],
               ln_beta: Optional[torch.Tensor], causal: bool, eps: float) -> torch.Tensor:
    """GLU -> depthwise conv (w (C,K), bias, fp32) -> optional LayerNorm -> swish."""
    h = h.contiguous()
    B, T, C2 = h.shape
    C, K = w.shape
    out = torch.empty(B, T, C, dtype=h.dtype, device=h.device)
    _check(load().lib.wk_glu_dwconv(
        _ptr(out), _ptr(h), _ptr(lens), _ptr(w), _ptr(bias), _ptr(pad_value), _ptr(ln_gamma),
        _ptr(ln_beta), B, T, C, K, int(causal), eps, _DTYPES[h.dtype], _stream()),
        "wk_glu_dwconv")
    return out


@glu_dwconv.register_fake
def _(h, lens, w, bias, pad_value, ln_gamma, ln_beta, causal, eps):
    return h.new_empty(h.shape[0], h.shape[1], w.shape[0])


def ref_glu_dwconv(h, lens, w, bias, pad_value, ln_gamma, ln_beta, causal, eps):
    B, T, _ = h.shape
    C, K = w.shape
    g = torch.nn.functional.glu(h.float(), dim=-1)  # (B,T,C)
    valid = torch.arange(T, device=h.device)[None, :] < lens[:, None].long()
    g = g * valid[..., None]
    g = g.transpose(1, 2)  # (B,C,T)
    if causal:
        pad = pad_value.float()[None, :, None].expand(B, C, K - 1)
        g = torch.cat([pad, g], dim=2)
        y = torch.nn.functional.conv1d(g, w.float()[:, None, :], bias.float(), groups=C)
    else:
        y = torch.nn.functional.conv1d(g, w.float()[:, None, :], bias.float(),
                                       padding=(K - 1) // 2, groups=C)
    y = y.transpose(1, 2)
    if ln_gamma is not None:
        y = torch.nn.functional.layer_norm(y, (C,), ln_gamma.float(), ln_beta.float(), eps)
    return torch.nn.functional.silu(y).to(h.dtype)


@torch.library.custom_op("wenet::pack_rel_keys", mutates_args=())
def pack_rel_keys(k: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The rel-pos attention's keys: k (B, T, h, dk) (a view of the QKV GEMM's output: rows
    strided, each head's dk contiguous) and p (T, h*dk) (this layer's linear_pos rows, a
    column slice of every layer's) -> (B, T, h, 2*dk) with per head [k, p]: the
    torch.cat(k, p broadcast over the batch) of `ref_pack_rel_keys` as one copy kernel (the
    cat ran at a quarter of memory bandwidth on the strided, broadcast inputs)."""
    B, T, h, dk = k.shape
    if k.stride(3) != 1 or k.stride(2) != dk or k.stride(0) != T * k.stride(1):
        k = k.contiguous()
    if p.stride(1) != 1:
        p = p.contiguous()
    out = torch.empty(B, T, h, 2 * dk, dtype=k.dtype, device=k.device)
    _check(load().lib.wk_pack_rel_keys(
        _ptr(out), _ptr(k), _ptr(p), B, T, h, dk, k.stride(1), p.stride(0), _DTYPES[k.dtype],
        _stream()), "wk_pack_rel_keys")
    return out


@pack_rel_keys.register_fake
def _(k, p):
    return k.new_empty(*k.shape[:3], 2 * k.shape[3])


def ref_pack_rel_keys(k, p):
    B, T, h, dk = k.shape
    return torch.cat([k, p.reshape(1, T, h, dk).expand(B, T, h, dk)], dim=-1)


@torch.library.custom_op("wenet::log_softmax_topk", mutates_args=())
def log_softmax_topk(x: torch.Tensor, k: int, want_logp: bool, V: int = -1
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise fp32 log-softmax (empty unless want_logp) + top-k values/int64 indices over
    the first V columns (V=-1: all; x may be wider, e.g. padded for GEMM alignment)."""
    x = x.contiguous()
    ld = x.shape[-1]
    V = ld if V < 0 else V
    lead = x.shape[:-1]
    rows = x.numel() // ld
    logp = torch.empty(*lead, V if want_logp else 0, dtype=torch.float32, device=x.device)
    topv = torch.empty(*lead, k, dtype=torch.float32, device=x.device)
    topi = torch.empty(*lead, k, dtype=torch.int64, device=x.device)
    _check(load().lib.wk_log_softmax_topk(
        _ptr(logp) if want_logp else None, _ptr(topv), _ptr(topi), _ptr(x), rows, V, ld, k,
        _DTYPES[x.dtype], _stream()), "wk_log_softmax_topk")
    return logp, topv, topi


@log_softmax_topk.register_fake
def _(x, k, want_logp, V=-1):
    lead = x.shape[:-1]
    V = x.shape[-1] if V < 0 else V
    return (x.new_empty(*lead, V if want_logp else 0, dtype=torch.float32),
            x.new_empty(*lead, k, dtype=torch.float32), x.new_empty(*lead, k, dtype=torch.int64))


def ref_log_softmax_topk(x, k, want_logp, V=-1):
    logp = torch.log_softmax(x[..., : x.shape[-1] if V < 0 else V].float(), dim=-1)
    v, i = logp.topk(k, dim=-1)
    return (logp if want_logp else logp[..., :0]), v, i


@torch.library.custom_op("wenet::log_softmax_gather", mutates_args=())
def log_softmax_gather(x: torch.Tensor, target: torch.Tensor, lens: torch.Tensor,
                       V: int = -1) -> torch.Tensor:
    """x (N,L,ld), target (N,L) int64, lens (N,) int32 -> log_softmax(x[..., :V])[target],
    0 past len."""
    x = x.contiguous()
    N, L, ld = x.shape
    V = ld if V < 0 else V
    out = torch.empty(N, L, dtype=torch.float32, device=x.device)
    _check(load().lib.wk_log_softmax_gather(_ptr(out), _ptr(x), _ptr(target.contiguous()),
                                            _ptr(lens.contiguous()), N, L, V, ld,
                                            _DTYPES[x.dtype], _stream()), "wk_log_softmax_gather")
    return out


@log_softmax_gather.register_fake
def _(x, target, lens, V=-1):
    return x.new_empty(x.shape[0], x.shape[1], dtype=torch.float32)


def ref_log_softmax_gather(x, target, lens, V=-1):
    x = x[..., : x.shape[-1] if V < 0 else V]
    logp = torch.log_softmax(x.float(), dim=-1)
    tok = logp.gather(2, target.clamp(0, x.shape[-1] - 1).unsqueeze(2)).squeeze(2)
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None].long()
    return tok * valid


@torch.library.custom_op("wenet::attention", mutates_args=())
def attention(qu: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
              qv: Optional[torch.Tensor], p: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """softmax(((q+u) k^T + [(q+v) p^T]) * scale + bias) v, fp32 softmax, one kernel.
    qu/qv/v (B,H,Tq|Tk,dk), k/p (1|B,H,Tk,dk), bias broadcastable to (B,H,Tq,Tk) (4-D: 1|B,
    1|H, 1|Tq, Tk)."""
    qu, k, v = qu.contiguous(), k.contiguous(), v.contiguous()
    B, H, Tq, dk = qu.shape
    Tk = k.shape[2]
    if bias is not None:
        bias = bias.to(qu.dtype)
        while bias.dim() < 4:
            bias = bias.unsqueeze(0)
        bias = bias.contiguous()
    bb, bh, bq = (bias.shape[:3] if bias is not None else (1, 1, 1))
    if p is not None:
        qv, p = qv.contiguous(), p.contiguous()
    out = torch.empty_like(qu)
    _check(load().lib.wk_attention(
        _ptr(out), _ptr(qu), _ptr(k), _ptr(v), _ptr(qv if p is not None else None), _ptr(p),
        _ptr(bias), B, H, Tq, Tk, dk, k.shape[0], p.shape[0] if p is not None else 1, bb, bh, bq, scale,
        _DTYPES[qu.dtype], _stream()), "wk_attention")
    return out


@attention.register_fake
def _(qu, k, v, bias, qv, p, scale):
    return torch.empty_like(qu)


def ref_attention(qu, k, v, bias, qv, p, scale):
    scores = qu.float() @ k.float().transpose(-2, -1)
    if p is not None:
        scores = scores + qv.float() @ p.float().transpose(-2, -1)
    scores = scores * scale
    if bias is not None:
        scores = scores + bias.float()
    return (torch.softmax(scores, dim=-1) @ v.float()).to(qu.dtype)
