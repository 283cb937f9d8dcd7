"""serving.yaml `pipeline: fused` (issue #17): one python model per dynamic batch (fbank,
encoder, CTC prefix search with the LM on threads, in-process attention rescoring), served
by a real tritonserver behind the same `attention_rescoring` name and I/O."""
import json
import os
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, model_dir, shared_path, wav_path
from served import infer_batch, processes_with

pytestmark = pytest.mark.server
tritonclient = pytest.importorskip("tritonclient.grpc")


def _parse_config(path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def u2pp_export():
    """The shared u2pp model's ONNX export (cached in $WENET_TRITON_CACHE across runs)."""
    from wenet_triton.engines.artifacts import ensure_export

    return ensure_export(model_dir("u2pp_conformer"))


def _serve(repo, tmp_path, fn):
    """fn(grpc_url) under a server for repo -> (its result, per-model metrics of the run)."""
    sys.path.insert(0, ROOT)
    from loadtest.metrics import delta, scrape, summarize
    from wenet_triton.serving.server import TritonServer, free_port

    metrics_port = free_port()
    with TritonServer(repo, free_port(), free_port(), metrics_port, host="127.0.0.1",
                      log_file=str(tmp_path / f"{os.path.basename(repo)}.log")) as s:
        before = scrape(f"127.0.0.1:{metrics_port}")
        res = fn(s.grpc_url)
        stats = summarize(delta(before, scrape(f"127.0.0.1:{metrics_port}")))
    time.sleep(0.5)
    assert not processes_with(repo), "tritonserver or stubs left behind"
    return res, stats


def test_gpu_config_renders_the_fused_pipeline(u2pp_export, tmp_path):
    """configs/serving_gpu.yaml (the GPU default) serves `pipeline: fused`: the fused python
    model is `attention_rescoring` itself (WAV in, TRANSCRIPTS out); with entry ensemble it is
    `fused` behind a one-step `attention_rescoring` ensemble; the CPU default stays the
    ensemble; a TensorRT engine (plans, no python model) falls back to the ensemble."""
    from wenet_triton.serving.repo import MODELS, build_repo

    gpu_yaml = os.path.join(ROOT, "configs", "serving_gpu.yaml")
    repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "gpu"), "onnxruntime",
                      config=gpu_yaml, engine_dir=u2pp_export)
    assert sorted(os.listdir(repo)) == ["attention_rescoring", "serving.json"]
    fused = _parse_config(os.path.join(repo, "attention_rescoring", "config.pbtxt"))
    assert fused.name == "attention_rescoring" and fused.backend == "python"
    assert [(i.name, list(i.dims)) for i in fused.input] == [("WAV", [-1]), ("WAV_LENS", [1])]
    assert [o.name for o in fused.output] == ["TRANSCRIPTS"] and fused.max_batch_size == 64
    assert fused.instance_group[0].count == 4
    p = {k: v.string_value for k, v in fused.parameters.items()}
    assert p["fbank_device"] == "engine" and int(p["search_threads"]) > 1 and int(p["max_inflight"]) > 1
    assert p["device_stage"] == "batch"  # fbank + encoder on the batch thread (H200, 2026-12-02)
    from wenet_triton.serving.mps import mps_mode
    assert mps_mode(None, repo) == "auto"  # what `serve` reads from the repository: MPS where it can run
    assert p["search_device"] == "auto"  # the GPU search where the engine is torch_cuda on a GPU
    assert float(p["warm_graphs_seconds"]) == 20  # encoder graphs up to 20 s captured at load
    with pytest.raises(ValueError, match=r"models.fused.warm_graphs_seconds must be within 0..max_audio_seconds"):
        build_repo(model_dir("u2pp_conformer"), str(tmp_path / "bad"), "onnxruntime", config=gpu_yaml,
                   overrides={"models": {"fused": {"warm_graphs_seconds": 61}}}, engine_dir=u2pp_export)
    for f in ("model.py", "encoder.onnx", "decoder.onnx", "units.txt", "wenet_triton.json"):
        assert os.path.exists(os.path.join(repo, "attention_rescoring", "1", f))
    ens_repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "gpu_ens"), "onnxruntime", config=gpu_yaml,
                          overrides={"models": {"fused": {"entry": "ensemble"}}}, engine_dir=u2pp_export)
    assert sorted(os.listdir(ens_repo)) == ["attention_rescoring", "fused", "serving.json"]
    ens = _parse_config(os.path.join(ens_repo, "attention_rescoring", "config.pbtxt"))
    assert ens.platform == "ensemble" and [s.model_name for s in ens.ensemble_scheduling.step] == ["fused"]
    assert [(i.name, list(i.dims)) for i in ens.input] == [("WAV", [-1]), ("WAV_LENS", [1])]
    assert _parse_config(os.path.join(ens_repo, "fused", "config.pbtxt")).parameters == fused.parameters
    with pytest.raises(ValueError, match="models.fused.entry 'bls'"):
        build_repo(model_dir("u2pp_conformer"), str(tmp_path / "y"), "onnxruntime", config=gpu_yaml,
                   overrides={"models": {"fused": {"entry": "bls"}}}, engine_dir=u2pp_export)
    cpu = build_repo(model_dir("u2pp_conformer"), str(tmp_path / "cpu"), "onnxruntime",
                     engine_dir=u2pp_export)
    assert set(MODELS) <= set(os.listdir(cpu)) and not os.path.exists(os.path.join(cpu, "fused"))
    with pytest.raises(ValueError, match="pipeline 'one'"):
        build_repo(model_dir("u2pp_conformer"), str(tmp_path / "x"), "onnxruntime",
                   overrides={"pipeline": "one"}, engine_dir=u2pp_export)


def _offline(engine_dir, wavs, decoding=None):
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.pipeline import Recognizer

    eng = OnnxEngine(engine_dir)
    rec = Recognizer(eng, Vocab.from_engine_dir(engine_dir, eng.settings), decoding=decoding)
    return [r.text for r in rec.recognize(wavs)]


def test_fused_u2pp_matches_offline_mixed_lengths_and_isolates_bad_requests(u2pp_export, tmp_path):
    """u2pp (random weights): requests of mixed lengths share dynamic batches (a long queue
    delay forces it) and each gets the offline transcript; bad requests among them get
    their own errors; a request carrying a batch of rows is answered row by row; the
    synchronous mode (async_responses false), served behind the one-step ensemble (entry
    ensemble), and fbank + encoder on the batch thread (device_stage batch) answer the same."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo

    good = [(f"u{i}", read_audio(wav_path(f"test_00000{i}"))) for i in range(8)]
    assert len({len(w) for _, w in good}) > 4  # mixed lengths
    bad = [("short", np.zeros(1000, np.float32)), ("nan", np.full(16000, np.nan, np.float32)),
           ("loud", np.full(16000, 3.0, np.float32))]
    items = good[:3] + bad[:2] + good[3:6] + bad[2:] + good[6:]
    offline = _offline(u2pp_export, [w for _, w in good])

    def run(url):
        replies = transcribe_many(url, items, concurrency=len(items))
        return replies, infer_batch(url, [w for _, w in good[:3]])

    for mode, entry, stage in (("true", "direct", "batch"), ("true", "direct", "execute"),
                               ("false", "ensemble", "batch")):
        repo = build_repo(model_dir("u2pp_conformer"), str(tmp_path / f"fused_async_{mode}_{stage}"), "onnxruntime",
                          overrides={"pipeline": "fused", "engine": {"threads": 2},
                                     "models": {"fused": {"max_queue_delay_us": 300000, "entry": entry,
                                                          "async_responses": mode == "true",
                                                          "device_stage": stage}}},
                          engine_dir=u2pp_export)
        (replies, batched), stats = _serve(repo, tmp_path, run)
        model = "attention_rescoring" if entry == "direct" else "fused"
        assert stats[model]["avg_batch"] > 1, stats  # ragged requests were batched together
        errors = {r.name: r.error for r in replies if r.error}
        assert sorted(errors) == ["loud", "nan", "short"], errors
        assert "too short" in errors["short"] and "NaN or inf" in errors["nan"]
        assert "outside [-1, 1]" in errors["loud"]
        assert [r.text for r in replies if not r.error] == offline
        assert batched == offline[:3]


def test_fused_demo_model_with_lm_matches_offline_and_the_ensemble(tmp_path):
    """The demo model with its decoding.yaml (beam 20, n-gram LM in the search and in
    rescoring): fused == offline Recognizer == the ensemble pipeline."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.options import resolve
    from wenet_triton.engines.artifacts import ensure_export
    from wenet_triton.serving.client import transcribe_many
    from wenet_triton.serving.repo import build_repo

    demo = os.path.join(ROOT, "models", "demo_zh_synth")
    dec = resolve(demo)
    assert dec.lm
    engine_dir = ensure_export(demo, beam_size=dec.beam_size)
    d = shared_path("data", "synth_test")
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".wav"))[:12]
    items = [(n, read_audio(os.path.join(d, n + ".wav"))) for n in names]
    offline = _offline(engine_dir, [w for _, w in items], dec)
    served = {}
    for pipeline in ("fused", "ensemble"):
        repo = build_repo(demo, str(tmp_path / pipeline), "onnxruntime",
                          overrides={"pipeline": pipeline, "engine": {"threads": 2},
                                     "models": {"fused": {"max_queue_delay_us": 100000}}},
                          engine_dir=engine_dir)
        if pipeline == "fused":
            p = {k: v.string_value for k, v in
                 _parse_config(os.path.join(repo, "attention_rescoring", "config.pbtxt")).parameters.items()}
            assert p["lm_file"] and float(p["lm_weight"]) == dec.lm_weight
            assert float(p["lm_rescore_weight"]) == dec.lm_rescore_weight
            assert os.path.exists(os.path.join(repo, "attention_rescoring", "1", p["lm_file"]))
        replies, _ = _serve(repo, tmp_path, lambda url: transcribe_many(url, items, concurrency=6))
        assert [r.error for r in replies] == [None] * len(items)
        served[pipeline] = [r.text for r in replies]
    assert served["fused"] == offline
    assert served["ensemble"] == offline


def test_profile_reports_wall_and_cpu_time_per_stage(monkeypatch, capsys):
    """WENET_TRITON_PROFILE: per stage, the wall time and the stage thread's own CPU time over
    the same span: a busy span is CPU, a span spent waiting is not, also while another thread
    of the model burns CPU meanwhile."""
    import re
    import threading

    monkeypatch.setenv("WENET_TRITON_PROFILE", "1e-9")
    from wenet_triton.serving.triton_models import _Timings

    timer = _Timings("fused")

    def busy(stage, seconds):
        timer.begin()
        t = time.perf_counter()
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        timer.split(stage, t)

    def waiting(stage, seconds):
        timer.begin()
        t = time.perf_counter()
        time.sleep(seconds)
        timer.split(stage, t)

    threads = [threading.Thread(target=busy, args=("busy", 0.08)),
               threading.Thread(target=waiting, args=("wait", 0.08))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    timer.done(4, 2)
    timer.close()
    line = capsys.readouterr().out.strip()
    assert line.startswith("[profile fused] 1 batches, 4.0 utts/batch, up to 2 in flight; "
                           "ms per batch, wall/CPU: "), line
    got = {k: (float(w), float(c)) for k, w, c in re.findall(r"(\w+) ([\d.]+)/([\d.]+)", line)}
    assert set(got) == {"busy", "wait"}
    assert got["busy"][1] >= 75 and got["busy"][0] >= got["busy"][1] - 1
    assert got["wait"][0] >= 75 and got["wait"][1] < 10


def test_profile_counts_gc_pauses_and_the_stub_settles_its_heap(monkeypatch, capsys):
    """WENET_TRITON_PROFILE also reports Python's GC collections per generation (a full one
    over a loaded model pauses the instance ~100 ms); settle_heap() freezes the loaded heap
    in Triton's stub (its module importable), never in a process that merely runs a model
    (a test, a benchmark), and not with WENET_TRITON_GC_FREEZE=0."""
    import gc
    import re
    import types

    monkeypatch.setenv("WENET_TRITON_PROFILE", "1e-9")
    from wenet_triton.serving.triton_models import _Timings, settle_heap

    timer = _Timings("streaming", unit="chunks")
    try:
        gc.collect()
        gc.collect()
        timer.done(1, 1)
    finally:
        timer.close()
    line = capsys.readouterr().out.strip()
    m = re.search(r"; gc: .*gen2 (\d+)x [\d.]+ ms \(longest [\d.]+\)", line)
    assert m and int(m.group(1)) >= 2, line
    assert timer._gc not in gc.callbacks

    assert gc.get_freeze_count() == 0
    settle_heap()  # no stub here
    assert gc.get_freeze_count() == 0
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.setenv("WENET_TRITON_GC_FREEZE", "0")
    settle_heap()
    assert gc.get_freeze_count() == 0
    monkeypatch.setenv("WENET_TRITON_GC_FREEZE", "1")
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("int16_range", [False, True])
def test_range_checked_while_staging_equals_checked_first(monkeypatch, int16_range):
    """The fused model on a GPU checks the samples' range as it copies them into the staging
    buffer (one pass over memory, rows on threads); the rows outside [-1, 1] then get the
    checks that name the problem. Requests mixing good rows, NaN, loud rows (|x| <= 32768:
    an error, or scaled with accept_int16_range), a loud row in a request of two rows and a
    float64 row -> the same errors (message for message) and the same staged samples as
    checking every row first."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, ROOT)
    from benchmarks.stream_execute import fake_pb_utils  # the stand-in for the stub's module
    from wenet_triton.audio.torch_fbank import TorchFbank
    from wenet_triton.contract import FbankConf
    from wenet_triton.serving import triton_models as tm

    pb = fake_pb_utils()
    monkeypatch.setattr(tm, "pb_utils", pb)
    front = object.__new__(tm._WavFrontend)
    front.conf, front.max_seconds, front.min_frames = FbankConf(), 60.0, 7
    front.window, front.int16_range, front.max_request_samples = 400, int16_range, 0
    rng = np.random.default_rng(0)

    def wav(n, scale=0.5, dtype=np.float32):
        return (rng.uniform(-scale, scale, n)).astype(dtype)

    nan = wav(8000)
    nan[77] = np.nan
    two = np.stack([wav(9000), wav(9000, 3000.0)])
    rows = [(wav(16000)[None], [16000]), (nan[None], [8000]), (wav(12000, 9000.0)[None], [12000]),
            (two, [9000, 8000]), (wav(7000, 0.9, np.float64)[None], [7000]),
            (wav(5000, 40000.0)[None], [5000]), (wav(20000)[None], [20000])]
    requests = [pb.InferenceRequest([pb.Tensor("WAV", w), pb.Tensor("WAV_LENS", np.array(n, np.int32).reshape(-1, 1))],
                                    request_id=f"r{i}") for i, (w, n) in enumerate(rows)]
    tf = TorchFbank(front.conf)

    out_first = [None] * len(requests)
    wavs_first, counts_first = front.check(requests, out_first)
    first = tf.stage(wavs_first)

    out = [None] * len(requests)
    wavs, counts = front.check(requests, out, defer_range=True)
    with ThreadPoolExecutor(3) as pool:
        staged = tf.stage(wavs, check_range=True, pool=pool)
        assert staged.bad == [1, 2, 4, 6]  # NaN, loud, the loud row of two, too loud
        tf.unstage(staged)
        wavs, counts = front.recheck(requests, out, wavs, counts, staged.bad)
        again = tf.stage(wavs, pool=pool)
    errors = [r and r.error().message() for r in out]
    assert errors == [r and r.error().message() for r in out_first] and counts == counts_first
    assert "r1" in errors[1] and "NaN" in errors[1]
    assert "r5" in errors[5] and "outside [-1, 1]" in errors[5]
    assert (errors[2] is None and errors[3] is None) if int16_range else ("(row 1)" in errors[3] and errors[2])
    assert again.shape == first.shape and again.frames == first.frames and again.bad == []
    n = first.shape[0] * first.shape[1]
    np.testing.assert_array_equal(again.slot.buf[:n].numpy(), first.slot.buf[:n].numpy())


def _model_args(tmp_path):
    """Triton's `args` of a python model whose version folder holds the engine settings."""
    from wenet_triton.contract import EngineSettings

    (tmp_path / "1").mkdir()
    EngineSettings(beam_size=10, ctc_weight=0.5, reverse_weight=0.3, sos=9, eos=9, vocab_size=10,
                   decoder_has_reverse_input=True).save(str(tmp_path / "1"))
    return {"model_repository": str(tmp_path), "model_version": "1",
            "model_config": json.dumps({"max_batch_size": 8})}


def test_triton_kernels_tuned_at_load_for_the_largest_batch(tmp_path):
    """The fused / encoder models ask a torch_cuda engine to tune its Triton kernels at load
    for every batch they can be given: max_batch_audio_seconds in encoder frames (25 per s:
    10 ms frames, subsampling 4), twice over for the batch bucket's rounding; without that
    limit max_batch_size x max_audio_seconds. Engines without warm_kernels are left alone."""
    from wenet_triton.serving import triton_models as tm

    args = _model_args(tmp_path)

    class Eng:
        def __init__(self):
            self.asked = []

        def warm_kernels(self, rows):
            self.asked.append(rows)
            return 2, 0.5

    e = Eng()
    tm._warm_kernels(e, {"max_batch_audio_seconds": "240"}, args, "fused")
    tm._warm_kernels(e, {"max_audio_seconds": "30"}, args, "encoder")
    tm._warm_kernels(object(), {}, args, "fused")  # onnxruntime / TorchEngine: nothing to tune
    assert e.asked == [2 * 240 * 25, 2 * 8 * 30 * 25]


def test_encoder_graph_keys_cover_every_batch_up_to_the_warm_length():
    """CudaEngine.encoder_keys(max_batch, max_frames[, max_rows]) lists exactly the encoder
    graphs that inputs within those limits run in (what warm_encoder captures at a server's
    load): every (batch, frames) input's key, as encode_tensors asks its graphs for it, is
    listed; nothing listed is beyond the limits; max_rows drops only keys no batch of at
    most that many rows x encoder frames reaches. On the CPU (no graphs) warm_encoder does
    nothing."""
    import torch

    from wenet_triton.engines.cuda import CudaEngine
    from wenet_triton.engines.export import export_settings
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel

    spec = synthetic.random_spec(synthetic.U2PP)
    eng = CudaEngine(ASRModel.from_spec(spec), export_settings(spec, ASRModel.from_spec(spec)), "cpu",
                     "float32", cuda_graphs=False)
    keys = eng.encoder_keys(64, 2000)
    assert len(keys) == len(set(keys)) == 7 * 32  # batch buckets 1..64 x 16-frame buckets to 512
    asked, graphs = [], eng.enc_graphs
    eng.enc_graphs = lambda key, make, fill: asked.append(key) or graphs(key, make, fill)
    rng = np.random.default_rng(0)
    for _ in range(6):  # encode_tensors asks for the key encoder_key names, which is listed
        B, T = int(rng.integers(1, 5)), int(rng.integers(7, 700))
        eng.encode_tensors(torch.zeros(B, T, 80), torch.full((B,), T, dtype=torch.int32))
        assert asked[-1] == eng.encoder_key(B, T) and asked[-1] in keys
    for B, T in [(1, 7), (64, 2000), (33, 1999), (17, 64 * 4 + 7), (2, 16 * 4 + 6), (1, 2003 - 4 * 12)]:
        assert eng.encoder_key(B, T) in keys, (B, T)
    eng.enc_graphs = graphs
    assert eng.encoder_key(65, 100) not in keys and eng.encoder_key(1, 2100) not in keys
    limited = eng.encoder_keys(64, 2000, max_rows=6000)  # max_batch_audio_seconds 240
    assert set(limited) < set(keys)
    for B, T in [(int(b), int(t)) for b, t in zip(rng.integers(1, 65, 400), rng.integers(7, 2001, 400))]:
        rows = B * eng.fm.out_frames(T)
        assert (eng.encoder_key(B, T) in limited) or rows > 6000, (B, T)
    assert (64, eng.fm.frames_for(512)) not in limited and (1, eng.fm.frames_for(512)) in limited
    assert eng.warm_encoder(4, 400) == (0, 0.0)


def test_encoder_graphs_captured_at_load_up_to_warm_graphs_seconds(tmp_path, capsys):
    """The fused model asks a torch_cuda engine to capture its encoder graphs at load for
    requests up to warm_graphs_seconds (fbank frames at 10 ms), bounded by max_batch_size and
    max_batch_audio_seconds (as encoder rows); 0 or an engine without warm_encoder: nothing;
    a failure is reported and the model loads on."""
    from wenet_triton.serving import triton_models as tm

    args = _model_args(tmp_path)

    class Eng:
        def __init__(self):
            self.asked = []

        def warm_encoder(self, max_batch, frames, budget_s, max_rows):
            self.asked.append((max_batch, frames, budget_s, max_rows))
            return 3, 0.5

    e = Eng()
    tm._warm_graphs(e, {"warm_graphs_seconds": "20"}, args, "fused")
    tm._warm_graphs(e, {"warm_graphs_seconds": "5", "max_batch_audio_seconds": "240",
                        "warm_graphs_budget_s": "30"}, args, "fused")
    tm._warm_graphs(e, {"warm_graphs_seconds": "0"}, args, "fused")
    tm._warm_graphs(e, {}, args, "fused")
    tm._warm_graphs(object(), {"warm_graphs_seconds": "20"}, args, "fused")  # not torch_cuda
    assert e.asked == [(8, 2000, 120.0, 0), (8, 500, 30.0, 6000)]
    assert "[fused] encoder CUDA graphs captured for 3 (batch, length) buckets up to 20 s" in capsys.readouterr().out

    class Broken:
        def warm_encoder(self, *a, **k):
            raise RuntimeError("CUDA error: out of memory")

    tm._warm_graphs(Broken(), {"warm_graphs_seconds": "20"}, args, "fused")
    out = capsys.readouterr().out
    assert "[fused] capturing the encoder's CUDA graphs at load failed (RuntimeError: CUDA error: out of memory)" in out
    assert "captured on first use instead" in out


def test_pipeline_run_at_load_stages_one_utterance_and_reports_failures(capsys):
    """FusedAsr._warm_pipeline (GPU path; what it runs is the live path's own stages): one
    second of silence staged by the fbank front end, then the device stage and the host stage
    of that batch; a failure in them is reported and loading goes on; nothing runs off the
    GPU path."""
    from types import SimpleNamespace

    from wenet_triton.audio.torch_fbank import TorchFbank
    from wenet_triton.contract import FbankConf
    from wenet_triton.serving import triton_models as tm

    m = tm.FusedAsr.__new__(tm.FusedAsr)
    m.on_device = m.gpu_fbank = True
    m.front = SimpleNamespace(conf=FbankConf(), torch_fbank=TorchFbank(FbankConf(), "cpu"))
    seen = []
    m._device_stage = lambda b: seen.append(("device", b.counts, b.frames, b.staged.shape))
    m._back = lambda b: seen.append(("back", b.counts))
    m._warm_pipeline()
    assert seen == [("device", [1], [98], (1, 16000)), ("back", [1])]  # 1 s: 1 + (16000 - 400) // 160 frames
    assert "[fused] one utterance through the whole pipeline at load in" in capsys.readouterr().out

    def broken(b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    m._device_stage = broken
    m._warm_pipeline()
    out = capsys.readouterr().out
    assert "[fused] the pipeline's run at load failed (RuntimeError: CUDA error: an illegal memory access" in out
    assert "its kernels load on the first live batch instead" in out
    seen.clear()
    m.on_device = False  # onnxruntime / CPU fbank: nothing to prepare
    m._warm_pipeline()
    assert seen == [] and capsys.readouterr().out == ""


def test_triton_kernel_tuning_failure_at_load_does_not_stop_the_model(monkeypatch, capsys):
    """A failing tuning at load is reported and the model loads on (its kernels then tune on
    first use, as before)."""
    from wenet_triton.serving import triton_models as tm

    class Broken:
        def warm_kernels(self, rows):
            raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(tm, "_batch_cap", lambda *a: 6000.0)
    tm._warm_kernels(Broken(), {}, {}, "fused")
    out = capsys.readouterr().out
    assert "[fused] tuning the Triton kernels at load failed (RuntimeError: out of resource" in out
    assert "tune on first use" in out
