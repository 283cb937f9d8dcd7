"""The PyTorch model against WeNet's own encoder outputs and CTC log-probs."""
import numpy as np
import pytest
import torch
from conftest import MODELS, reference

from wenet_triton.audio.frontend import pad_feats


@pytest.mark.parametrize("name", MODELS)
def test_encoder_matches_wenet(name, torch_models):
    model = torch_models[name]
    dec, npz = reference(name)
    worst_enc = worst_ctc = 0.0
    for utt in sorted(dec["utts"]):
        r = npz(utt)
        f = torch.from_numpy(r["feats"])[None]
        with torch.no_grad():
            enc, lens, logp = model.encode(f, torch.tensor([f.shape[1]], dtype=torch.int32))
        assert lens.item() == r["encoder_out"].shape[0]
        worst_enc = max(worst_enc, float(np.abs(enc[0].numpy() - r["encoder_out"]).max()))
        top = logp[0].topk(10)
        worst_ctc = max(worst_ctc, float(np.abs(top.values.numpy() - r["ctc_topk_values"]).max()))
        # indices may swap only between near-equal candidates: compare values at WeNet's indices
        at_ref = logp[0].gather(1, torch.from_numpy(r["ctc_topk_idx"])).numpy()
        worst_ctc = max(worst_ctc, float(np.abs(at_ref - r["ctc_topk_values"]).max()))
        assert (top.indices.numpy()[:, 0] == r["ctc_topk_idx"][:, 0]).all()
        if "ctc_log_probs" in r.files:
            worst_ctc = max(worst_ctc, float(np.abs(logp[0].numpy() - r["ctc_log_probs"]).max()))
    assert worst_enc <= 1e-4, worst_enc
    assert worst_ctc <= 1e-4, worst_ctc


@pytest.mark.parametrize("name", MODELS)
def test_mixed_length_batch_equals_one_by_one(name, torch_models):
    """WeNet issue #531: padding must not change any utterance's output."""
    model = torch_models[name]
    dec, npz = reference(name)
    utts = sorted(dec["utts"])[:6]
    feats = [npz(u)["feats"] for u in utts]
    feats[2] = feats[2][:301]  # make lengths really differ
    x, lens = pad_feats(feats)
    with torch.no_grad():
        enc_b, lens_b, logp_b = model.encode(torch.from_numpy(x), torch.from_numpy(lens))
        for i, f in enumerate(feats):
            enc_1, lens_1, logp_1 = model.encode(torch.from_numpy(f)[None],
                                                 torch.tensor([len(f)], dtype=torch.int32))
            n = lens_1.item()
            assert lens_b[i].item() == n
            assert torch.abs(enc_b[i, :n] - enc_1[0]).max() <= 1e-5
            assert torch.abs(logp_b[i, :n] - logp_1[0]).max() <= 1e-4
