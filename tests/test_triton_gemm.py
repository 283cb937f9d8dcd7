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


FFN_SCRIPT = r"""
import torch
import torch.nn.functional as F
from wenet_triton.engines import triton_ffn as tf
torch.manual_seed(0)
# (rows, d, hidden, activation, plan): ragged rows, d not a power of two (masked columns), a
# hidden size not a multiple of the slice, whole and split over the hidden units
for M, d, H, act, plan in ((37, 256, 512, "silu", tf.Plan(32, 64, 4, 2, 1)),
                           (70, 144, 384, "relu", tf.Plan(32, 64, 4, 2, 1)),
                           (33, 64, 256, "silu", tf.Plan(16, 32, 4, 2, 4)),
                           (20, 64, 224, "relu", tf.Plan(16, 32, 4, 2, 3))):
    x = torch.randn(M, d).half()
    w1, b1 = (torch.randn(H, d) * 0.05).half(), torch.randn(H).half()
    w2, b2 = (torch.randn(d, H) * 0.05).half(), torch.randn(d).half()
    y = tf.ffn(x.view(1, M, d), w1, b1, w2, b2, act, tiles=plan)
    h = F.linear(x.float(), w1.float(), b1.float())
    h = (F.silu(h) if act == "silu" else F.relu(h)).half().float()
    ref = F.linear(h, w2.float(), b2.float())
    if plan.split > 1:
        assert y.dtype == torch.float32 and y.shape[0] > 1 and y.shape[1:] == (1, M, d), y.shape
        y = y.sum(0) + b2.float()
    else:
        assert y.shape == (1, M, d) and y.dtype == torch.float16
    err = ((y[0].float() - ref).abs().max() / ref.abs().max()).item()
    assert err <= 2e-3, (M, d, H, act, plan, err)
# the rule: few rows split the hidden units (when the caller takes partials), many do not
assert tf.plan(256, 256, 2048, True, 132).split > 1 and tf.plan(256, 256, 2048, False, 132).split == 1
assert tf.plan(32768, 256, 2048, True, 132).split == 1
assert not tf.applies(torch.zeros(4096, 256, dtype=torch.float16), w1, "silu")  # CPU rows: never
print("ok")
"""


VOCAB_SCRIPT = r"""
import torch
from wenet_triton.engines import kernels
from wenet_triton.engines import triton_vocab as tv
torch.manual_seed(0)
# (hypotheses, positions, d, vocabulary, plan): ragged tiles, d not a power of two, the
# vocabulary whole and in slices (3: not a power of two), targets out of range (clamped as
# the unfused gather does), positions past each length (0)
for N, L, d, V, plan in ((3, 5, 64, 300, tv.Plan(16, 64, 4, 2, 1)), (4, 7, 144, 1000, tv.Plan(16, 128, 4, 2, 3)),
                         (2, 9, 64, 517, tv.Plan(32, 64, 4, 2, 4))):
    x = torch.randn(N, L, d).half()
    w, b = (torch.randn(V, d) * 0.1).half(), torch.randn(V)
    tgt = torch.randint(0, V + 3, (N, L))
    lens = torch.randint(1, L + 1, (N,)).int()
    out = tv.proj_log_softmax_gather(x, w, b, tgt, lens, tiles=plan)
    ref = kernels.ref_log_softmax_gather(x.float() @ w.float().t() + b, tgt, lens)
    assert out.shape == (N, L) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-5, (N, L, d, V, plan)
    assert (out[torch.arange(L)[None, :] >= lens[:, None].long()] == 0).all()
assert tv.plan(410, 4233, 132).split > 1 and tv.plan(51840, 4233, 132).split == 1
print("ok")
"""


CONV_SCRIPT = r"""
import torch
import torch.nn.functional as F
from wenet_triton.engines import triton_conv as tc
torch.manual_seed(0)
cl = torch.channels_last
# (batch, channels in, height, width, channels out, kernel, stride, tiles): the subsampling's
# 3x3 / stride 2 (4x) and 5x5 / stride 3 (6x), ragged row and column tiles, channels not a
# multiple of the K step, stride 1
for B, C, H, W, N, k, s, plan in ((2, 16, 13, 11, 24, 3, 2, tc.Plan(32, 16, 16, 4, 2)),
                                  (1, 20, 17, 9, 40, 5, 3, tc.Plan(16, 32, 16, 4, 2)),
                                  (3, 32, 9, 9, 32, 3, 1, tc.Plan(32, 32, 32, 4, 2))):
    x = torch.randn(B, H, W, C).half().permute(0, 3, 1, 2)  # NCHW view of channels-last memory
    w = (torch.randn(N, C, k, k) * 0.1).half().contiguous(memory_format=cl)
    b = torch.randn(N).half()
    assert not tc.applies(x, w, (s, s))  # CPU tensors: the engine never picks it
    y = tc.conv2d_relu(x, w, b, (s, s), tiles=plan)
    ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), s))
    assert y.shape == ref.shape and y.dtype == torch.float16 and y.is_contiguous(memory_format=cl)
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    assert err <= 2e-3, (B, C, H, W, N, k, s, err)
# the first conv from fp32 features: CMVN (or none), cast, k x k patches (taps padded to a
# multiple of 8), GEMM, bias, ReLU, as FastModel._subsample's four ops
for B, T, Fd, N, k, s, cmvn in ((2, 29, 20, 48, 3, 2, True), (1, 40, 17, 32, 3, 2, False), (2, 31, 23, 40, 5, 3, True)):
    x = torch.randn(B, T, Fd) * 2 + 5
    mean, istd = torch.randn(Fd), torch.rand(Fd) + 0.5
    kp = (k * k + 7) // 8 * 8
    w = F.pad(torch.randn(N, k * k) * 0.2, (0, kp - k * k)).half()
    b = torch.randn(N).half()
    y = tc.first_conv_relu(x, (mean, istd) if cmvn else None, w, b, k, s, bm=16, bn=32)
    u = (((x - mean) * istd) if cmvn else x).half().unfold(1, k, s).unfold(2, k, s)
    ref = F.relu(u.reshape(*u.shape[:3], k * k).float() @ w[:, : k * k].float().t() + b.float())
    assert y.shape == ref.shape and y.dtype == torch.float16, (y.shape, ref.shape)
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    assert err <= 2e-3, (B, T, Fd, N, k, s, cmvn, err)
print("ok")
"""


CTC_SCRIPT = r"""
import torch
from wenet_triton.engines import kernels
from wenet_triton.engines import triton_ctc as tc
torch.manual_seed(0)
# (frames, d, vocabulary, k, tiles): ragged tiles, d not a power of two, k not a power of two,
# k larger than a tile's width (several insertions per tile)
for R, d, V, k, plan in ((37, 64, 300, 10, tc.Plan(16, 64, 4, 2)), (20, 144, 517, 3, tc.Plan(16, 128, 4, 2)),
                         (9, 64, 100, 20, tc.Plan(16, 16, 4, 2))):
    x = torch.randn(1, R, d).half()
    w, b = (torch.randn(V, d) * 0.2).half(), torch.randn(V)
    v, i = tc.proj_log_softmax_topk(x, w, b, k, tiles=plan)
    assert v.shape == (1, R, k) and v.dtype == torch.float32 and i.dtype == torch.int64
    _, rv, ri = kernels.ref_log_softmax_topk(x.float() @ w.float().t() + b, k, False)
    assert (v - rv).abs().max().item() <= 1e-5, (R, d, V, k)
    assert torch.equal(i, ri), (R, d, V, k)
# equal logits (duplicated weight rows in different tiles): the smaller token id first
w, b = (torch.randn(40, 32) * 0.2).half(), torch.zeros(40)
w[33], w[5], w[17] = w[2], w[2], w[2]
b[2] = 3.0
b[[5, 17, 33]] = 3.0
x = torch.randn(6, 32).half()
logits = x.float() @ w.float().t() + b
for split in (None, 2, 3):  # the equal logits in different vocabulary slices too
    v, i = tc.proj_log_softmax_topk(x, w, b, 4, tiles=tc.Plan(16, 16, 4, 2), split=split)
    for r in range(6):
        order = sorted(range(40), key=lambda c: (-logits[r, c].item(), c))[:4]
        assert i[r].tolist() == order, (split, r, i[r].tolist(), order)
# the split-vocabulary form (few frames): slices of whole tiles, a last slice shorter, more
# slices than a power of two, k larger than a slice's tile
for R, d, V, k, plan, split in ((37, 64, 300, 10, tc.Plan(16, 64, 4, 2), 2),
                                (20, 144, 517, 3, tc.Plan(16, 32, 4, 2), 5),
                                (9, 64, 100, 20, tc.Plan(16, 16, 4, 2), 3)):
    x = torch.randn(2, R, d).half()
    w, b = (torch.randn(V, d) * 0.2).half(), torch.randn(V)
    v, i = tc.proj_log_softmax_topk(x, w, b, k, tiles=plan, split=split)
    assert v.shape == (2, R, k)
    _, rv, ri = kernels.ref_log_softmax_topk(x.float() @ w.float().t() + b, k, False)
    assert (v - rv).abs().max().item() <= 1e-5, (R, d, V, k, split)
    assert torch.equal(i, ri), (R, d, V, k, split)
print("ok")
"""


def _interpret(script: str):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
@pytest.mark.parametrize("kernel", ["linear_silu", "ffn", "vocab", "ctc", "conv"])
def test_triton_kernel_matches_the_unfused_ops_in_the_interpreter(kernel):
    """Each Triton-lang kernel against the PyTorch ops it replaces, run by Triton's CPU
    interpreter (the SiLU GEMM, the whole FFN, the decoder projection + log-softmax + gather,
    the CTC head's top-k, the subsampling convolutions)."""
    _interpret({"linear_silu": SCRIPT, "ffn": FFN_SCRIPT, "vocab": VOCAB_SCRIPT, "ctc": CTC_SCRIPT,
                "conv": CONV_SCRIPT}[kernel])


def test_linear_silu_without_triton_is_refused_and_never_chosen(monkeypatch):
    """Where triton is missing the engine keeps cuBLAS + SiLU: applies() is False and a
    direct call says what is missing."""
    import torch

    from wenet_triton.engines import triton_gemm as tg

    monkeypatch.setattr(tg, "triton", None)
    assert not tg.available() and not tg.applies(torch.zeros(4096, 256, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        tg.linear_silu(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(3))


def test_triton_kernels_without_triton_are_refused_and_never_chosen(monkeypatch):
    import torch

    from wenet_triton.engines import triton_conv, triton_ctc, triton_ffn, triton_vocab

    monkeypatch.setattr(triton_ffn, "triton", None)
    monkeypatch.setattr(triton_vocab, "triton", None)
    monkeypatch.setattr(triton_conv, "triton", None)
    monkeypatch.setattr(triton_ctc, "triton", None)
    assert not triton_ctc.applies(torch.zeros(4096, 256, dtype=torch.float16), 10)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        triton_ctc.proj_log_softmax_topk(torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(10), 3)
    assert not triton_conv.applies(torch.zeros(1, 8, 9, 9, dtype=torch.float16), torch.zeros(8, 8, 3, 3), (2, 2))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        triton_conv.conv2d_relu(torch.zeros(1, 8, 9, 9), torch.zeros(8, 8, 3, 3), torch.zeros(8), (2, 2))
    x = torch.zeros(4096, 256, dtype=torch.float16)
    assert not triton_ffn.applies(x, torch.zeros(2048, 256), "silu") and not triton_vocab.applies(x)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        triton_ffn.ffn(x, torch.zeros(8, 256), torch.zeros(8), torch.zeros(256, 8), torch.zeros(256))
    with pytest.raises(RuntimeError, match="needs the triton package"):
        triton_vocab.proj_log_softmax_gather(x.view(1, 4096, 256), torch.zeros(8, 256), torch.zeros(8),
                                             torch.zeros(1, 4096, dtype=torch.long), torch.ones(1))


def test_warm_rows_cover_each_size_class_the_autotuner_keys_on(monkeypatch):
    """A server tunes the SiLU GEMM at load (CudaEngine.warm_kernels -> triton_gemm.warm): one
    row count per class of the autotuner's key (the row count's bit length) from MIN_ROWS up
    to the largest batch, so no live batch meets an untuned class."""
    from wenet_triton.engines import triton_gemm as tg

    monkeypatch.setattr(tg, "MIN_ROWS", 1024)
    assert tg.warm_rows(1000) == []
    assert tg.warm_rows(1024) == [1024]
    assert tg.warm_rows(12000) == [1024, 2048, 4096, 8192]
    classes = [r.bit_length() for r in tg.warm_rows(1 << 17)]
    assert classes == list(range(11, 19))
    for rows in (1024, 1500, 2047, 5000, 100000):  # every batch up to the limit: its class warmed
        assert rows.bit_length() in classes
    monkeypatch.setattr(tg, "MIN_ROWS", 1500)  # a threshold inside a class: that class from it
    assert tg.warm_rows(5000) == [1500, 2048, 4096]


def test_forced_plans_parse_or_name_what_is_wrong():
    """WENET_TRITON_*_PLAN: comma-separated integers into the module's plan, else an error
    naming the variable and the fields it wants."""
    from wenet_triton.engines import triton_ffn, triton_vocab
    from wenet_triton.engines.triton_plan import parse_plan, pow2

    assert parse_plan(triton_ffn.Plan, "64,64,4,2,8", "WENET_TRITON_FFN_PLAN") == triton_ffn.Plan(64, 64, 4, 2, 8)
    assert parse_plan(triton_vocab.Plan, " ", "WENET_TRITON_VOCAB_PLAN") is None
    with pytest.raises(ValueError, match=r"WENET_TRITON_FFN_PLAN: '64,64' is not BM,BH,WARPS,STAGES,SPLIT"):
        parse_plan(triton_ffn.Plan, "64,64", "WENET_TRITON_FFN_PLAN")
    with pytest.raises(ValueError, match="WENET_TRITON_VOCAB_PLAN: 'a,b,c,d,e' is not"):
        parse_plan(triton_vocab.Plan, "a,b,c,d,e", "WENET_TRITON_VOCAB_PLAN")
    assert [pow2(n) for n in (1, 2, 3, 144, 256, 257)] == [1, 2, 4, 256, 256, 512]


def test_bench_engine_variants_name_their_triton_kernels():
    """`wenet-triton bench` torch_cuda variants: the engine's defaults, none (the A/B
    baseline), all three default kernels whatever the environment, the opt-in ones on top;
    an unknown variant is an error, not a silent default."""
    from wenet_triton.bench import triton_kernels

    assert triton_kernels("torch_cuda") == {}
    off = triton_kernels("torch_cuda_cublas")
    assert off == triton_kernels("torch_cuda_nokernels") and set(off.values()) == {False}
    defaults = {"fused_silu", "fused_ffn", "fused_vocab", "fused_conv1", "fused_ctc"}
    assert defaults | {"fused_conv"} == set(off)
    assert triton_kernels("torch_cuda_fused") == dict.fromkeys(defaults, True)
    silu = triton_kernels("torch_cuda_silu")
    assert silu.pop("fused_silu") is True and set(silu) == defaults - {"fused_silu"} and not any(silu.values())
    assert triton_kernels("torch_cuda_conv") == {"fused_conv": True}
    assert triton_kernels("torch_cuda_fp8") == {}
    with pytest.raises(ValueError, match="unknown bench engine torch_cuda_typo"):
        triton_kernels("torch_cuda_typo")


def test_kernel_switches_read_from_the_environment(monkeypatch):
    """WENET_TRITON_FUSED_*: 1 / true / on / yes or 0 / false / off / no, unset = the
    kernel's default; a typo is an error that names the variable, not a silent default."""
    from wenet_triton.engines.cuda import env_switch

    for v, want in (("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("", True)):
        monkeypatch.setenv("WENET_TRITON_FUSED_VOCAB", v)
        assert env_switch("WENET_TRITON_FUSED_VOCAB", True) is want, v
    monkeypatch.delenv("WENET_TRITON_FUSED_CONV", raising=False)
    assert env_switch("WENET_TRITON_FUSED_CONV", False) is False
    monkeypatch.setenv("WENET_TRITON_FUSED_CONV", "maybe")
    with pytest.raises(ValueError, match="WENET_TRITON_FUSED_CONV='maybe': use 1"):
        env_switch("WENET_TRITON_FUSED_CONV", False)


def test_ctc_head_splits_the_vocabulary_only_for_few_frames():
    """Below MIN_ROWS frames the CTC head's vocabulary is split so that ~SPLIT_PROGRAMS
    programs run (1 x 10 s of AISHELL: 250 frames, 16 tiles of 16 frames x 16 slices of
    4,233 / 16 tokens), each slice at least two tiles wide; from MIN_ROWS one program per tile."""
    from wenet_triton.engines import triton_ctc as tc

    assert tc.splits_for(tc.MIN_ROWS, 4233) == 1
    assert tc.splits_for(250, 4233) == 16
    assert tc.splits_for(8 * 125, 4233) == 5  # 63 tiles x 5 slices: >= 256 programs
    assert tc.splits_for(250, 300) == 1  # a vocabulary of one slice's worth


def test_slices_cut_whole_blocks():
    """triton_plan.slices: about `split` slices of whole blocks (the FFN's hidden units, the
    vocabulary's columns); the last slice may be short, none is empty."""
    from wenet_triton.engines.triton_plan import slices

    assert slices(2048, 16, 64) == (128, 16)
    assert slices(224, 3, 32) == (96, 3)  # 75 units a slice rounded up to 3 blocks
    assert slices(4233, 32, 128) == (256, 17)  # fewer slices than asked: whole 128-wide tiles
    assert slices(300, 1, 64) == (320, 1) and slices(300, 0, 64) == (320, 1)
