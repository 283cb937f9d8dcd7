"""What the Triton-lang kernel modules (triton_ffn, triton_vocab, triton_conv, triton_ctc)
share: the (BM, d) row tile their programs start from, and their tile choices: fixed plans
(NamedTuples of ints) made from measurements, not tuned at run time; an environment variable
may force one for A/B runs."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Type, TypeVar

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: no kernels, the plans still parse
    triton = tl = None

P = TypeVar("P")


def pow2(n: int) -> int:
    """The smallest power of two >= n (Triton's block shapes)."""
    p = 1
    while p < n:
        p *= 2
    return p


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (the plans size their grids by it); 4 for
    Triton's CPU interpreter: a few programs, so that each walks several tiles."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def slices(total: int, split: int, step: int) -> Tuple[int, int]:
    """`total` units (hidden units, vocabulary columns) cut into about `split` slices of
    whole `step`-wide blocks -> (units per slice, slices)."""
    per = -(-total // max(1, split))
    per = -(-per // step) * step
    return per, -(-total // per)


def parse_plan(cls: Type[P], spec: str, env: str) -> Optional[P]:
    """ "a,b,c,..." -> cls(a, b, c, ...); "" -> None; anything else: an error naming env and
    the fields it wants."""
    spec = (spec or "").strip()
    if not spec:
        return None
    try:
        return cls(*(int(v) for v in spec.split(",")))
    except (TypeError, ValueError):
        fields = ",".join(f.upper() for f in cls._fields)
        raise ValueError(f"{env}: {spec!r} is not {fields} (integers, comma-separated)")


def forced_plan(cls: Type[P], env: str) -> Optional[P]:
    """The plan $env forces for every call instead of the module's rule, or None."""
    return parse_plan(cls, os.environ.get(env, ""), env)


row_tile = None  # the kernels' shared jit prologue (below, where triton is installed)
if triton is not None:
    @triton.jit
    def row_tile(x_ptr, pid, R, D, sxm, BM: tl.constexpr, BD: tl.constexpr):
        """Program pid's BM rows of x (R, D; row stride sxm, unit column stride), zero past R
        and D -> (tile (BM, BD), row ids, column ids, row mask, column mask)."""
        rm = pid * BM + tl.arange(0, BM)
        rd = tl.arange(0, BD)
        m_ok = rm < R
        d_ok = rd < D
        x = tl.load(x_ptr + rm[:, None] * sxm + rd[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        return x, rm, rd, m_ok, d_ok
