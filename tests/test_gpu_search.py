"""The GPU CTC prefix beam search (csrc/ctc_search_block.h, issue #17) against the C++ search:
the block code run on the CPU by one thread (every CI run: n-best, CTC and LM scores
identical) and the CUDA kernel (on a GPU: token ids identical, scores within 1e-4); the
decoder-input packing and the rescored pick on tensors against their list versions."""
import glob
import os
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import MODELS, SHARED, reference

from wenet_triton.decode.lm import estimate
from wenet_triton.decode.native import emulated_gpu_search_batch, prefix_beam_search_batch
from wenet_triton.decode.search import pick_rescored, rescoring_inputs
from wenet_triton.engines import gpu_search, kernels
from wenet_triton.paths import SAMPLES_DIR, default_model_dir

CUDA = torch.cuda.is_available() and kernels.available()


def _wenet_case(name, with_lm):
    dec, npz = reference(name)
    refs = [npz(u) for u in sorted(dec["utts"])]
    T = max(len(r["ctc_topk_idx"]) for r in refs)
    v = np.full((len(refs), T, 10), -1e9, np.float32)
    i = np.tile(np.arange(10, dtype=np.int64), (len(refs), T, 1))  # padding: distinct ids too
    lens = np.array([len(r["ctc_topk_idx"]) for r in refs], np.int32)
    for b, r in enumerate(refs):
        v[b, :lens[b]], i[b, :lens[b]] = r["ctc_topk_values"], r["ctc_topk_idx"]
    if not with_lm:
        return v, i, lens, dec["beam_size"], None, (0.0, 0.0)
    V = int(i.max()) + 1
    r = random.Random(0)
    lm = estimate([[r.randrange(1, V) for _ in range(r.randrange(3, 20))] for _ in range(3000)], V, 3)
    return v, i, lens, dec["beam_size"], lm, (0.6, 0.3)


def _random_case(beam, with_lm, K=10, V=12):
    """Top-K of V symbols with exact ties and repeats, utterances of 60, 31, 1 and 0 frames."""
    g = np.random.default_rng(beam)
    v = np.sort(g.normal(-4, 3, (4, 60, K)).astype(np.float32), axis=-1)[..., ::-1].copy()
    v[:, ::7, 3] = v[:, ::7, 2]
    v[:, ::5] = v[:, ::5] / 4  # peakier frames: long prefixes
    i = np.stack([np.stack([g.permutation(V)[:K] for _ in range(60)]) for _ in range(4)]).astype(np.int64)
    lens = np.array([60, 31, 1, 0], np.int32)
    if not with_lm:
        return v, i, lens, beam, None, (0.0, 0.0)
    r = random.Random(beam)
    lm = estimate([[r.randrange(1, V) for _ in range(r.randrange(3, 20))] for _ in range(2000)], V, 4)
    return v, i, lens, beam, lm, (0.8, 0.5)


_DEMO = {}


def _demo_case(with_lm):
    """The demo model's top-20 of 30 synth_test wavs (the package samples without ../shared),
    with its 5-gram LM and decoding.yaml's weights."""
    if not _DEMO:
        from wenet_triton.audio.frontend import Fbank, pad_feats, read_audio
        from wenet_triton.decode.options import load_lm, resolve
        from wenet_triton.decode.vocab import Vocab
        from wenet_triton.engines import open_engine
        from wenet_triton.engines.artifacts import ensure_export

        demo = default_model_dir()
        d = resolve(demo)
        wavs = sorted(glob.glob(os.path.join(SHARED, "data", "synth_test", "*.wav")))[:30] \
            or sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.wav")))  # a GPU host without ../shared
        engine_dir = ensure_export(demo, beam_size=d.beam_size)
        eng = open_engine(engine_dir, "onnxruntime", "cpu", None, demo)
        fb = Fbank(eng.settings.fbank)
        feats = [fb(read_audio(w)) for w in wavs]
        x, lens = pad_feats(feats)
        enc = eng.encode(x, lens)
        lm = load_lm(d.lm, Vocab.from_engine_dir(engine_dir, eng.settings).tokens)
        _DEMO.update(v=enc["beam_log_probs"], i=enc["beam_log_probs_idx"],
                     lens=enc["encoder_out_lens"].reshape(-1), beam=d.beam_size, lm=lm,
                     w=(d.lm_weight, d.length_bonus))
    c = _DEMO
    return c["v"], c["i"], c["lens"], c["beam"], c["lm"] if with_lm else None, c["w"] if with_lm else (0.0, 0.0)


CASES = [pytest.param(lambda m=m: _wenet_case(m, False), id=f"wenet-{m}") for m in MODELS] + [
    pytest.param(lambda: _wenet_case("u2pp_conformer", True), id="wenet-u2pp-lm"),
    pytest.param(lambda: _random_case(10, False), id="random-beam10"),
    pytest.param(lambda: _random_case(10, True), id="random-beam10-lm"),
    pytest.param(lambda: _random_case(4, True), id="random-beam4-lm"),
    # 40 + 40 x 40 candidates: a 2048-entry sort; on the GPU ~100 KB of shared memory (opt-in > 48 KB)
    pytest.param(lambda: _random_case(40, True, K=40, V=60), id="random-beam40-lm"),
    pytest.param(lambda: _demo_case(False), id="demo"),
    pytest.param(lambda: _demo_case(True), id="demo-lm"),
]


def _cpp(v, i, lens, beam, lm, w):
    out = prefix_beam_search_batch(v, i, lens, beam, 0, lm, *w)
    assert out is not None, "C++ search failed to build (is g++ installed?)"
    return out


@pytest.mark.parametrize("case", CASES)
def test_gpu_search_code_on_cpu_equals_cpp_search(case):
    """Every n-best list, CTC and LM score bit for bit."""
    v, i, lens, beam, lm, w = case()
    want = _cpp(v, i, lens, beam, lm, w)
    got = emulated_gpu_search_batch(v, i, lens, beam, 0, lm, *w)
    assert got == want
    assert max(len(h[0]) for nb in want for h in nb) > 1 and min(len(nb) for nb in want) >= 1


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and the kernels (wenet-triton build-plugins)")
@pytest.mark.parametrize("case", CASES)
def test_gpu_search_kernel_equals_cpp_search(case):
    v, i, lens, beam, lm, w = case()
    want = _cpp(v, i, lens, beam, lm, w)
    glm = gpu_search.GpuLM(lm, "cuda") if lm is not None else None
    out = gpu_search.ctc_search(torch.from_numpy(v).cuda(), torch.from_numpy(i).cuda(),
                                torch.from_numpy(np.asarray(lens, np.int32)).cuda(), beam, 0, glm, *w)
    got = out.to_lists()
    assert [[h[0] for h in nb] for nb in got] == [[h[0] for h in nb] for nb in want]
    for g_nb, w_nb in zip(got, want):
        for g, e in zip(g_nb, w_nb):
            assert all(abs(a - b) <= 1e-4 for a, b in zip(g[1:], e[1:])), (g, e)


def _output(nbest, beam, with_lm) -> gpu_search.SearchOutput:
    """A SearchOutput holding lists' n-best (as the kernel writes them)."""
    B, L = len(nbest), max([len(h[0]) for nb in nbest for h in nb] + [1])
    tokens = torch.zeros(B, beam, L, dtype=torch.int32)
    lens = torch.zeros(B, beam, dtype=torch.int32)
    ctc = torch.zeros(B, beam, dtype=torch.float64)
    lm = torch.zeros(B, beam, dtype=torch.float64)
    for b, nb in enumerate(nbest):
        for k, h in enumerate(nb):
            tokens[b, k, :len(h[0])] = torch.tensor(h[0], dtype=torch.int32)
            lens[b, k], ctc[b, k] = len(h[0]), h[1]
            lm[b, k] = h[2] if with_lm else 0.0
    count = torch.tensor([len(nb) for nb in nbest], dtype=torch.int32)
    return gpu_search.SearchOutput(tokens, lens, ctc, count, lm if with_lm else None)


@pytest.mark.parametrize("with_lm", [False, True])
def test_rescoring_inputs_and_pick_on_tensors_equal_the_list_versions(with_lm):
    """Decoder inputs packed from n-best tensors (short lists, an empty hypothesis) and the
    rescored pick with LM scores = decode.search's list versions."""
    v, i, lens, beam, lm, w = _random_case(10, with_lm)
    nbest = _cpp(v, i, lens, beam, lm, w)
    nbest[2] = nbest[2][:3]  # a short list: filled with its last hypothesis
    assert any(len(h[0]) == 0 for nb in nbest for h in nb)
    out = _output(nbest, beam, with_lm)
    for got, want in zip(gpu_search.rescoring_tensors(out, beam, 11, 12), rescoring_inputs(nbest, beam, 11, 12)):
        assert got.numpy().dtype == want.dtype and np.array_equal(got.numpy(), want)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(len(nbest), beam, generator=g)
    scores[0, 3] = scores[0, 1]  # a tie: the first wins
    best = scores.argmax(dim=1)
    picked = gpu_search.pick_rescored(out, scores, best, 0.8 if with_lm else 0.0).tolist()
    assert picked == [pick_rescored(nb, scores[b].numpy(), int(best[b]), 0.8 if with_lm else 0.0)
                      for b, nb in enumerate(nbest)]
    assert gpu_search.best_tokens(out, torch.tensor(picked)) == [list(nb[k][0]) if k < len(nb) else []
                                                                  for nb, k in zip(nbest, picked)]
    # the same from the host copies of the lengths (the served path: no device-to-host sync),
    # whole and for a slice of the batch (the decoder's chunks)
    hosted = _output(nbest, beam, with_lm)
    hosted.copy_lengths_to_host()
    for a, b in ((0, len(nbest)), (2, 7)):
        part = hosted.rows(a, b)
        for got, want in zip(gpu_search.rescoring_tensors(part, beam, 11, 12),
                             rescoring_inputs(nbest[a:b], beam, 11, 12)):
            assert np.array_equal(got.numpy(), want)
        fetch = gpu_search.fetch_best_tokens(part, torch.tensor(picked[a:b]))
        assert fetch.lists() == [list(nb[k][0]) if k < len(nb) else [] for nb, k in zip(nbest[a:b], picked[a:b])]


def test_gpu_search_refuses_cpu_tensors_and_bad_shapes():
    v = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="CUDA device"):
        gpu_search.ctc_search(v, torch.zeros(2, 5, 4, dtype=torch.int64), torch.ones(2), 4)
    if CUDA:
        with pytest.raises(ValueError, match=r"\(B, T, K\)"):
            gpu_search.ctc_search(v.cuda(), torch.zeros(2, 5, 3, dtype=torch.int64).cuda(),
                                  torch.ones(2).cuda(), 4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and the kernels (wenet-triton build-plugins)")
def test_gpu_chain_transcripts_equal_the_recognizer():
    """What the fused model's GPU path computes (encoder -> GPU search with the LM -> decoder
    inputs packed on the GPU -> decoder -> pick with the LM -> ids) gives the transcripts of the
    Recognizer (C++ search, list packing) on the same torch_cuda engine, demo model + its LM."""
    from wenet_triton.audio.frontend import pad_feats, read_audio
    from wenet_triton.decode.options import resolve
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import open_engine
    from wenet_triton.engines.artifacts import ensure_export
    from wenet_triton.pipeline import Recognizer

    demo = default_model_dir()
    dec = resolve(demo)
    engine_dir = ensure_export(demo, beam_size=dec.beam_size)
    eng = open_engine(engine_dir, "torch_cuda", "cuda", "float16", demo)
    rec = Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=dec)
    wavs = sorted(glob.glob(os.path.join(SHARED, "data", "synth_test", "*.wav")))[:16] \
        or sorted(glob.glob(os.path.join(SAMPLES_DIR, "*.wav")))
    audio = [read_audio(w) for w in wavs]
    want = [r.text for r in rec.recognize(audio)]
    x, lens = pad_feats([rec.fbank(a) for a in audio])
    s = eng.settings
    enc, enc_lens, _, topv, topi = eng.encode_tensors(torch.from_numpy(x).cuda(), torch.from_numpy(lens).cuda())
    found = gpu_search.ctc_search(topv, topi, enc_lens, dec.beam_size, s.blank, gpu_search.GpuLM(rec.lm, "cuda"),
                                  dec.lm_weight, dec.length_bonus)
    best, score = eng.rescore_tensors(enc.clone(), enc_lens.clone(),
                                      *gpu_search.rescoring_tensors(found, dec.beam_size, s.sos, s.eos))
    ids = gpu_search.best_tokens(found, gpu_search.pick_rescored(found, score, best, dec.lm_rescore_weight))
    assert [rec.vocab.text(i) for i in ids] == want
    # the served form (FusedAsr): lengths from the host, no device-to-host synchronisation
    # before the ids are fetched; the decoder in two chunks of rows
    enc, enc_lens, _, topv, topi = eng.encode_tensors(torch.from_numpy(x).cuda(), torch.from_numpy(lens).cuda(),
                                                      host_lens=lens.tolist())
    out_frames = [eng.fm.out_frames(k) for k in lens.tolist()]
    assert enc.shape[1] == max(out_frames) and enc_lens.tolist() == out_frames
    found = gpu_search.ctc_search(topv, topi, enc_lens, dec.beam_size, s.blank, gpu_search.GpuLM(rec.lm, "cuda"),
                                  dec.lm_weight, dec.length_bonus)
    found.copy_lengths_to_host()
    torch.cuda.synchronize()
    picks, half = [], len(audio) // 2
    for a, b in ((0, half), (half, len(audio))):
        part = found.rows(a, b)
        t = max(out_frames[a:b])
        best, score = eng.rescore_tensors(enc[a:b, :t].clone(), enc_lens[a:b].clone(),
                                          *gpu_search.rescoring_tensors(part, dec.beam_size, s.sos, s.eos))
        picks.append(gpu_search.pick_rescored(part, score, best, dec.lm_rescore_weight))
    ids = gpu_search.fetch_best_tokens(found, torch.cat(picks)).lists()
    assert [rec.vocab.text(i) for i in ids] == want


def test_fused_model_search_device_setting():
    """models.fused.search_device: auto falls back to the C++ search off the GPU engine; gpu
    there is a clear error at load; an unknown value names the choices."""
    from types import SimpleNamespace

    from wenet_triton.serving.triton_models import FusedAsr

    cpu_instance = SimpleNamespace(on_device=False, engine=SimpleNamespace(device="cpu"), lm=None)
    assert FusedAsr._gpu_search_module(cpu_instance, "auto") == (None, None)
    assert FusedAsr._gpu_search_module(cpu_instance, "cpu") == (None, None)
    with pytest.raises(ValueError, match="needs the torch_cuda engine on a GPU"):
        FusedAsr._gpu_search_module(cpu_instance, "gpu")
    with pytest.raises(ValueError, match="use auto, gpu or cpu"):
        FusedAsr._gpu_search_module(cpu_instance, "fpga")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
@pytest.mark.parametrize("flags", ["", "-DWKS_PHASE_TIMES"], ids=["plain", "phase-times"])
def test_kernels_compile_and_export_what_the_bindings_use(tmp_path, monkeypatch, flags):
    """Where nvcc is installed (no GPU needed), the kernels and the GPU search compile for
    Hopper (the profiling build too) and the library has every function the ctypes bindings
    bind, at the version they expect: kernel changes made without a GPU at hand still build."""
    import ctypes

    monkeypatch.setenv("NVCC_FLAGS", flags)
    path = kernels.build(str(tmp_path / "libwenet_kernels.so"), archs=["90"])
    lib = kernels._Lib(path).lib  # binds every entry point; checks wk_version
    assert hasattr(lib, "wk_ctc_search_workspace") and hasattr(lib, "wk_ctc_search")
    assert hasattr(ctypes.CDLL(path), "wk_ctc_search_phase_cycles") == bool(flags)
