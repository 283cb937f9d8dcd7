import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import model_dir

from wenet_triton.model.checkpoint import (
    CheckpointError,
    cmvn_from_json,
    cmvn_from_kaldi_text,
    load_model_dir,
)
from wenet_triton.model.conformer import ASRModel


def _copy(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(model_dir(name), d)
    for p in d.iterdir():
        os.chmod(p, 0o644)
    return d


@pytest.mark.parametrize("name,vocab_file,decoder", [
    ("u2pp_conformer", "units.txt", "bitransformer"), ("conformer_2021", "words.txt", "transformer")])
def test_loads_both_yaml_styles(name, vocab_file, decoder):
    spec = load_model_dir(model_dir(name))
    assert spec.decoder_type == decoder
    assert spec.vocab_size == 3003 and spec.vocab[0] == "<blank>" and spec.vocab[-1] == "<sos/eos>"
    assert spec.sos == spec.eos == 3002
    assert spec.fbank.num_mel_bins == 80 and spec.fbank.frame_shift_ms == 10
    # final.pt's CMVN buffers agree with the global_cmvn JSON
    mean, istd = cmvn_from_json(os.path.join(model_dir(name), "global_cmvn"))
    np.testing.assert_allclose(spec.cmvn_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(spec.cmvn_istd, istd, rtol=1e-5)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model_dir(str(tmp_path / "nope"))
    d = _copy("u2pp_conformer", tmp_path)
    os.remove(d / "units.txt")
    with pytest.raises(CheckpointError, match="no vocabulary"):
        load_model_dir(str(d))
    d = _copy("conformer_2021", tmp_path / "b")
    os.remove(d / "final.pt")
    with pytest.raises(CheckpointError, match="final.pt not found"):
        load_model_dir(str(d))


def test_vocab_size_mismatch(tmp_path):
    d = _copy("u2pp_conformer", tmp_path)
    lines = (d / "units.txt").read_text(encoding="utf-8").splitlines()
    (d / "units.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="output_dim"):
        load_model_dir(str(d))


def test_extra_keys_accepted_and_wrong_keys_named(tmp_path):
    spec = load_model_dir(model_dir("u2pp_conformer"))
    sd = dict(spec.state_dict)
    sd["encoder.embed.pos_enc.pe"] = torch.zeros(1, 5000, 256)  # WeNet >= 2024 saves this
    spec.state_dict = sd
    ASRModel.from_spec(spec)
    sd2 = dict(sd)
    del sd2["encoder.encoders.3.norm_ff.weight"]
    spec.state_dict = sd2
    with pytest.raises(CheckpointError, match="encoders.3.norm_ff.weight"):
        ASRModel.from_spec(spec)


def test_concat_after_checkpoint(tmp_path):
    """2021 checkpoints trained with concat_after carry concat_linear weights."""
    d = _copy("conformer_2021", tmp_path)
    cfg = yaml.safe_load((d / "train.yaml").read_text())
    cfg["encoder_conf"]["concat_after"] = True
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    sd = torch.load(d / "final.pt", weights_only=True)
    for i in range(cfg["encoder_conf"]["num_blocks"]):
        sd[f"encoder.encoders.{i}.concat_linear.weight"] = torch.randn(256, 512) * 0.01
        sd[f"encoder.encoders.{i}.concat_linear.bias"] = torch.zeros(256)
    torch.save(sd, d / "final.pt")
    model = ASRModel.from_spec(load_model_dir(str(d)))
    enc, lens, _ = model.encode(torch.randn(1, 50, 80), torch.tensor([50]))
    assert enc.shape == (1, 11, 256) and lens.item() == 11


def test_cmvn_from_json_when_not_in_checkpoint(tmp_path):
    d = _copy("u2pp_conformer", tmp_path)
    sd = torch.load(d / "final.pt", weights_only=True)
    ref_mean, ref_istd = sd.pop("encoder.global_cmvn.mean"), sd.pop("encoder.global_cmvn.istd")
    torch.save(sd, d / "final.pt")
    spec = load_model_dir(str(d))
    np.testing.assert_allclose(spec.cmvn_mean, ref_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(spec.cmvn_istd, ref_istd.numpy(), rtol=1e-5)


def test_kaldi_text_cmvn(tmp_path):
    mean_stat, var_stat, n = np.arange(1, 4.0) * 10, np.arange(1, 4.0) * 200, 10
    p = tmp_path / "cmvn.ark"
    p.write_text(" [\n " + " ".join(map(str, mean_stat)) + f" {n}\n "
                 + " ".join(map(str, var_stat)) + " 0 ]\n")
    mean, istd = cmvn_from_kaldi_text(str(p))
    np.testing.assert_allclose(mean, mean_stat / n)
    np.testing.assert_allclose(istd, 1 / np.sqrt(var_stat / n - (mean_stat / n) ** 2), rtol=1e-6)


def test_bad_yaml_named(tmp_path):
    d = _copy("u2pp_conformer", tmp_path)
    cfg = yaml.safe_load((d / "train.yaml").read_text())
    cfg["encoder_conf"]["cnn_module_norm"] = "group_norm"
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="group_norm"):
        ASRModel.from_spec(load_model_dir(str(d)))
