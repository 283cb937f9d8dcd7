"""CUDA kernels and the torch_cuda engine on a GPU (skipped without one)."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from conftest import MODELS, ROOT, reference

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from wenet_triton.engines import kernels  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module", autouse=True)
def lib():
    import os
    if not os.path.exists(kernels.default_lib_path()):
        kernels.build()
    kernels.load()


def poison():
    """Fill the caching allocator's free blocks with NaN so unwritten outputs show up."""
    x = torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")
    del x


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 256), (7, 256), (64 * 333, 256), (5, 80), (3, 1000)])
def test_add_layernorm(dtype, rows, cols):
    g = torch.Generator(device="cuda").manual_seed(rows)
    x = torch.randn(rows, cols, device="cuda", generator=g).to(dtype) * 3
    d = torch.randn(rows, cols, device="cuda", generator=g).to(dtype)
    gamma = torch.randn(cols, device="cuda", generator=g).to(dtype)
    beta = torch.randn(cols, device="cuda", generator=g).to(dtype)
    poison()
    s, y = kernels.add_layernorm(x, d, 0.5, gamma, beta, 1e-5)
    rs, ry = kernels.ref_add_layernorm(x, d, 0.5, gamma, beta, 1e-5)
    assert torch.isfinite(s).all() and torch.isfinite(y).all()
    assert rel_err(s, rs) <= TOL[dtype] and rel_err(y, ry) <= TOL[dtype]
    y2 = kernels.layernorm(x, gamma, beta, 1e-5)
    assert rel_err(y2, kernels.ref_add_layernorm(x, torch.zeros_like(x), 0, gamma, beta, 1e-5)[1]) <= TOL[dtype]
    # rows not 16-byte aligned (a view one element into its storage): the plain warp kernel
    xo = torch.cat([x.new_zeros(1), x.flatten()])[1:].view(rows, cols)
    do = torch.cat([d.new_zeros(1), d.flatten()])[1:].view(rows, cols)
    so, yo = kernels.add_layernorm(xo, do, 0.5, gamma, beta, 1e-5)
    assert rel_err(so, rs) <= TOL[dtype] and rel_err(yo, ry) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 256), (7, 256), (64 * 333, 256), (5, 80), (3, 1000), (4, 1500)])
def test_add_layernorm2_equals_two_launches(dtype, rows, cols):
    """A layer's norm_final and the next norm in one kernel: bit for bit the two launches it
    replaces (the second LayerNorm reads the first's stored output), and near the fp32 math."""
    g = torch.Generator(device="cuda").manual_seed(rows + cols)
    x = torch.randn(rows, cols, device="cuda", generator=g).to(dtype) * 3
    d = torch.randn(rows, cols, device="cuda", generator=g).to(dtype)
    g1, b1, g2, b2 = (torch.randn(cols, device="cuda", generator=g).to(dtype) for _ in range(4))
    poison()
    z, y = kernels.add_layernorm2(x, d, 0.5, g1, b1, 1e-5, g2, b2, 1e-12)
    _, z2 = kernels.add_layernorm(x, d, 0.5, g1, b1, 1e-5)
    y2 = kernels.layernorm(z2, g2, b2, 1e-12)
    assert torch.equal(z, z2) and torch.equal(y, y2)
    _, rz = kernels.ref_add_layernorm(x, d, 0.5, g1, b1, 1e-5)
    assert rel_err(z, rz) <= TOL[dtype]
    assert rel_err(y, kernels.ref_add_layernorm(rz, torch.zeros_like(rz), 0, g2, b2, 1e-12)[1]) <= TOL[dtype]


def _seq_delta(parts, bias, dtype):
    """The partials summed in order in fp32, the bias added, rounded: what the kernel does."""
    d = parts[0].clone()
    for s in range(1, parts.shape[0]):
        d = d + parts[s]
    return (d + bias.float()).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("S,rows,cols", [(2, 1, 256), (4, 7, 256), (4, 256, 256), (8, 333, 512),
                                         (2, 64 * 333, 256), (3, 5, 80), (2, 3, 1000)])
def test_add_layernorm_parts_equals_reduced_delta(dtype, S, rows, cols):
    """Split-K partials reduced inside add + LayerNorm: bit for bit add_layernorm /
    add_layernorm2 on the delta the partials stand for (summed in order, biased, rounded),
    and near the fp32 math; rows the vector kernel cannot take (unaligned, or 1,000 fp32
    columns) give the same through the reduce-then-add_layernorm fallback."""
    g = torch.Generator(device="cuda").manual_seed(rows * S + cols)
    x = torch.randn(rows, cols, device="cuda", generator=g).to(dtype) * 3
    parts = torch.randn(S, rows, cols, device="cuda", generator=g) / S
    bias = torch.randn(cols, device="cuda", generator=g).to(dtype)
    g1, b1, g2, b2 = (torch.randn(cols, device="cuda", generator=g).to(dtype) for _ in range(4))
    delta = _seq_delta(parts, bias, dtype)
    poison()
    s, y = kernels.add_layernorm_parts(x, parts, bias, 0.5, g1, b1, 1e-5)
    s2, y2 = kernels.add_layernorm(x, delta, 0.5, g1, b1, 1e-5)
    assert torch.equal(s, s2) and torch.equal(y, y2)
    z, w = kernels.add_layernorm2_parts(x, parts, bias, 0.5, g1, b1, 1e-5, g2, b2, 1e-12)
    z2, w2 = kernels.add_layernorm2(x, delta, 0.5, g1, b1, 1e-5, g2, b2, 1e-12)
    assert torch.equal(z, z2) and torch.equal(w, w2)
    rs, ry = kernels.ref_add_layernorm(x, kernels.ref_parts_delta(parts, bias, dtype), 0.5, g1, b1, 1e-5)
    assert rel_err(s, rs) <= TOL[dtype] and rel_err(y, ry) <= TOL[dtype]
    # rows the vector kernel cannot take (not 16-byte aligned): reduced first, then the plain
    # warp kernel: the same sums, LayerNorm statistics in its own order (close, not bit-equal)
    xo = torch.cat([x.new_zeros(1), x.flatten()])[1:].view(rows, cols)
    so, yo = kernels.add_layernorm_parts(xo, parts, bias, 0.5, g1, b1, 1e-5)
    assert torch.equal(so, s2) and rel_err(yo, ry) <= TOL[dtype]
    zo, wo = kernels.add_layernorm2_parts(xo, parts, bias, 0.5, g1, b1, 1e-5, g2, b2, 1e-12)
    _, rz = kernels.ref_add_layernorm(x, delta, 0.5, g1, b1, 1e-5)
    assert rel_err(zo, rz) <= TOL[dtype] and torch.isfinite(wo).all()
    assert rel_err(wo, kernels.ref_add_layernorm(rz, torch.zeros_like(rz), 0, g2, b2, 1e-12)[1]) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_splitk_ffn_engine_close_to_fp32_model(dtype, monkeypatch):
    """The split-K FFN down-projection (partials reduced in add + LayerNorm) on for every row
    count: the engine's encoder output is as close to the fp32 PyTorch model as without it,
    at batch 1 and at a padded batch of 8, and its CTC top-1 picks agree with the model's as
    often."""
    from wenet_triton.engines.cuda import splitk_policy

    _, ref_eng, make = _aishell(dtype)
    off = dict(fused_silu=False, fused_ffn=False, fused_vocab=False)  # cuBLAS FFNs: split-K's path
    monkeypatch.setenv("WENET_TRITON_SPLITK", "0")
    plain = make(**off)
    monkeypatch.setenv("WENET_TRITON_SPLITK", "1000000:4")
    split = make(**off)
    assert plain.fm.splitk == [] and split.fm.splitk == splitk_policy("1000000:4")
    calls = []
    real = kernels.add_layernorm_parts
    monkeypatch.setattr(kernels, "add_layernorm_parts", lambda *a: calls.append(1) or real(*a))
    for B, T in [(1, 1011), (8, 613)]:
        x, lens = _random_inputs(B, T, seed=T)
        want = ref_eng.encode(x, lens)
        a, n_valid = want["encoder_out"], want["encoder_out_lens"]
        outs = [eng.encode(x, lens) for eng in (plain, split)]
        errs = [_enc_err(a, o["encoder_out"], n_valid) for o in outs]
        assert errs[1] <= 1.5 * errs[0] + 1e-3, errs
        top1 = [np.concatenate([o["beam_log_probs_idx"][i, :n, 0] for i, n in enumerate(n_valid)])
                for o in (want, *outs)]
        assert (top1[2] == top1[0]).mean() >= (top1[1] == top1[0]).mean() - 0.02
    assert calls, "the split-K path did not run"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,C,K,causal,ln", [(1, 1, 256, 15, False, False), (3, 37, 256, 15, False, False),
                                              (64, 129, 256, 8, True, True), (2, 50, 144, 31, False, True),
                                              (4, 5, 256, 8, True, False),
                                              (4, 300, 256, 15, True, True),  # 4 frames per block
                                              (2, 40, 512, 31, False, True),  # > 48 KB shared memory
                                              (64, 500, 256, 15, True, True),  # 16 frames per block
                                              (3, 30, 255, 15, True, True),  # odd C: one channel per thread
                                              (2, 30, 1536, 15, False, True)])  # C > 1024: 16-bit only
def test_glu_dwconv(dtype, B, T, C, K, causal, ln):
    g = torch.Generator(device="cuda").manual_seed(B * T)
    h = torch.randn(B, T, 2 * C, device="cuda", generator=g).to(dtype)
    lens = torch.randint(1, T + 1, (B,), device="cuda", generator=g).to(torch.int32)
    lens[0] = T
    w = torch.randn(C, K, device="cuda", generator=g) * 0.3
    bias = torch.randn(C, device="cuda", generator=g)
    pad = torch.randn(C, device="cuda", generator=g)
    lg = torch.randn(C, device="cuda", generator=g) if ln else None
    lb = torch.randn(C, device="cuda", generator=g) if ln else None
    poison()
    if C > 1024 and dtype == torch.float32:  # one channel per thread: C threads per block
        with pytest.raises(RuntimeError, match="wk_glu_dwconv failed"):
            kernels.glu_dwconv(h, lens, w, bias, pad, lg, lb, causal, 1e-5)
        return
    out = kernels.glu_dwconv(h, lens, w, bias, pad, lg, lb, causal, 1e-5)
    ref = kernels.ref_glu_dwconv(h, lens, w, bias, pad, lg, lb, causal, 1e-5)
    valid = torch.arange(T, device="cuda")[None, :] < lens[:, None]
    assert torch.isfinite(out).all()
    assert rel_err(out[valid], ref[valid]) <= TOL[dtype] * 2
    # one utterance alone runs with fewer frames per block: the same sums, bit for bit
    assert torch.equal(kernels.glu_dwconv(h[:1].contiguous(), lens[:1], w, bias, pad, lg, lb, causal, 1e-5), out[:1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,h,dk,layers", [(1, 256, 4, 64, 12), (5, 63, 4, 64, 3), (2, 17, 8, 36, 2),
                                             (3, 9, 2, 5, 1)])  # dk 36, 5: not 16-byte rows
def test_pack_rel_keys_equals_cat(dtype, B, T, h, dk, layers):
    """The rel-pos keys built by one copy kernel from views as the engine passes them (k: a
    column slice of the QKV GEMM output; p: one layer's slice of every layer's linear_pos)
    equal torch.cat's, bit for bit."""
    g = torch.Generator(device="cuda").manual_seed(T)
    D = h * dk
    qkv = torch.randn(B, T, 4 * D, device="cuda", generator=g).to(dtype)
    k = qkv[..., 2 * D: 3 * D].view(B, T, h, dk)
    pos_all = torch.randn(T, layers * D, device="cuda", generator=g).to(dtype)
    poison()
    for p in pos_all.split(D, dim=-1):
        out = kernels.pack_rel_keys(k, p)
        assert torch.equal(out, kernels.ref_pack_rel_keys(k, p))
    assert torch.equal(kernels.pack_rel_keys(k.contiguous(), p.contiguous()), kernels.ref_pack_rel_keys(k, p))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,V,ld,k", [(1, 3003, 3003, 10), (333, 4233, 4240, 10),
                                         (64 * 50, 5000, 5000, 16), (7, 40, 48, 32), (5, 40, 40, 17),
                                         # >= 2048 rows: one warp per row instead of four
                                         (4500, 4233, 4240, 20), (5000, 40, 40, 32), (2048, 3003, 3008, 3)])
def test_log_softmax_topk(dtype, rows, V, ld, k):
    g = torch.Generator(device="cuda").manual_seed(V)
    x = (torch.randn(rows, ld, device="cuda", generator=g) * 6).to(dtype)
    x[:, V:] = 1e4  # padding columns must be ignored
    poison()
    logp, v, i = kernels.log_softmax_topk(x, k, True, V)
    rlogp, rv, ri = kernels.ref_log_softmax_topk(x, k, True, V)
    assert torch.isfinite(logp).all() and torch.isfinite(v).all()
    assert (logp - rlogp).abs().max() <= 1e-4
    assert (v - rv).abs().max() <= 1e-4
    # indices agree except between exactly tied inputs; values at our indices must match
    assert (rlogp.gather(1, i) - rv).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,L,V,ld", [(1, 1, 3003, 3003), (10, 17, 3003, 3008), (640, 41, 4233, 4240)])
def test_log_softmax_gather(dtype, N, L, V, ld):
    g = torch.Generator(device="cuda").manual_seed(N * L)
    x = (torch.randn(N, L, ld, device="cuda", generator=g) * 5).to(dtype)
    x[..., V:] = 1e4  # padding columns must be ignored
    tgt = torch.randint(0, V, (N, L), device="cuda", generator=g)
    lens = torch.randint(1, L + 1, (N,), device="cuda", generator=g).to(torch.int32)
    poison()
    out = kernels.log_softmax_gather(x, tgt, lens, V)
    ref = kernels.ref_log_softmax_gather(x, tgt, lens, V)
    assert torch.isfinite(out).all() and (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Tq,Tk,dk,pos,bias", [
    (2, 4, 37, 37, 64, True, "keys"), (1, 4, 1, 5, 48, True, "keys"),
    (3, 8, 129, 129, 32, False, "causal"), (2, 2, 300, 300, 128, True, None),
    (2, 4, 20, 33, 96, False, "shared")])
def test_attention(dtype, B, H, Tq, Tk, dk, pos, bias):
    """The WenetRelPosAttention / WenetAttention kernel vs the plain softmax formula, with
    key-padding masks (finfo.min bias, as the export makes), causal masks, no mask, Tq != Tk."""
    from wenet_triton.model.conformer import attention_bias

    g = torch.Generator(device="cuda").manual_seed(Tq * dk)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g).to(dtype)  # noqa: E731
    qu, k, v = r(B, H, Tq, dk), r(B, H, Tk, dk), r(B, H, Tk, dk)
    qv, p = (r(B, H, Tq, dk), r(1, H, Tk, dk)) if pos else (None, None)
    if bias == "keys":
        lens = torch.randint(1, Tk + 1, (B,), device="cuda", generator=g)
        valid = torch.arange(Tk, device="cuda")[None, :] < lens[:, None]
        bias_t = attention_bias(valid, dtype)[:, None, None, :]
    elif bias == "causal":
        valid = torch.ones(Tq, Tk, device="cuda").tril().bool()
        bias_t = attention_bias(valid, dtype)[None, None].expand(B, 1, Tq, Tk).contiguous()
    elif bias == "shared":
        bias_t = r(1, 1, 1, Tk)
    else:
        bias_t = None
    poison()
    out = kernels.attention(qu, k, v, bias_t, qv, p, dk ** -0.5)
    ref = kernels.ref_attention(qu, k, v, bias_t, qv, p, dk ** -0.5)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= TOL[dtype] * 2


@pytest.fixture(scope="module", autouse=True)
def exact_fp32():
    """fp32 references must not use TF32 (cuDNN convs default to it)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _random_inputs(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 80, generator=g) * 2 + 12
    lens = torch.linspace(T, max(7, T // 4), B).to(torch.int32)
    return x.numpy(), lens.numpy()


def _aishell(dtype):
    """The random-weight AISHELL-shape model of the engine tests: (spec, the fp32 PyTorch
    engine on the CPU, make(**kwargs) -> a torch_cuda engine of it in `dtype`)."""
    from wenet_triton.engines import TorchEngine
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel

    spec = synthetic.random_spec(synthetic.AISHELL)
    settings = export_settings(spec, ASRModel.from_spec(spec))
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]

    def make(**kwargs):
        return CudaEngine(ASRModel.from_spec(spec), settings, "cuda", name, **kwargs)

    return spec, TorchEngine(ASRModel.from_spec(spec), settings, "cpu"), make


def _enc_err(want, got, lens):
    """The largest |difference| of two encoder outputs over each row's valid frames."""
    return max(np.abs(want[i, :n] - got[i, :n]).max() for i, n in enumerate(lens))


@pytest.mark.parametrize("shape", ["AISHELL", "U2PP"])
def test_cuda_engine_fp32_equals_eager_model(shape):
    """torch_cuda (kernels + graphs, fp32) vs the PyTorch model that CI checks against WeNet."""
    from wenet_triton.decode.search import rescoring_inputs
    from wenet_triton.engines import TorchEngine
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.pipeline import search_batch

    spec = synthetic.random_spec(getattr(synthetic, shape))
    settings = export_settings(spec, ASRModel.from_spec(spec))
    ref = TorchEngine(ASRModel.from_spec(spec), settings, "cpu")
    eng = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32", want_ctc_log_probs=True)
    for B, T in [(1, 7), (3, 301), (17, 1011)]:  # odd sizes exercise the bucket padding
        x, lens = _random_inputs(B, T, seed=T)
        a, b = ref.encode(x, lens), eng.encode(x, lens)
        np.testing.assert_array_equal(a["encoder_out_lens"], b["encoder_out_lens"])
        for i in range(B):
            n = a["encoder_out_lens"][i]
            assert np.abs(a["encoder_out"][i, :n] - b["encoder_out"][i, :n]).max() <= 1e-4
            assert np.abs(a["ctc_log_probs"][i, :n] - b["ctc_log_probs"][i, :n]).max() <= 1e-4
        nbest = search_batch(a, 10)
        pad, hl, rpad, ctc = rescoring_inputs(nbest, 10, spec.sos, spec.eos)
        ba, sa = ref.rescore(a["encoder_out"], a["encoder_out_lens"], pad, hl, rpad, ctc)
        bb, sb = eng.rescore(a["encoder_out"], a["encoder_out_lens"], pad, hl, rpad, ctc)
        assert (np.abs(sa - sb) / np.maximum(np.abs(sa), 1)).max() <= 1e-5
        np.testing.assert_array_equal(ba, bb)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_silu_ffn_kernel_and_engine(dtype):
    """The opt-in FFN GEMM + bias + SiLU kernel (tuned, compiled) against the two ops it
    replaces, and a torch_cuda engine using it: its encoder output is as close to the fp32
    PyTorch model as the engine's without it (no accuracy lost to the fusion)."""
    from wenet_triton.engines import triton_gemm

    g = torch.Generator(device="cuda").manual_seed(5)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    for M, K, N in ((1024, 256, 2048), (4096 + 17, 256, 2048), (2048, 144, 1152), (300, 256, 2048)):
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        w = (torch.randn(N, K, device="cuda", generator=g) * 0.05).to(dtype)
        b = torch.randn(N, device="cuda", generator=g).to(dtype)
        assert triton_gemm.applies(x) or M < triton_gemm.MIN_ROWS
        # Hopper and later: the persistent TMA kernel by default; the pointer kernel too
        assert triton_gemm._tma_fits(x, w) == (hopper and triton_gemm.TensorDescriptor is not None)
        ref = torch.nn.functional.silu(x.float() @ w.float().t() + b.float())
        for tma in (None, False) + ((True,) if hopper else ()):
            y = triton_gemm.linear_silu(x, w, b, tma=tma)
            assert rel_err(y, ref) <= TOL[dtype], (M, K, N, tma)
    _, ref_eng, make = _aishell(dtype)
    plain = make(fused_silu=False, fused_ffn=False, fused_vocab=False)
    fused = make(fused_silu=True, fused_ffn=False, fused_vocab=False)
    assert fused.fm.fused_silu
    # by environment (a served A/B: the model processes inherit serve's environment)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WENET_TRITON_FUSED_SILU", "1")
        assert make(cuda_graphs=False).fm.fused_silu
        mp.setenv("WENET_TRITON_FUSED_SILU", "0")
        assert not make(cuda_graphs=False).fm.fused_silu
    x, lens = _random_inputs(8, 1011, seed=3)  # 8 x 252 rows: the kernel's side of MIN_ROWS
    ref_out = ref_eng.encode(x, lens)
    a, n_valid = ref_out["encoder_out"], ref_out["encoder_out_lens"]
    errs = [_enc_err(a, eng.encode(x, lens)["encoder_out"], n_valid) for eng in (plain, fused)]
    assert errs[1] <= 1.5 * errs[0] + 1e-3, errs


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_ffn_kernel_and_engine(dtype):
    """The whole FFN as one Triton kernel (triton_ffn) against the ops it replaces, whole and
    split over the hidden units (fp32 partials), SiLU and ReLU, d 256 / 144 / 512, rows from
    one utterance to 64 x 20 s; the decoder's projection + log-softmax + gather
    (triton_vocab) against the unfused pair; then a torch_cuda engine using both: encoder
    output and rescoring scores as close to the fp32 PyTorch model as the engine's without."""
    from wenet_triton.decode.search import rescoring_inputs
    from wenet_triton.engines import triton_ffn, triton_vocab
    from wenet_triton.pipeline import search_batch

    g = torch.Generator(device="cuda").manual_seed(7)
    F = torch.nn.functional
    for M, d, H, act in ((256, 256, 2048, "silu"), (1000, 256, 2048, "relu"), (4096 + 17, 256, 2048, "silu"),
                         (32768, 256, 2048, "silu"), (300, 144, 1152, "silu"), (77, 512, 2048, "relu")):
        x = torch.randn(M, d, device="cuda", generator=g).to(dtype)
        w1 = (torch.randn(H, d, device="cuda", generator=g) * 0.05).to(dtype)
        b1 = torch.randn(H, device="cuda", generator=g).to(dtype)
        w2 = (torch.randn(d, H, device="cuda", generator=g) * 0.05).to(dtype)
        b2 = torch.randn(d, device="cuda", generator=g).to(dtype)
        assert triton_ffn.applies(x, w1, act)
        h = F.linear(x.float(), w1.float(), b1.float())
        h = (F.silu(h) if act == "silu" else F.relu(h)).to(dtype).float()  # rounded, as the model does
        ref = F.linear(h, w2.float(), b2.float())
        for can_split in (False, True):
            out = triton_ffn.ffn(x, w1, b1, w2, b2, act, can_split=can_split)
            if out.dtype == torch.float32:  # partials without b2
                assert can_split and out.shape[1:] == (M, d) and out.shape[0] > 1
                out = out.sum(0) + b2.float()
            else:
                assert out.shape == (M, d) and out.dtype == dtype
            assert rel_err(out, ref) <= TOL[dtype], (M, d, H, act, can_split)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert triton_ffn.plan(256, 256, 2048, True, sms).split > 1  # one utterance: split
    for N, L, V in ((10, 41, 4233), (640, 81, 4233), (3, 17, 5000)):  # 1 x 10 s, 64 x 20 s beam 10
        x = torch.randn(N, L, 256, device="cuda", generator=g).to(dtype)
        w = (torch.randn(V, 256, device="cuda", generator=g) * 0.1).to(dtype)
        b = torch.randn(V, device="cuda", generator=g)
        tgt = torch.randint(0, V, (N, L), device="cuda", generator=g)
        lens = torch.randint(1, L + 1, (N,), device="cuda", generator=g).int()
        ref = kernels.ref_log_softmax_gather(F.linear(x.float(), w.float(), b), tgt, lens)
        out = triton_vocab.proj_log_softmax_gather(x, w, b, tgt, lens)
        assert (out - ref).abs().max().item() <= 2e-4, (N, L, V)
    assert triton_ffn.plan(32768, 256, 2048, True, sms).split == 1

    spec, ref_eng, make = _aishell(dtype)
    plain = make(fused_silu=False, fused_ffn=False, fused_vocab=False)
    fused = make()  # the default: all three
    assert fused.fm.fused_silu and fused.fm.fused_ffn and fused.fm.fused_vocab and not plain.fm.fused_ffn
    with pytest.MonkeyPatch.context() as mp:  # each can be turned off by environment
        mp.setenv("WENET_TRITON_FUSED_FFN", "0")
        mp.setenv("WENET_TRITON_FUSED_VOCAB", "0")
        e = make(cuda_graphs=False).fm
        assert e.fused_silu and not e.fused_ffn and not e.fused_vocab
    for B, T in ((1, 1011), (8, 1011)):  # 256 rows (split) and 2,048
        x, lens = _random_inputs(B, T, seed=B)
        a = ref_eng.encode(x, lens)
        n_valid = a["encoder_out_lens"]
        nbest = search_batch(a, 10)
        pad, hl, rpad, ctc = rescoring_inputs(nbest, 10, spec.sos, spec.eos)
        _, s_ref = ref_eng.rescore(a["encoder_out"], n_valid, pad, hl, rpad, ctc)
        errs, serrs = [], []
        for eng in (plain, fused):
            errs.append(_enc_err(a["encoder_out"], eng.encode(x, lens)["encoder_out"], n_valid))
            _, s = eng.rescore(a["encoder_out"], n_valid, pad, hl, rpad, ctc)
            serrs.append((np.abs(s - s_ref) / np.maximum(np.abs(s_ref), 1)).max())
        assert errs[1] <= 1.5 * errs[0] + 1e-3, (B, errs)
        assert serrs[1] <= 1.5 * serrs[0] + 1e-3, (B, serrs)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_warm_kernels_tunes_every_row_class_at_load():
    """CudaEngine.warm_kernels (a server's load) runs the SiLU GEMM's autotuner for each size
    class of rows up to the largest batch; with the kernel off it does nothing."""
    from wenet_triton.engines import triton_gemm

    _, _, make = _aishell(torch.float16)
    eng = make(fused_silu=True)
    n, took = eng.warm_kernels(5000)
    assert n == len(triton_gemm.warm_rows(5000)) == 3 and took > 0
    tuned = {k[2] for kern in (triton_gemm._linear_silu_kernel, triton_gemm._linear_silu_tma_kernel)
             for k in kern.cache}  # autotuner keys: (N, K, M_CLASS, dtypes...)
    assert {1024 .bit_length(), 2048 .bit_length(), 4096 .bit_length()} <= tuned, tuned
    off = make(fused_silu=False)
    assert off.warm_kernels(5000) == (0, 0.0)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_conv_equals_cudnn_and_engine(dtype):
    """The subsampling kernels (triton_conv): the opt-in implicit-GEMM convolution against
    cuDNN's fused convolution + bias + ReLU at the AISHELL shapes (1 x 10 s, 3 x 7 s), the
    first conv (on by default) against the engine's CMVN + cast + unfold + GEMM, then engines
    with the first one and with both: encoder output as close to the fp32 model as without."""
    from wenet_triton.engines import triton_conv
    from wenet_triton.engines.cuda import conv2d_relu

    g = torch.Generator(device="cuda").manual_seed(11)
    cl = torch.channels_last
    for B, H, W in ((1, 513, 39), (3, 351, 39)):
        x = torch.relu(torch.randn(B, H, W, 256, device="cuda", generator=g)).to(dtype).permute(0, 3, 1, 2)
        w = (torch.randn(256, 256, 3, 3, device="cuda", generator=g) * 0.02).to(dtype).contiguous(memory_format=cl)
        b = torch.randn(256, device="cuda", generator=g).to(dtype)
        assert triton_conv.applies(x, w, (2, 2))
        y = triton_conv.conv2d_relu(x, w, b, (2, 2))
        ref = torch.relu(torch.nn.functional.conv2d(x.float(), w.float(), b.float(), 2))
        assert y.shape == ref.shape and y.is_contiguous(memory_format=cl)
        assert rel_err(y, ref) <= TOL[dtype]
        assert rel_err(y, conv2d_relu(x, w, b, (2, 2))) <= 2 * TOL[dtype]
    _, ref_eng, make = _aishell(dtype)
    plain = make(fused_conv=False, fused_conv1=False)
    # the first conv (CMVN .. ReLU in one kernel) against the engine's four ops
    speech = torch.randn(3, 1011, 80, device="cuda", generator=g) * 2 + 12
    fm = plain.fm
    w1, b1, k1, s1, kp = fm.conv1
    assert triton_conv.applies_first(speech, w1)
    y = triton_conv.first_conv_relu(speech, fm.cmvn, w1, b1, k1, s1)
    u = ((speech - fm.cmvn[0]) * fm.cmvn[1]).to(fm.dtype).unfold(1, k1, s1).unfold(2, k1, s1)
    u = torch.nn.functional.pad(u.reshape(*u.shape[:3], k1 * k1), (0, kp - k1 * k1))
    assert rel_err(y, torch.relu(torch.nn.functional.linear(u.float(), w1.float(), b1.float()))) <= TOL[dtype]
    conv1, conv = make(fused_conv=False), make(fused_conv=True)  # the first conv is on by default
    assert conv1.fm.fused_conv1 and not conv1.fm.fused_conv and conv.fm.fused_conv and not plain.fm.fused_conv1
    x, lens = _random_inputs(4, 1011, seed=4)
    a = ref_eng.encode(x, lens)
    errs = [_enc_err(a["encoder_out"], e.encode(x, lens)["encoder_out"], a["encoder_out_lens"])
            for e in (plain, conv1, conv)]
    assert max(errs[1:]) <= 1.5 * errs[0] + 1e-3, errs


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_ctc_head_equals_projection_and_top_k(dtype):
    """The fused CTC head (triton_ctc; the engine's default for batches) against linear_f32 +
    log_softmax_topk (the unfused pair): values within fp32 rounding, ids equal where the values are not
    near-tied; then an engine using it: its n-best inputs (top-k) equal the unfused engine's."""
    from wenet_triton.engines import triton_ctc
    from wenet_triton.engines.cuda import linear_f32

    g = torch.Generator(device="cuda").manual_seed(13)
    for R, V, k in ((250, 4233, 10), (32768, 4233, 10), (1000, 4233, 20), (77, 5000, 3)):
        x = torch.randn(R, 256, device="cuda", generator=g).to(dtype)
        w = (torch.randn(V, 256, device="cuda", generator=g) * 0.1).to(dtype)
        b = torch.randn(V, device="cuda", generator=g)
        pad = -V % 16  # the engine pads the projection's rows for an aligned leading dimension
        wp, bp = torch.nn.functional.pad(w.float(), (0, 0, 0, pad)), torch.nn.functional.pad(b, (0, pad))
        _, rv, ri = kernels.log_softmax_topk(linear_f32(x, wp, bp), k + 1, False, V)  # one past the k
        # split None: the rule (the vocabulary split over programs below MIN_ROWS frames); 1: one
        # program per frame tile walks the whole vocabulary
        for split in (None, 1):
            v, i = triton_ctc.proj_log_softmax_topk(x, w, b, k, split=split)
            assert (v - rv[:, :k]).abs().max().item() <= 2e-5, (R, V, k, split)
            # near-tied neighbours (also the k-th with the first one left out: bf16 rows tie there)
            # may come in either order
            gaps = (rv[:, :-1] - rv[:, 1:]).abs() > 1e-4
            clear = gaps & torch.cat([torch.ones_like(gaps[:, :1]), gaps[:, :-1]], 1)
            assert torch.equal(i[clear], ri[:, :k][clear]), (R, V, k, split)
    _, _, make = _aishell(dtype)
    plain, fused = make(fused_ctc=False), make(fused_ctc=True)
    x, lens = _random_inputs(4, 1011, seed=6)
    a = plain.encode(x, lens)
    min_rows, split_rows = triton_ctc.MIN_ROWS, triton_ctc.SPLIT_ROWS
    # these 4 x 252 rows take it too: the one-program form (MIN_ROWS 0), the split form (opt-in)
    for triton_ctc.MIN_ROWS, triton_ctc.SPLIT_ROWS in ((0, False), (min_rows, True)):
        try:
            c = fused.encode(x, lens)
        finally:
            triton_ctc.MIN_ROWS, triton_ctc.SPLIT_ROWS = min_rows, split_rows
        assert fused.fm.fused_ctc and not plain.fm.fused_ctc
        for i, n in enumerate(a["encoder_out_lens"]):
            np.testing.assert_allclose(a["beam_log_probs"][i, :n], c["beam_log_probs"][i, :n], atol=2e-5)
            agree = (a["beam_log_probs_idx"][i, :n] == c["beam_log_probs_idx"][i, :n]).mean()
            assert agree >= 0.999, agree


def test_coarse_decoder_buckets_equal_eager_model():
    """The streaming finals' decoder (coarse_decoder_buckets: CUDA graphs over frames 64, 128,
    256, ... and hypothesis lengths 16, 32, 64, ...) rescores as the PyTorch model does,
    also when a graph captured for one shape replays another of its bucket (after a larger
    one left its buffers full), and after warm_rescore() captured the graphs ahead."""
    from wenet_triton.decode.search import rescoring_inputs
    from wenet_triton.engines import TorchEngine
    from wenet_triton.engines.cuda import CudaEngine, _pow2
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel

    spec = synthetic.random_spec(synthetic.U2PP)
    settings = export_settings(spec, ASRModel.from_spec(spec))
    ref = TorchEngine(ASRModel.from_spec(spec), settings, "cpu")
    eng = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32", coarse_decoder_buckets=True)
    rng = np.random.default_rng(3)
    # (batch, fbank frames, longest hypothesis): 301 / 290 / 270 frames fall in one bucket
    shapes = [(1, 40, 6), (3, 301, 9), (3, 270, 7), (2, 290, 5), (1, 33, 2), (3, 301, 17)]
    keys = set()
    for B, T, L in shapes:
        x, lens = _random_inputs(B, T, seed=T)
        enc = ref.encode(x, lens)
        nbest = [[(tuple(rng.integers(1, spec.vocab_size - 1, rng.integers(0, L + 1))), -10 * rng.random())
                  for _ in range(10)] for _ in range(B)]
        nbest[0][0] = (tuple(range(1, L + 1)), -1.0)  # one hypothesis of the longest length
        pad, hl, rpad, ctc = rescoring_inputs(nbest, 10, spec.sos, spec.eos)
        keys.add((eng._bucket_batch(B), _pow2(enc["encoder_out"].shape[1], 64), _pow2(L + 2, 16)))
        ba, sa = ref.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, hl, rpad, ctc)
        bb, sb = eng.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, hl, rpad, ctc)
        assert (np.abs(sa - sb) / np.maximum(np.abs(sa), 1)).max() <= 1e-5, (B, T, L)
        np.testing.assert_array_equal(ba, bb)
    assert len(keys) == 4  # shapes 2 and 3 share a graph, so do 1 and 5
    assert len(eng.dec_graphs.graphs) == len(keys)

    # warmed ahead: finals of up to 100 encoder frames at batch 1-2 capture nothing new
    warm = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32", coarse_decoder_buckets=True)
    shapes = warm.coarse_rescore_shapes(100, batches=(1, 2))
    assert shapes == [(b, t, l) for b in (1, 2) for t, l in ((64, 16), (64, 32), (128, 16), (128, 32),
                                                           (128, 64))]
    assert warm.warm_rescore(shapes)[0] == len(shapes) == len(warm.dec_graphs.graphs)
    for B, T, L in [(1, 40, 6), (2, 290, 5), (1, 390, 20)]:
        x, lens = _random_inputs(B, T, seed=T)
        enc = ref.encode(x, lens)
        nbest = [[(tuple(rng.integers(1, spec.vocab_size - 1, rng.integers(0, L + 1))), -10 * rng.random())
                  for _ in range(10)] for _ in range(B)]
        pad, hl, rpad, ctc = rescoring_inputs(nbest, 10, spec.sos, spec.eos)
        ba, sa = ref.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, hl, rpad, ctc)
        bb, sb = warm.rescore(enc["encoder_out"], enc["encoder_out_lens"], pad, hl, rpad, ctc)
        assert (np.abs(sa - sb) / np.maximum(np.abs(sa), 1)).max() <= 1e-5, (B, T, L)
        np.testing.assert_array_equal(ba, bb)
    assert len(warm.dec_graphs.graphs) == len(shapes)


def test_warm_encoder_captures_every_graph_ahead_and_changes_no_output():
    """CudaEngine.warm_encoder (a server's load) captures the encoder graph of every key of
    encoder_keys; afterwards inputs within its limits capture nothing new, and their outputs
    equal those of an engine that captured its graphs on first use."""
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel

    spec = synthetic.random_spec(synthetic.U2PP)
    settings = export_settings(spec, ASRModel.from_spec(spec))
    warm = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32")
    cold = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32")
    keys = warm.encoder_keys(4, 400)
    n, took = warm.warm_encoder(4, 400)
    assert n == len(keys) == 3 * 7 == len(warm.enc_graphs.graphs) and took > 0
    assert warm.warm_encoder(4, 400)[0] == 0  # all there already
    for B, T in [(1, 40), (3, 301), (4, 399), (2, 170)]:
        x, lens = _random_inputs(B, T, seed=T)
        a, b = warm.encode(x, lens), cold.encode(x, lens)
        for name in ("encoder_out", "encoder_out_lens", "beam_log_probs", "beam_log_probs_idx"):
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)
    assert len(warm.enc_graphs.graphs) == len(keys)


def _available_models():
    import os

    from conftest import SHARED
    return [m for m in MODELS if os.path.exists(os.path.join(SHARED, "reference", m, "decode.json"))
            and os.path.exists(os.path.join(SHARED, "models", m, "final.pt"))]


@pytest.mark.parametrize("name", _available_models())
def test_cuda_engine_matches_wenet(name, tmp_path):
    """fp32 against WeNet's reference; fp16 accuracy report (written to $WENET_REPORT_DIR)."""
    import json
    import os

    from conftest import model_dir

    from wenet_triton.audio.frontend import pad_feats
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.pipeline import Recognizer

    dec, npz = reference(name)
    spec = load_model_dir(model_dir(name))
    model = ASRModel.from_spec(spec)
    settings = export_settings(spec, model, dec["beam_size"], dec["ctc_weight"], dec["reverse_weight"])
    vocab = Vocab(spec.vocab, spec.eos)
    utts = sorted(dec["utts"])
    refs = [npz(u) for u in utts]
    feats = [r["feats"] for r in refs]
    report = {}
    for dtype in ("float32", "float16", "bfloat16"):
        eng = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", dtype)
        out = eng.encode(*pad_feats(feats))
        errs, top1 = [], []
        for b, r in enumerate(refs):
            n = r["encoder_out"].shape[0]
            assert out["encoder_out_lens"][b] == n
            e = out["encoder_out"][b, :n] - r["encoder_out"]
            errs.append((np.abs(e).max(), np.linalg.norm(e) / np.linalg.norm(r["encoder_out"])))
            top1.append(np.mean(out["beam_log_probs_idx"][b, :n, 0] == r["ctc_topk_idx"][:, 0]))
        res = Recognizer(eng, vocab).recognize_feats(feats)
        same = sum(x.ids == dec["utts"][u]["rescored"] for x, u in zip(res, utts))
        report[dtype] = {"encoder_out_max_abs": float(max(e[0] for e in errs)),
                         "encoder_out_rel_l2": float(max(e[1] for e in errs)),
                         "ctc_top1_agreement": float(np.mean(top1)),
                         "rescored_identical": f"{same}/{len(utts)}"}
        if dtype == "float32":
            assert report[dtype]["encoder_out_max_abs"] <= 1e-4, report
            assert same >= len(utts) - 1, report
        else:
            assert report[dtype]["encoder_out_rel_l2"] <= 3e-2, report
    if os.environ.get("WENET_REPORT_DIR"):
        with open(os.path.join(os.environ["WENET_REPORT_DIR"], f"accuracy_{name}.json"), "w") as f:
            json.dump(report, f, indent=2)
    print(name, json.dumps(report))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (multi-GPU serving)")
def test_two_engines_on_two_gpus_agree():
    """Multi-GPU serving (docs/multigpu.md): fp16 engines on cuda:0 and cuda:1, used in turns
    from one process whose current device stays cuda:0, give the same encoder outputs (fp16
    tolerance) and the same transcripts, with fbank on the CPU or on each engine's GPU; the
    CUDA graphs and kernels of the cuda:1 engine run there."""
    import glob
    import os

    from conftest import ROOT, SHARED

    from wenet_triton.audio.frontend import Fbank, pad_feats, read_audio
    from wenet_triton.audio.torch_fbank import TorchFbank
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.paths import SAMPLES_DIR
    from wenet_triton.pipeline import Recognizer

    spec = load_model_dir(os.path.join(ROOT, "models", "demo_zh_synth"))
    settings = export_settings(spec, ASRModel.from_spec(spec))
    vocab = Vocab(spec.vocab, spec.eos)
    paths = sorted(glob.glob(os.path.join(SHARED, "data", "synth_test", "*.wav")))[:30] \
        or sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.wav")))
    wavs = [read_audio(p) for p in paths]
    feats = [Fbank(settings.fbank)(w) for w in wavs]
    x, lens = pad_feats(feats)
    torch.cuda.set_device(0)
    engines = {d: CudaEngine(ASRModel.from_spec(spec), settings, d, "float16") for d in ("cuda:0", "cuda:1")}
    outs, texts, fused = {}, {}, {}
    for _ in range(2):  # in turns: graphs captured, then replayed, after the other GPU's calls
        for d, eng in engines.items():
            outs[d] = eng.encode(x, lens)
            texts[d] = [r.text for r in Recognizer(eng, vocab).recognize_feats(feats)]
            f, fl = TorchFbank(settings.fbank, d).batch_tensor(wavs)  # fbank on the engine's GPU
            assert f.device == torch.device(d)
            fused[d] = eng.encode_device(f, fl)
            assert torch.cuda.current_device() == 0
    enc1 = engines["cuda:1"].encode_tensors(torch.from_numpy(x).to("cuda:1"), torch.from_numpy(lens).to("cuda:1"))
    assert all(t.device == torch.device("cuda:1") for t in enc1)
    graphs = engines["cuda:1"].enc_graphs.graphs.values()
    assert graphs and all(t.device == torch.device("cuda:1") for _, ins, outs in graphs for t in (*ins, *outs))
    a, b = outs["cuda:0"], outs["cuda:1"]
    np.testing.assert_array_equal(a["encoder_out_lens"], b["encoder_out_lens"])
    for i, n in enumerate(a["encoder_out_lens"]):
        e0, e1 = a["encoder_out"][i, :n], b["encoder_out"][i, :n]
        assert np.linalg.norm(e0 - e1) / np.linalg.norm(e0) <= 2e-3
        assert np.mean(a["beam_log_probs_idx"][i, :n, 0] == b["beam_log_probs_idx"][i, :n, 0]) >= 0.99
    for d in engines:  # GPU fbank: the encoder outputs of the CPU-fbank run, within fp16
        for i, n in enumerate(a["encoder_out_lens"]):
            e, ref = fused[d]["encoder_out"][i, :n], a["encoder_out"][i, :n]
            assert np.linalg.norm(e - ref) / np.linalg.norm(ref) <= 3e-2
    assert texts["cuda:0"] == texts["cuda:1"], [(s, t) for s, t in zip(texts["cuda:0"], texts["cuda:1"]) if s != t]
    print(f"2 GPUs: {len(paths)}/{len(paths)} transcripts identical")


# -- the torch_cuda chunk encoder (live streams, caches on the GPU) --------------------------------
def _u2pp_chunk_runner(dtype, **kw):
    """(model, DeviceChunkRunner) of u2pp_conformer at chunk 8, 4 left chunks (WeNet's
    streaming reference config), on cuda in `dtype` (kernels when built, CUDA graphs)."""
    from conftest import model_dir

    from wenet_triton.engines.streaming import CudaChunkBackend, DeviceChunkRunner
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.model.streaming import streaming_settings

    model = ASRModel.from_spec(load_model_dir(model_dir("u2pp_conformer")))
    s = streaming_settings(model, 8, 4, 10)
    return model, DeviceChunkRunner(CudaChunkBackend(model, s, "cuda", dtype, **kw))


def test_cuda_chunk_encoder_fp32_equals_torch_demo_model():
    """Without ../shared (the GPU machine): the fp32 torch_cuda chunk encoder (kernels, CUDA
    graphs, slot pools) equals the fp32 PyTorch ChunkEncoder (proven against WeNet on the
    CPU) on the demo model, chunk 16 / 4 left chunks as served: batches of 1, 3 and 17 at
    different offsets, random caches (one not yet full), a short last window; outputs and
    next states within 1e-3 (fp32 GEMMs on different kernels), top-1 ids equal."""
    from test_streaming import _alone, _states

    from wenet_triton.engines.streaming import (
        CudaChunkBackend,
        DeviceChunkRunner,
        TorchChunkBackend,
        _dummy_chunk_inputs,
    )
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.model.streaming import streaming_settings

    demo = os.path.join(ROOT, "models", "demo_zh_synth")
    model = ASRModel.from_spec(load_model_dir(demo))
    s = streaming_settings(model, 16, 4, 10)
    runner = DeviceChunkRunner(CudaChunkBackend(model, s, "cuda", "float32", slots=2))
    ref = TorchChunkBackend(ASRModel.from_spec(load_model_dir(demo)), s, "cuda")
    worst = 0.0
    for B in (1, 3, 17):
        offs = [(53 * i * i) % 2000 for i in range(B)]
        windows, states, feed = _states(_dummy_chunk_inputs(s, B, s["required_cache_size"], seed=B,
                                                            offsets=offs))
        want = ref.run(feed)
        outs, new = runner.step(windows, [runner.load(st) for st in states])
        for i, o in enumerate(outs):
            n = int(want["chunk_out_lens"][i])
            assert o.chunk_out.shape[0] == n
            err = max(float(np.abs(o.chunk_out - want["chunk_out"][i, :n]).max()),
                      float(np.abs(o.log_probs - want["log_probs"][i, :n]).max()))
            worst = max(worst, err)
            assert err <= 1e-3, (B, i, err)
            np.testing.assert_array_equal(o.log_probs_idx[:, 0], want["log_probs_idx"][i, :n, 0])
            st = runner.read(new[i])
            w = want if len(windows[i]) == s["decoding_window"] else _alone(ref, feed, i)
            j = i if w is want else 0
            assert st.offset == int(w["r_offset"][j, 0])
            np.testing.assert_array_equal(st.cache_mask, w["r_cache_mask"][j])
            assert np.abs(st.att_cache - w["r_att_cache"][j]).max() <= 1e-3, (B, i)
            assert np.abs(st.cnn_cache - w["r_cnn_cache"][j]).max() <= 1e-3, (B, i)
    print(f"torch_cuda chunk fp32 vs torch fp32 (demo model): max abs diff {worst:.2e}")


def test_cuda_chunk_encoder_fp32_matches_wenet():
    """fp32 torch_cuda chunk encoder (CUDA kernels, a graph per batch bucket; pools starting at
    2 slots, so they grow while graphs exist) against WeNet's chunk8_left4 reference: the
    encoder_out of 8 utterances streamed as a server feeds them (streams joining one per step:
    mixed offsets, cache fills, padded last windows) within 1e-4; then the reference decode of
    all 20 (prefix beam search, rescoring on the fp32 GPU engine): WeNet's transcripts."""
    import json

    from conftest import model_dir, shared_path
    from test_streaming import assert_staggered_matches_wenet, feats_of

    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model.checkpoint import load_model_dir
    from wenet_triton.model.conformer import ASRModel
    from wenet_triton.streaming import StreamingRecognizer, feature_windows

    _, runner = _u2pp_chunk_runner("float32", slots=2)
    be = runner.backend
    assert be.graphs.enabled and be.fm.kern
    assert_staggered_matches_wenet(runner)
    assert be.graphs.graphs and be.capacity > 3 and be.live_slots == 0

    with open(shared_path("reference", "u2pp_conformer", "streaming.json")) as f:
        sref = json.load(f)
    spec = load_model_dir(model_dir("u2pp_conformer"))
    settings = export_settings(spec, ASRModel.from_spec(spec), sref["beam_size"], sref["ctc_weight"],
                               sref["reverse_weight"])
    eng = CudaEngine(ASRModel.from_spec(spec), settings, "cuda", "float32")
    rec = StreamingRecognizer(eng, Vocab(spec.vocab, spec.eos), runner)
    ref = sref["configs"]["chunk8_left4"]["utts"]
    utts = sorted(ref)
    res = rec.recognize_windows([feature_windows(feats_of(u), runner.settings) for u in utts])
    same = sum(r.text == ref[u]["rescored_text"] and r.ids == ref[u]["rescored"] for r, u in zip(res, utts))
    greedy = sum(r.greedy == ref[u]["greedy"] for r, u in zip(res, utts))
    print(f"torch_cuda chunk fp32: {same}/{len(utts)} transcripts, {greedy}/{len(utts)} greedy as WeNet's")
    # as the full-context fp32 engine test: near-tied n-best of random weights may swap one
    assert same >= len(utts) - 1 and greedy >= len(utts) - 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_chunk_encoder_half_close_to_fp32_torch(dtype):
    """fp16 (the served default) / bf16 torch_cuda chunk steps with graphs vs the fp32
    PyTorch ChunkEncoder on the same inputs: batches of 1, 3, 17 (graph buckets 1, 4, 32,
    scratch rows), random caches at different offsets, one not yet full, a short last window:
    CTC log-probs within 1e-2 relative (bf16: 4e-2), top-1 ids mostly equal, chunk_out and
    the next caches close; a whole staggered stream run close to WeNet's encoder_out; graph
    replay equals eager."""
    from test_streaming import _alone, _states, chunked_ref, feats_of, run_staggered

    from wenet_triton.engines.streaming import TorchChunkBackend, _dummy_chunk_inputs
    from wenet_triton.streaming import feature_windows

    tol = {"float16": (1e-2, 0.95, 3e-2), "bfloat16": (4e-2, 0.85, 8e-2)}[dtype]
    model, runner = _u2pp_chunk_runner(dtype, slots=2)
    s = runner.settings
    ref = TorchChunkBackend(model, s, "cuda")

    def rel_l2(a, b):
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-6))

    same = total = 0
    for B in (1, 3, 17):
        offs = [(37 * i * i) % 3000 for i in range(B)]
        windows, states, feed = _states(_dummy_chunk_inputs(s, B, 32, seed=B, offsets=offs))
        want = ref.run(feed)
        outs, new = runner.step(windows, [runner.load(st) for st in states])
        for i, o in enumerate(outs):
            n = int(want["chunk_out_lens"][i])
            lp = want["log_probs"][i, :n]
            assert np.isfinite(o.chunk_out).all() and np.isfinite(o.log_probs).all()
            assert np.abs(o.log_probs - lp).max() / np.abs(lp).max() <= tol[0], (B, i)
            same += int((o.log_probs_idx[:, 0] == want["log_probs_idx"][i, :n, 0]).sum())
            total += n
            assert rel_l2(o.chunk_out, want["chunk_out"][i, :n]) <= tol[2], (B, i)
            st = runner.read(new[i])
            w = want if len(windows[i]) == s["decoding_window"] else _alone(ref, feed, i)
            j = i if w is want else 0
            assert st.offset == int(w["r_offset"][j, 0])
            np.testing.assert_array_equal(st.cache_mask, w["r_cache_mask"][j])
            assert rel_l2(st.att_cache, w["r_att_cache"][j]) <= tol[2], (B, i)
            assert rel_l2(st.cnn_cache, w["r_cnn_cache"][j]) <= tol[2], (B, i)
    assert same / total >= tol[1], (same, total)
    utts = [f"test_{i:06d}" for i in range(8)]
    wins = [feature_windows(feats_of(u), s) for u in utts]
    graphs = run_staggered(runner, wins)
    _, eager = _u2pp_chunk_runner(dtype, cuda_graphs=False)
    assert not eager.backend.graphs.enabled
    for u, a, b in zip(utts, graphs, run_staggered(eager, wins)):
        assert rel_l2(a, chunked_ref("chunk8_left4", u)["encoder_out"]) <= tol[2], u
        assert rel_l2(a, b) <= 5e-3, u  # same kernels: ~0; stale or crossed rows: O(1)
    print(f"torch_cuda chunk {dtype}: top-1 {same}/{total} as fp32 torch")


def test_cuda_chunk_encoder_transcripts_demo_model():
    """The demo model (trained, causal, chunk-trained; synth_test or the package samples),
    chunk 16 with 4 left chunks, decoded through `streaming_recognizer` (transcribe
    --chunk-size --engine torch_cuda: the chunk encoder shares the GPU engine's weights): fp32
    torch_cuda gives the transcripts of the fp32 PyTorch chunk encoder; fp16 (served default)
    nearly all of them, at the same CER."""
    import glob
    import os

    from conftest import ROOT, SHARED

    from wenet_triton.api import load_model
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.cer import cer
    from wenet_triton.engines.artifacts import ensure_export
    from wenet_triton.engines.streaming import DeviceChunkRunner
    from wenet_triton.paths import SAMPLES_DIR
    from wenet_triton.streaming import streaming_recognizer

    demo = os.path.join(ROOT, "models", "demo_zh_synth")
    wav_dir = os.path.join(SHARED, "data", "synth_test")
    if not os.path.exists(os.path.join(wav_dir, "text")):
        wav_dir = SAMPLES_DIR
    paths = sorted(glob.glob(os.path.join(wav_dir, "*.wav")))[:40]
    with open(os.path.join(wav_dir, "text"), encoding="utf-8") as f:
        refs = dict(line.rstrip("\n").split(maxsplit=1) for line in f if line.strip())
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    wavs = [read_audio(p) for p in paths]
    texts, recs = {}, {}
    for dtype in ("float32", "float16"):
        rec = recs[dtype] = load_model(demo, "torch_cuda", "cuda", dtype)
        ed = ensure_export(demo, None, rec.decoding.beam_size)
        srec = streaming_recognizer(rec.engine, ed, demo, "torch_cuda", 16, 4, rec.decoding)
        assert isinstance(srec.runner, DeviceChunkRunner) and srec.runner.backend.fm is rec.engine.fm
        texts[dtype] = [r.text for r in srec.recognize(wavs)]
    rec = recs["float32"]
    torch_rec = streaming_recognizer(rec.engine, ed, demo, "torch", 16, 4, rec.decoding, "cuda")
    assert not isinstance(torch_rec.runner, DeviceChunkRunner)
    texts["torch"] = [r.text for r in torch_rec.recognize(wavs)]
    rate = {k: cer([(refs[n], t) for n, t in zip(names, v)])[0] for k, v in texts.items()}
    same32 = sum(a == b for a, b in zip(texts["float32"], texts["torch"]))
    same16 = sum(a == b for a, b in zip(texts["float16"], texts["float32"]))
    print(f"demo chunk16_left4, {len(wavs)} wavs: fp32 torch_cuda = torch {same32}, fp16 = fp32 "
          f"{same16}; CER {rate}")
    assert same32 >= len(wavs) - 1, (same32, rate)
    assert same16 >= 0.9 * len(wavs) and abs(rate["float16"] - rate["float32"]) <= 0.01, (same16, rate)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() < (9, 0), reason="needs triton and a Hopper GPU")
def test_fp8_silu_gemm_kernel_quantizes_as_the_reference():
    """The e4m3 SiLU GEMM (both kernels) against fp32 arithmetic over the same e4m3 operands,
    quantized once at the end: equal but for sums that land next to a rounding boundary (the
    order of the fp32 sums differs), which move by one e4m3 step at most."""
    from wenet_triton.engines import fp8, triton_gemm

    g = torch.Generator(device="cuda").manual_seed(8)
    for M, K, N in ((1024, 256, 2048), (4096 + 17, 256, 2048), (2048, 192, 768)):
        x = torch.randn(M, K, device="cuda", generator=g)
        w = torch.randn(N, K, device="cuda", generator=g) * 0.05
        b = torch.randn(N, device="cuda", generator=g).half()
        sx, sw = fp8.act_scale(x.abs().max().item()), fp8.weight_scale(w)
        xq, wq = fp8.quantize(x, sx), fp8.quantize(w, sw)
        ref = torch.nn.functional.silu((xq.float() @ wq.float().t()) * (sx * sw) + b.float())
        sh = fp8.act_scale(ref.abs().max().item() * 0.9)  # some values clamp
        want = fp8.quantize(ref, sh).float()
        for tma in (False, True):
            y = triton_gemm.linear_silu(xq, wq, b, tma=tma, scale=sx * sw, out_scale=sh)
            assert y.dtype == torch.float8_e4m3fn and y.shape == (M, N)
            got = y.float()
            off = got != want
            assert off.float().mean().item() < 0.01, (M, K, N, tma)
            # one step of e4m3 (3 mantissa bits) at most where they differ, but for values near
            # zero: Hopper's FP8 instructions add within each BK-wide slice in reduced precision
            # (~1e-5 of the range here), which moves a few subnormals by more (measured on an
            # H200: 0.25 % differ, those beyond one step all below 2^-5 of 448)
            step = want.abs()[off] / 8 + 2 ** -9
            assert ((got - want).abs()[off] <= step + 2 ** -5).all(), (M, K, N, tma)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() < (9, 0), reason="needs triton and a Hopper GPU")
def test_fp8_engine_follows_its_simulation():
    """A torch_cuda engine with FP8 FFNs against the fp32 PyTorch model running the FP8
    simulation (engines/fp8.simulate, the arithmetic the CPU's CER measurement uses): closer to
    it than to the plain fp32 model, and its FFNs really took the FP8 path (outputs differ
    from the 16-bit engine's)."""
    from wenet_triton.engines import fp8

    spec, ref_eng, make = _aishell(torch.float16)
    x, lens = _random_inputs(8, 1011, seed=4)  # 8 x 252 rows: batches take the FP8 path
    scales = fp8.calibrate(ref_eng.model, fp8.feats_batches([x[i, :n] for i, n in enumerate(lens)]))
    eng8, eng16 = make(fp8_scales=scales), make()
    assert sum(p[5] is not None for st, _ in eng8.fm.layers for k, _, p, _ in st if k == "ffn") == 24
    plain = ref_eng.encode(x, lens)
    with fp8.simulate(ref_eng.model, scales):
        sim = ref_eng.encode(x, lens)
    n = plain["encoder_out_lens"]
    got8, got16 = eng8.encode(x, lens)["encoder_out"], eng16.encode(x, lens)["encoder_out"]
    e_sim, e_plain = _enc_err(sim["encoder_out"], got8, n), _enc_err(plain["encoder_out"], got8, n)
    assert e_sim < e_plain, (e_sim, e_plain)
    assert _enc_err(got16, got8, n) > 0
    # scales for another model are refused with a clear error
    bad = dict(scales, ffn=dict(list(scales["ffn"].items())[:3]))
    with pytest.raises(ValueError, match="do not fit this model"):
        make(fp8_scales=bad)
