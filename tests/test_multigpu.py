"""Multi-GPU serving on one host (docs/multigpu.md), what runs without GPUs: the `gpus`
setting and `--gpus`, the instance_group each GPU count renders (parsed as Triton
ModelConfigs), one GPU rendering exactly as before, and the device each Triton instance's
engine and GPU fbank land on. The 2-GPU run itself: tests/test_gpu.py and docs/multigpu.md."""
import json
import logging
import os

import pytest
import torch
from conftest import ROOT

from wenet_triton import cli
from wenet_triton.contract import EngineSettings
from wenet_triton.serving import repo as repo_mod
from wenet_triton.serving import triton_models
from wenet_triton.serving.repo import build_repo, parse_gpus

# the GPU settings (the ensemble) and the experimental one-model pipeline
GPU_YAML = os.path.join(ROOT, "configs", "serving_gpu_ensemble.yaml")  # the ensemble on a GPU
FUSED_YAML = os.path.join(ROOT, "configs", "serving_gpu.yaml")  # the GPU default: pipeline fused
GPU_COUNTS = {0: None, 1: [0], 2: [0, 1], 4: [0, 1, 2, 3]}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(model_dir, engine_dir): enough files to render every layout (nothing is loaded)."""
    root = tmp_path_factory.mktemp("mgpu")
    eng, model = root / "engine", root / "model"
    eng.mkdir()
    model.mkdir()
    EngineSettings(beam_size=10, ctc_weight=0.3, reverse_weight=0.3, sos=99, eos=99, vocab_size=100,
                   decoder_has_reverse_input=True).save(str(eng))
    for f in ("units.txt", "encoder.onnx", "decoder.onnx", "encoder.plan", "decoder.plan"):
        (eng / f).write_text("x\n")
    for f in ("train.yaml", "final.pt", "global_cmvn", "units.txt"):
        (model / f).write_text("x\n")
    return str(model), str(eng)


def _parse(text):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _render(dirs, out, engine, config=None, /, **over):
    """{model: (config.pbtxt text, parsed ModelConfig)} of one rendered repository."""
    build_repo(dirs[0], str(out), engine, config, over, engine_dir=dirs[1])
    res = {}
    for m in sorted(os.listdir(str(out))):
        path = os.path.join(str(out), m, "config.pbtxt")
        if os.path.exists(path):
            text = open(path).read()
            cfg = _parse(text)
            assert cfg.name == m
            res[m] = (text, cfg)
    return res


def _group(cfg):
    assert len(cfg.instance_group) == 1
    g = cfg.instance_group[0]
    return g.count, g.Kind.Name(g.kind), list(g.gpus)


@pytest.mark.parametrize("n", sorted(GPU_COUNTS))
@pytest.mark.parametrize("config", [GPU_YAML, None], ids=["serving_gpu", "default"])
def test_torch_cuda_instances_per_gpu_count(dirs, tmp_path, n, config):
    """2 and 4 GPUs: the encoder and decoder get `instances` instances on each listed GPU
    (KIND_GPU, gpus: [...]); the CPU models keep theirs; 0 or 1 GPU: as without `gpus`."""
    gpus = GPU_COUNTS[n]
    over = {"gpus": gpus} if gpus is not None else {}
    res = _render(dirs, tmp_path / "r", "torch_cuda", config, **over)
    models = repo_mod.load_serving_config(config)["models"]
    for name, (_, cfg) in res.items():
        if name == "attention_rescoring":
            assert not cfg.instance_group  # the ensemble has none
            continue
        count, kind, listed = _group(cfg)
        assert count == models[name]["instances"]  # per GPU with KIND_GPU
        if name in ("encoder", "decoder") and n >= 2:
            assert (kind, listed) == ("KIND_GPU", gpus)
            assert cfg.parameters["device"].string_value == "cuda"
        else:
            assert (kind, listed) == (models[name]["kind"], [])
    if config == GPU_YAML:  # fbank in the encoder: follows the encoder's GPU
        assert "feature_extractor" not in res
        assert res["encoder"][1].parameters["frontend"].string_value == "fbank"


LAYOUTS = {
    "ort": ("onnxruntime", None, {}),                          # the CPU default
    "ort_gpu_yaml": ("onnxruntime", GPU_YAML, {}),
    "cuda_gpu_yaml": ("torch_cuda", GPU_YAML, {}),             # the ensemble on GPU hosts
    "cuda": ("torch_cuda", None, {}),
    "torch_on_cuda": ("torch", None, {"engine": {"device": "cuda"}}),
    "fbank_cuda": ("torch_cuda", None, {"feature_device": "cuda"}),
    "tensorrt": ("tensorrt", None, {}),
}
# tensorrt with `gpus: [0]` is the one exception: its plans run on every GPU without it
ONE_GPU = [(lay, g) for lay in LAYOUTS for g in (None, [], "", [0], "0") if lay != "tensorrt" or not g]


@pytest.mark.parametrize("layout,gpus", ONE_GPU, ids=[f"{lay}-{g!r}" for lay, g in ONE_GPU])
def test_one_gpu_renders_exactly_as_before(dirs, tmp_path, monkeypatch, layout, gpus):
    """gpus unset, empty or just device 0: every config.pbtxt byte for byte what the renderer
    wrote before `gpus` existed (its instance_group, kept here, on the same templates)."""
    engine, config, over = LAYOUTS[layout]
    extra = {} if gpus is None else {"gpus": gpus}
    new = _render(dirs, tmp_path / "new", engine, config, **dict(over, **extra))

    def before(m, gpus=None):  # repo._instances as it was, whatever gpus says
        return f"instance_group [ {{ count: {int(m.get('instances', 1))} kind: {m.get('kind', 'KIND_CPU')} }} ]"

    monkeypatch.setattr(repo_mod, "_instances", before)
    old = _render(dirs, tmp_path / "old", engine, config, **over)
    assert sorted(new) == sorted(old)
    for m in new:
        assert new[m][0] == old[m][0], m
    models = repo_mod.load_serving_config(config)["models"]
    for m, (text, _) in new.items():  # and the lines themselves, spelled out
        if m == "attention_rescoring":
            continue
        want = (f"instance_group [ {{ count: {models[m]['instances']} kind: {models[m]['kind']} }} ]"
                if not (engine == "tensorrt" and m in ("encoder", "decoder"))
                else "instance_group [ { count: 1 kind: KIND_GPU } ]")
        assert want in text.splitlines(), (m, text)


def test_one_gpu_other_than_0_is_pinned(dirs, tmp_path):
    res = _render(dirs, tmp_path / "r", "torch_cuda", GPU_YAML, gpus=[1])
    assert _group(res["encoder"][1]) == (2, "KIND_GPU", [1])
    assert _group(res["decoder"][1]) == (2, "KIND_GPU", [1])
    assert _group(res["scoring"][1])[1:] == ("KIND_CPU", [])


def test_gpu_fbank_and_torch_on_cuda_models_spread(dirs, tmp_path):
    res = _render(dirs, tmp_path / "fe", "torch_cuda", None, gpus=[0, 1], feature_device="cuda")
    assert _group(res["feature_extractor"][1]) == (2, "KIND_GPU", [0, 1])
    assert res["feature_extractor"][1].parameters["device"].string_value == "cuda"
    res = _render(dirs, tmp_path / "t", "torch", None, gpus=[2, 3], engine={"device": "cuda"})
    assert _group(res["encoder"][1]) == (1, "KIND_GPU", [2, 3])
    assert _group(res["feature_extractor"][1]) == (2, "KIND_CPU", [])  # CPU fbank


def test_cpu_engines_ignore_gpus_with_a_warning(dirs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res = _render(dirs, tmp_path / "ort", "onnxruntime", None, gpus=[0, 1])
    assert "no model runs on a GPU with engine onnxruntime" in caplog.text
    assert all(_group(c)[1:] == ("KIND_CPU", []) for m, (_, c) in res.items() if m != "attention_rescoring")


def test_tensorrt_instances(dirs, tmp_path):
    """Plans: one instance per GPU; unset = every visible GPU (as before), else those listed."""
    for gpus, want in [(None, []), ([0], [0]), ([0, 1], [0, 1]), ([0, 1, 2, 3], [0, 1, 2, 3])]:
        over = {"gpus": gpus} if gpus is not None else {}
        res = _render(dirs, tmp_path / f"trt{len(want)}", "tensorrt", GPU_YAML, **over)
        for m in ("encoder", "decoder"):
            assert res[m][1].platform == "tensorrt_plan"
            assert _group(res[m][1]) == (1, "KIND_GPU", want)
        assert _group(res["feature_extractor"][1])[1:] == ("KIND_CPU", [])


def test_gpus_key_in_a_serving_yaml(dirs, tmp_path, monkeypatch):
    monkeypatch.setattr(repo_mod, "visible_gpus", lambda: 2)
    for value, want in [("[1, 0]", [1, 0]), ("'0,1'", [0, 1]), ("all", [0, 1])]:
        cfg = tmp_path / "s.yaml"
        cfg.write_text(f"feature_device: encoder\ngpus: {value}\n")
        res = _render(dirs, tmp_path / "r", "torch_cuda", str(cfg))
        assert _group(res["encoder"][1]) == (1, "KIND_GPU", want)
    cfg.write_text("gpus: [0, x]\n")
    with pytest.raises(ValueError, match="'x' is not a device id"):
        _render(dirs, tmp_path / "bad", "torch_cuda", str(cfg))


# -- the setting's parsing ------------------------------------------------------------------------
@pytest.mark.parametrize("value,want", [
    (None, None), ("", None), ([], None), ("0", [0]), ("0,1", [0, 1]), (" 2 , 3 ", [2, 3]),
    ([0, 1, 2, 3], [0, 1, 2, 3]), (1, [1]), (["1", "0"], [1, 0]),
])
def test_parse_gpus(value, want):
    assert parse_gpus(value) == want


@pytest.mark.parametrize("value,msg", [
    ("0,", "'' is not a device id"), ("a", "'a' is not a device id"), ("-1", "'-1' is not a device id"),
    ("0,0", "device 0 listed twice"), ([True], "is not a device id"), ("0.5", "is not a device id"),
])
def test_parse_gpus_errors(value, msg):
    with pytest.raises(ValueError, match=msg):
        parse_gpus(value)


def test_gpus_all(monkeypatch):
    monkeypatch.setattr(repo_mod, "visible_gpus", lambda: 4)
    assert parse_gpus("all") == parse_gpus("ALL") == [0, 1, 2, 3]
    monkeypatch.setattr(repo_mod, "visible_gpus", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        parse_gpus("all")


def test_visible_gpus_without_a_gpu():
    if not torch.cuda.is_available():
        assert repo_mod.visible_gpus() == 0
    else:
        assert repo_mod.visible_gpus() == torch.cuda.device_count()


# -- the CLI ------------------------------------------------------------------------------------------
def test_cli_build_repo_gpus(dirs, tmp_path):
    out = tmp_path / "repo"
    cli.main(["build-repo", "--model", dirs[0], "--engine", "torch_cuda", "--engine-dir", dirs[1],
              "--config", GPU_YAML, "--out", str(out), "--gpus", "0,1"])
    enc = _parse(open(out / "encoder" / "config.pbtxt").read())
    assert _group(enc) == (2, "KIND_GPU", [0, 1])
    assert json.load(open(out / "serving.json"))["config"]["gpus"] == [0, 1]


@pytest.mark.parametrize("flag,msg", [
    ("0,0", "device 0 listed twice"), ("x", "'x' is not a device id"), ("", "give device ids"),
    ("all", "no CUDA GPU is visible"),
])
def test_cli_gpus_errors(dirs, tmp_path, monkeypatch, capsys, flag, msg):
    monkeypatch.setattr(repo_mod, "visible_gpus", lambda: 0)
    with pytest.raises(SystemExit) as e:
        cli.main(["build-repo", "--model", dirs[0], "--out", str(tmp_path / "r"), "--gpus", flag])
    assert e.value.code == 2
    assert "argument --gpus" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        cli.main(["build-repo", "--model", dirs[0], "--out", str(tmp_path / "r"), "--gpus", flag])
    assert msg in capsys.readouterr().err


def test_cli_serve_gpus_checks(dirs, tmp_path, monkeypatch):
    from wenet_triton import cli_serving

    with pytest.raises(SystemExit, match="--gpus renders the repository"):
        cli.main(["serve", "--repo", str(tmp_path), "--gpus", "0,1"])
    monkeypatch.setattr(cli_serving, "visible_gpus", lambda: 2)
    with pytest.raises(SystemExit, match=r"GPU 2,3 not visible here \(2 visible: ids 0..1\)"):
        cli.main(["serve", "--model", dirs[0], "--engine", "torch_cuda", "--gpus", "0,1,2,3"])
    monkeypatch.setattr(cli_serving, "visible_gpus", lambda: 0)
    with pytest.raises(SystemExit, match=r"GPU 0 not visible here \(0 visible\)"):
        cli.main(["serve", "--model", dirs[0], "--engine", "torch_cuda", "--gpus", "0"])


# -- the device each Triton instance runs on ------------------------------------------------------------
@pytest.mark.parametrize("dev_id", ["0", "1", "2", "3"])
def test_device_of_a_kind_gpu_instance(dev_id):
    args = {"model_instance_kind": "GPU", "model_instance_device_id": dev_id}
    assert triton_models._device(args, {"device": "cuda"}) == f"cuda:{dev_id}"
    assert triton_models._device(args, {}) == f"cuda:{dev_id}"


def test_device_of_a_kind_cpu_instance():
    args = {"model_instance_kind": "CPU", "model_instance_device_id": "0"}
    assert triton_models._device(args, {"device": "cuda"}) == "cuda:0"  # one GPU, as before
    assert triton_models._device(args, {"device": "cpu"}) == "cpu"
    assert triton_models._device({}, {}) == "cpu"


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, *a, **k):
        self.calls.append(a[0] if len(a) == 1 else a)


def _args(tmp_path, params, kind="GPU", dev_id="3"):
    vdir = tmp_path / "1"
    vdir.mkdir(exist_ok=True)
    EngineSettings(beam_size=10, ctc_weight=0.3, reverse_weight=0.3, sos=99, eos=99, vocab_size=100,
                   decoder_has_reverse_input=True).save(str(vdir))
    return {"model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in params.items()}}),
            "model_repository": str(tmp_path), "model_version": "1",
            "model_instance_kind": kind, "model_instance_device_id": dev_id}


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.set_device, the engine factory and the GPU fbank, recorded instead of run."""
    import wenet_triton.audio.torch_fbank as tf
    import wenet_triton.engines as engines

    rec = {"set_device": _Recorder(), "engine": [], "fbank": []}
    monkeypatch.setattr(torch.cuda, "set_device", rec["set_device"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)

    def open_engine(vdir, engine, device, **kw):
        rec["engine"].append((engine, device))
        return object()

    class FakeFbank:
        def __init__(self, conf, device):
            rec["fbank"].append(device)
            self.batch = None

    monkeypatch.setattr(engines, "open_engine", open_engine)
    monkeypatch.setattr(tf, "TorchFbank", FakeFbank)
    return rec


@pytest.mark.parametrize("dev_id", ["0", "1", "2", "3"])
def test_encoder_engine_and_fbank_follow_the_instance_gpu(tmp_path, fake_cuda, dev_id):
    enc = triton_models.Encoder()
    enc.initialize(_args(tmp_path, {"engine": "torch_cuda", "device": "cuda", "dtype": "float16",
                                    "frontend": "fbank"}, dev_id=dev_id))
    assert fake_cuda["engine"] == [("torch_cuda", f"cuda:{dev_id}")]
    assert fake_cuda["fbank"] == [f"cuda:{dev_id}"]
    assert fake_cuda["set_device"].calls == [f"cuda:{dev_id}"]  # the process's current device


def test_one_gpu_kind_cpu_encoder_stays_on_cuda0(tmp_path, fake_cuda):
    enc = triton_models.Encoder()
    enc.initialize(_args(tmp_path, {"engine": "torch_cuda", "device": "cuda", "frontend": "fbank"},
                         kind="CPU", dev_id="0"))
    assert fake_cuda["engine"] == [("torch_cuda", "cuda:0")] and fake_cuda["fbank"] == ["cuda:0"]


def test_cpu_encoder_and_feature_extractor_touch_no_gpu(tmp_path, fake_cuda):
    triton_models.Encoder().initialize(_args(tmp_path, {"engine": "onnxruntime", "device": "cpu"},
                                             kind="CPU", dev_id="0"))
    triton_models.FeatureExtractor().initialize(_args(tmp_path, {"device": "cpu"}, kind="CPU", dev_id="0"))
    assert fake_cuda["engine"] == [("onnxruntime", "cpu")]
    assert fake_cuda["fbank"] == [] and fake_cuda["set_device"].calls == []


def test_gpu_feature_extractor_follows_the_instance_gpu(tmp_path, fake_cuda):
    triton_models.FeatureExtractor().initialize(_args(tmp_path, {"device": "cuda"}, dev_id="2"))
    assert fake_cuda["fbank"] == ["cuda:2"] and fake_cuda["set_device"].calls == ["cuda:2"]


def test_cuda_engine_runs_with_its_device_current(monkeypatch):
    """encode_tensors / rescore_tensors (CUDA graphs, our kernels' stream) enter the engine's
    device first, whatever the current device is."""
    from wenet_triton.engines.cuda import CudaEngine

    entered = []

    class Stop(Exception):
        pass

    class FakeDevice:
        def __init__(self, dev):
            entered.append(dev)

        def __enter__(self):
            raise Stop

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    eng = CudaEngine.__new__(CudaEngine)
    eng.device = torch.device("cuda", 1)
    for call in (lambda: eng.encode_tensors(None, None), lambda: eng.rescore_tensors(*[None] * 6)):
        with pytest.raises(Stop):
            call()
    assert entered == [torch.device("cuda", 1)] * 2


@pytest.mark.parametrize("n", [1, 2, 4])
def test_fused_gpu_config_spreads_the_fused_model(dirs, tmp_path, n):
    """configs/serving_gpu.yaml (pipeline: fused, the GPU default): the one model that runs the engine gets its
    instances on each listed GPU; one GPU renders as without `gpus`."""
    gpus = list(range(n))
    res = _render(dirs, tmp_path / "r", "torch_cuda", FUSED_YAML, gpus=gpus)
    assert set(res) == {"attention_rescoring"}  # the fused python model under the clients' name
    count, kind, listed = _group(res["attention_rescoring"][1])
    want = repo_mod.load_serving_config(FUSED_YAML)["models"]["fused"]
    assert count == want["instances"]
    assert (kind, listed) == (("KIND_GPU", gpus) if n >= 2 else (want["kind"], []))


@pytest.mark.parametrize("engine,over,want", [
    ("torch_cuda", {}, ("torch", "cuda", "1")),  # GPU hosts: batched fbank on the encoder's GPU
    ("torch", {}, ("knf", "cpu", "1")),          # CPU: kaldi-native-fbank per stream, as before
    ("torch", {"fbank": "torch", "search_threads": 3}, ("torch", "cpu", "3")),
    ("torch_cuda", {"fbank": "knf", "search_threads": 0}, ("knf", "cpu", "0")),
])
def test_streaming_fbank_and_search_threads_parameters(dirs, tmp_path, engine, over, want):
    """`streaming.fbank` (auto: the batched torch fbank where the chunk encoder runs on a GPU,
    else knf) and `streaming.search_threads` reach the `streaming` model's parameters."""
    from conftest import model_dir

    build_repo(model_dir("u2pp_conformer"), str(tmp_path / "r"), engine, None,
               {"streaming": over}, engine_dir=dirs[1])
    cfg = _parse(open(tmp_path / "r" / "streaming" / "config.pbtxt").read())
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert (p["fbank"], p["feature_device"], p["search_threads"]) == want
    served = json.load(open(tmp_path / "r" / "serving.json"))["streaming"]
    assert (served["fbank"], served["feature_device"]) == want[:2]
    with pytest.raises(ValueError, match="streaming.fbank"):
        build_repo(model_dir("u2pp_conformer"), str(tmp_path / "bad"), engine, None,
                   {"streaming": {"fbank": "sox"}}, engine_dir=dirs[1])
