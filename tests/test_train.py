"""Training pieces (wenet_triton.train): loss definitions against independent formulations,
chunk masks as a causality property, SpecAugment bounds, model-dir round trip, learning."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import model_dir

from wenet_triton.model.checkpoint import load_model_dir
from wenet_triton.model.conformer import ASRModel
from wenet_triton.model.train import (
    DEMO_CONFIG,
    cmvn_stats,
    decoder_targets,
    dynamic_chunk_size,
    label_smoothing_loss,
    spec_augment,
    u2_loss,
    write_model_dir,
)


def _tiny_spec():
    spec = copy.copy(load_model_dir(model_dir("u2pp_conformer"), load_weights=False))
    spec.encoder_conf = dict(spec.encoder_conf, output_size=32, linear_units=64, num_blocks=2)
    spec.decoder_conf = dict(spec.decoder_conf, linear_units=64, num_blocks=1, r_num_blocks=1)
    return spec


def test_label_smoothing_loss_is_klDiv_to_smoothed_targets():
    torch.manual_seed(0)
    N, L, V, s = 3, 5, 11, 0.1
    logits = torch.randn(N, L, V)
    target = torch.randint(0, V, (N, L))
    target[1, 3:] = -1
    valid = target >= 0
    true = torch.full((N, L, V), s / (V - 1))
    true.scatter_(2, target.clamp(min=0).unsqueeze(2), 1 - s)
    kl = F.kl_div(F.log_softmax(logits, -1), true, reduction="none").sum(-1)
    assert torch.allclose(label_smoothing_loss(logits, target, s), kl[valid].sum(), rtol=1e-5)


def test_decoder_targets_add_sos_eos_and_reverse():
    ys = [torch.tensor([5, 6, 7]), torch.tensor([9])]
    ys_in, ys_out, lens = decoder_targets(ys, sos=1, eos=2)
    assert ys_in.tolist() == [[1, 5, 6, 7], [1, 9, 2, 2]]
    assert ys_out.tolist() == [[5, 6, 7, 2], [9, 2, -1, -1]]
    assert lens.tolist() == [4, 2]
    r_in, r_out, _ = decoder_targets(ys, sos=1, eos=2, reverse=True)
    assert r_in[0].tolist() == [1, 7, 6, 5] and r_out[0].tolist() == [7, 6, 5, 2]


def test_chunk_masked_encoder_does_not_look_past_its_chunk():
    torch.manual_seed(0)
    model = ASRModel(_tiny_spec()).eval()
    x = torch.randn(1, 200, 80)
    lens = torch.tensor([200])
    chunk = 4  # encoder frames; conv2d 4x: encoder frame t needs fbank frames < 4t + 7
    with torch.no_grad():
        a, _ = model.encoder(x, lens, chunk)
        y = x.clone()
        y[:, 4 * 2 * chunk + 3:] += 5.0  # change audio after the second chunk's receptive field
        b, _ = model.encoder(y, lens, chunk)
        full_a, _ = model.encoder(x, lens)
        full_b, _ = model.encoder(y, lens)
    assert torch.allclose(a[:, :2 * chunk], b[:, :2 * chunk], atol=1e-5)
    assert not torch.allclose(full_a[:, :2 * chunk], full_b[:, :2 * chunk], atol=1e-3)


def test_dynamic_chunk_draw_matches_wenet_rule():
    g = torch.Generator().manual_seed(0)
    draws = [dynamic_chunk_size(100, g) for _ in range(2000)]
    full = sum(d == 0 for d in draws) / len(draws)
    assert 0.4 < full < 0.6
    assert all(0 <= d <= 25 for d in draws)


def test_spec_augment_masks_within_bounds_and_fills():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 300, 80) + 10
    lens = torch.tensor([300, 200, 120, 60])
    fill = torch.zeros(80)
    y = spec_augment(x, lens, fill, g, num_f=2, max_f=10, num_t=2, max_t=50)
    masked = y == 0
    assert torch.equal(y[~masked], x[~masked])
    for b in range(4):
        cols = masked[b].all(0).sum()   # bins masked at every frame
        rows = masked[b].all(1).sum()   # frames masked in every bin
        assert cols <= 20 and rows <= 100
        assert not masked[b, lens[b] + 50:].all(1).any()  # time masks start inside the utterance


def test_written_model_dir_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    cfg = json.loads(json.dumps(DEMO_CONFIG))
    cfg["encoder_conf"].update(output_size=32, linear_units=64, num_blocks=2)
    cfg["decoder_conf"].update(linear_units=64, num_blocks=1)
    units = model_dir("u2pp_conformer") + "/units.txt"
    cmvn = cmvn_stats([torch.randn(50, 80) * 3 + 1, torch.randn(70, 80) * 3 + 1])
    d = write_model_dir(str(tmp_path / "m"), cfg, units, cmvn)
    model = ASRModel(load_model_dir(d, load_weights=False))
    write_model_dir(d, cfg, units, cmvn, model.state_dict(), half=True)
    loaded = ASRModel.from_spec(load_model_dir(d))
    x, lens = torch.randn(2, 120, 80) * 3 + 1, torch.tensor([120, 90])
    with torch.no_grad():
        a, _ = model.encoder(x, lens)
        b, _ = loaded.encoder(x, lens)
    assert torch.allclose(loaded.encoder.global_cmvn.mean, model.encoder.global_cmvn.mean)
    assert (a - b).abs().max() < 0.05  # fp16-rounded weights


@pytest.mark.parametrize("chunk", [0, 3])
def test_u2_loss_learns_a_small_batch(chunk):
    torch.manual_seed(0)
    model = ASRModel(_tiny_spec())
    x = torch.randn(3, 150, 80)
    lens = torch.tensor([150, 130, 100])
    ys = [torch.randint(2, 50, (n,)) for n in (6, 5, 4)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = u2_loss(model, x, lens, ys, 0.3, 0.3, 0.1, chunk)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["loss"].detach())
    assert float(out["loss"].detach()) < 0.5 * first
    assert float(out["ctc"]) > 0 and float(out["att"]) > 0
