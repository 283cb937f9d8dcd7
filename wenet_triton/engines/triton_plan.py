"""What the Triton-lang kernel modules (triton_ffn, triton_vocab, triton_conv, triton_ctc)
share: their tile choices are fixed plans (NamedTuples of ints) made from measurements, not
tuned at run time; an environment variable may force one for A/B runs."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Type, TypeVar

import torch

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
