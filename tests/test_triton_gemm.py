"""The FFN's fused GEMM + bias + SiLU (wenet_triton/engines/triton_gemm.py), checked with
Triton's CPU interpreter where the triton package is installed (it is part of PyTorch's CUDA
wheels, not of the CPU install CI uses: there this skips). tests/test_gpu.py runs the
compiled, tuned kernel and the engine with it on a GPU."""
import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = r"""
import torch
from wenet_triton.engines import triton_gemm as tg
torch.manual_seed(0)
for dtype, tol in ((torch.float16, 2e-3),):  # bf16: on the GPU (the interpreter's numpy has none)
    # ragged rows and columns (masked tile edges), the FFN's K = 256, a K not a tile multiple
    for M, K, N in ((37, 256, 200), (130, 256, 2048), (5, 72, 96)):
        x = torch.randn(M, K).to(dtype)
        w = (torch.randn(N, K) * 0.05).to(dtype)
        b = torch.randn(N).to(dtype)
        for tma in (False, True):  # the pointer kernel; the persistent TMA one (Hopper's)
            y = tg.linear_silu(x.view(1, M, K), w, b, tiles=dict(BM=64, BN=64, BK=32, GROUP_M=8), tma=tma)
            assert y.shape == (1, M, N) and y.dtype == dtype
            ref = torch.nn.functional.silu(x.float() @ w.float().t() + b.float())
            err = ((y[0].float() - ref).abs().max() / ref.abs().max()).item()
            assert err <= tol, (dtype, M, K, N, tma, err)
            # the two-op path it replaces rounds the GEMM output first: close, not bit for bit
            lin = torch.nn.functional.linear(x.float(), w.float(), b.float())
            two = torch.nn.functional.silu(lin.to(dtype).float())
            assert ((y[0].float() - two).abs().max() / two.abs().max()).item() <= 2 * tol
assert tg._tma_fits(torch.zeros(8, 256, dtype=torch.float16), torch.zeros(64, 256, dtype=torch.float16))
# rows whose bytes are not a multiple of 16 cannot be TMA tiles: the pointer kernel takes them
assert not tg._tma_fits(torch.zeros(8, 100, dtype=torch.float16), torch.zeros(64, 100, dtype=torch.float16))
assert not tg.applies(torch.zeros(4096, 256, dtype=torch.float16))  # CPU rows: never
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_linear_silu_matches_the_two_ops_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


def test_linear_silu_without_triton_is_refused_and_never_chosen(monkeypatch):
    """Where triton is missing the engine keeps cuBLAS + SiLU: applies() is False and a
    direct call says what is missing."""
    import torch

    from wenet_triton.engines import triton_gemm as tg

    monkeypatch.setattr(tg, "triton", None)
    assert not tg.available() and not tg.applies(torch.zeros(4096, 256, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        tg.linear_silu(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(3))
