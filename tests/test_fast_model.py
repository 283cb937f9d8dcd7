"""The GPU engine's restructured math (fused qkv, rel-pos as one attention with concatenated
heads, decoder K/V per utterance, kernel references), checked in fp32 on the CPU so CI covers
it; the CUDA kernels themselves are tested in test_gpu.py."""
import numpy as np
import pytest
import torch
from conftest import MODELS, reference

from wenet_triton.audio.frontend import pad_feats
from wenet_triton.decode.search import ctc_prefix_beam_search, rescoring_inputs
from wenet_triton.engines.cuda import FastModel, splitk_policy
from wenet_triton.model.conformer import ExportDecoder


@pytest.mark.parametrize("name", MODELS)
def test_fast_model_matches_wenet_fp32(name, torch_models):
    model = torch_models[name]
    fm = FastModel(model, torch.float32, "cpu", use_kernels=False)
    dec, npz = reference(name)
    utts = sorted(dec["utts"])[:6]
    refs = [npz(u) for u in utts]
    x, lens_in = pad_feats([r["feats"] for r in refs])
    with torch.no_grad():
        enc, lens, _, topv, topi = fm.encode(torch.from_numpy(x), torch.from_numpy(lens_in), 10)
        for b, r in enumerate(refs):
            n = r["encoder_out"].shape[0]
            assert lens[b] == n
            assert np.abs(enc[b, :n].numpy() - r["encoder_out"]).max() <= 1e-4
            assert np.abs(topv[b, :n].numpy() - r["ctc_topk_values"]).max() <= 1e-4
        nbest = [ctc_prefix_beam_search(topv[b].numpy(), topi[b].numpy(), int(lens[b]), 10)
                 for b in range(len(refs))]
        pad, hl, rpad, ctc = rescoring_inputs(nbest, 10, model.spec.sos, model.spec.eos)
        t = torch.from_numpy
        ref_best, ref_score = ExportDecoder(model, dec["ctc_weight"], dec["reverse_weight"])(
            enc, lens, t(pad), t(hl), t(rpad), t(ctc))
        best, score = fm.rescore(enc, lens, t(pad), t(hl), t(rpad), t(ctc), dec["ctc_weight"],
                                 dec["reverse_weight"])
    assert torch.equal(best, ref_best)
    assert ((score - ref_score).abs() / ref_score.abs().clamp(min=1)).max() <= 1e-5
    for b, u in enumerate(utts):
        assert list(nbest[b][int(best[b])][0]) == dec["utts"][u]["rescored"]


@pytest.mark.parametrize("name", MODELS)
def test_out_frames_equals_the_encoder_mask(name, torch_models):
    """CudaEngine.encode_tensors(host_lens=...) sizes its outputs with FastModel.out_frames
    instead of reading out_lens back from the GPU: both must agree for every length."""
    fm = FastModel(torch_models[name], torch.float32, "cpu", use_kernels=False)
    lens = torch.arange(fm.right_context + 1, 90, dtype=torch.int32)
    x = torch.randn(len(lens), 96, 80)
    with torch.no_grad():
        _, out_lens, _, _, _ = fm.encode(x, lens, 4)
    assert out_lens.tolist() == [fm.out_frames(int(n)) for n in lens]
    # encode_tensors takes the longest utterance's out_frames as the batch's: never falling
    assert out_lens.tolist() == sorted(out_lens.tolist())
    assert fm.out_frames(0) == 0 and fm.out_frames(fm.right_context) == 0


def test_splitk_policy_rules():
    assert splitk_policy("512:4, 1024:2") == [(512, 4), (1024, 2)]
    assert splitk_policy("0") == [] and splitk_policy("") == []
    with pytest.raises(ValueError, match="WENET_TRITON_SPLITK"):
        splitk_policy("512-4")
    fm = FastModel.__new__(FastModel)
    fm.splitk = splitk_policy("512:4,1024:2")
    assert [fm._split(r, 2048) for r in (1, 512, 513, 1024, 1025)] == [4, 4, 2, 2, 1]
    assert fm._split(256, 100) == 1  # K not a multiple of 8 x S: one GEMM


@pytest.mark.parametrize("name", MODELS)
def test_splitk_ffn_matches_wenet_fp32(name, torch_models):
    """The FFN down-projection as S GEMMs over slices of K whose partials the add + LayerNorm
    step reduces (the GPU engine's few-rows path; fp32 here), against WeNet's outputs."""
    fm = FastModel(torch_models[name], torch.float32, "cpu", use_kernels=False)
    fm.splitk = splitk_policy("100000:4")
    dec, npz = reference(name)
    refs = [npz(u) for u in sorted(dec["utts"])[:3]]
    x, lens_in = pad_feats([r["feats"] for r in refs])
    seen = []
    real = fm.add_ln
    fm.add_ln = lambda x_, d, *a: seen.append(type(d).__name__) or real(x_, d, *a)
    with torch.no_grad():
        enc, lens, _, topv, _ = fm.encode(torch.from_numpy(x), torch.from_numpy(lens_in), 10)
    assert "Parts" in seen
    for b, r in enumerate(refs):
        n = r["encoder_out"].shape[0]
        assert np.abs(enc[b, :n].numpy() - r["encoder_out"]).max() <= 1e-4
        assert np.abs(topv[b, :n].numpy() - r["ctc_topk_values"]).max() <= 1e-4
