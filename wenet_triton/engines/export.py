"""ONNX export of the encoder and decoder (WeNet's GPU-export I/O), with verification.

Every export is checked by onnx.checker and by running onnxruntime against the PyTorch
model at several batch sizes and lengths (a frozen length would show up there).
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Dict, Optional

import numpy as np
import onnx
import torch

from wenet_triton.contract import ENCODER_INPUTS, ENCODER_OUTPUTS, EngineSettings
from wenet_triton.engines.onnx import OnnxEngine
from wenet_triton.engines.torch_engine import TorchEngine
from wenet_triton.model.checkpoint import ModelSpec, load_model_dir
from wenet_triton.model.conformer import ASRModel, ExportDecoder, ExportEncoder

log = logging.getLogger(__name__)

OPSET = 17


def export_settings(spec: ModelSpec, model: ASRModel, beam_size: int = 10,
                    ctc_weight: Optional[float] = None, reverse_weight: Optional[float] = None
                    ) -> EngineSettings:
    ctc_w = spec.ctc_weight if ctc_weight is None else float(ctc_weight)
    rev_w = spec.reverse_weight if reverse_weight is None else float(reverse_weight)
    if rev_w > 0 and not spec.is_bidirectional:
        raise ValueError(f"--reverse-weight {rev_w} needs a bitransformer decoder "
                         f"(this model has '{spec.decoder_type}')")
    emb = model.encoder.embed
    return EngineSettings(
        beam_size=int(beam_size), ctc_weight=ctc_w, reverse_weight=rev_w, sos=spec.sos,
        eos=spec.eos, blank=0, vocab_size=spec.vocab_size, decoder_has_reverse_input=rev_w > 0,
        output_size=model.encoder.d_model, input_dim=spec.input_dim,
        subsampling_rate=emb.subsampling_rate, right_context=emb.right_context,
        fbank=spec.fbank, encoder_type=spec.encoder_type, decoder_type=spec.decoder_type,
        vocab_file="units.txt", source_model_dir=os.path.abspath(spec.model_dir))


class _DecoderNoReverse(torch.nn.Module):
    def __init__(self, dec: ExportDecoder):
        super().__init__()
        self.dec = dec

    def forward(self, encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos, ctc_score):
        return self.dec(encoder_out, encoder_out_lens, hyps_pad_sos_eos, hyps_lens_sos,
                        None, ctc_score)


def _dummy_encoder_inputs(spec: ModelSpec, batch: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, spec.input_dim, generator=g) * 3 + 10
    lens = torch.randint(max(frames // 2, 10), frames + 1, (batch,), generator=g).to(torch.int32)
    lens[0] = frames
    return x, lens


def _dummy_decoder_inputs(enc_out, enc_lens, settings, hyp_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, beam = enc_out.shape[0], settings.beam_size
    hyps = torch.randint(2, settings.vocab_size - 1, (B, beam, hyp_len + 2), generator=g)
    lens = torch.randint(1, hyp_len + 1, (B, beam), generator=g)
    lens[0, 0] = hyp_len
    idx = torch.arange(hyp_len + 2)
    hyps[:, :, 0] = settings.sos
    hyps = torch.where(idx[None, None] > lens[..., None], settings.eos, hyps)
    rhyps = hyps.clone()  # any valid ids will do for tracing and checking
    score = torch.randn(B, beam, generator=g)
    return hyps, (lens + 1).to(torch.int32), rhyps, score


def export_onnx(model_dir: str, out_dir: str, beam_size: int = 10,
                ctc_weight: Optional[float] = None, reverse_weight: Optional[float] = None,
                verify: bool = True) -> EngineSettings:
    """Export encoder.onnx + decoder.onnx + settings JSON + vocab into out_dir."""
    spec = load_model_dir(model_dir)
    model = ASRModel.from_spec(spec)
    settings = export_settings(spec, model, beam_size, ctc_weight, reverse_weight)
    export_onnx_from_model(model, settings, out_dir, verify)
    # keep the model config beside the engines so serving needs no other files
    shutil.copyfile(os.path.join(model_dir, "train.yaml"), os.path.join(out_dir, "train.yaml"))
    return settings


def export_onnx_from_model(model: ASRModel, settings: EngineSettings, out_dir: str,
                           verify: bool = True) -> EngineSettings:
    spec = model.spec
    beam_size = settings.beam_size
    os.makedirs(out_dir, exist_ok=True)
    enc_path = os.path.join(out_dir, "encoder.onnx")
    dec_path = os.path.join(out_dir, "decoder.onnx")

    enc = ExportEncoder(model, beam_size).eval()
    x, xl = _dummy_encoder_inputs(spec, 2, 157)
    log.info("exporting encoder -> %s", enc_path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            enc, (x, xl), enc_path, dynamo=False, opset_version=OPSET,
            input_names=ENCODER_INPUTS, output_names=ENCODER_OUTPUTS,
            do_constant_folding=True,
            dynamic_axes={"speech": {0: "B", 1: "T"}, "speech_lengths": {0: "B"},
                          "encoder_out": {0: "B", 1: "T_OUT"}, "encoder_out_lens": {0: "B"},
                          "ctc_log_probs": {0: "B", 1: "T_OUT"},
                          "beam_log_probs": {0: "B", 1: "T_OUT"},
                          "beam_log_probs_idx": {0: "B", 1: "T_OUT"}})

    dec = ExportDecoder(model, settings.ctc_weight, settings.reverse_weight).eval()
    with torch.no_grad():
        eo, el, *_ = enc(x, xl)
    hyps, hl, rhyps, sc = _dummy_decoder_inputs(eo, el, settings, 13)
    ins, outs = settings.decoder_io()
    args = (eo, el, hyps, hl, rhyps, sc) if settings.decoder_has_reverse_input else (eo, el, hyps, hl, sc)
    module = dec if settings.decoder_has_reverse_input else _DecoderNoReverse(dec)
    axes = {"encoder_out": {0: "B", 1: "T"}, "encoder_out_lens": {0: "B"},
            "hyps_pad_sos_eos": {0: "B", 2: "L"}, "hyps_lens_sos": {0: "B"},
            "r_hyps_pad_sos_eos": {0: "B", 2: "L"}, "ctc_score": {0: "B"},
            "best_index": {0: "B"}, "score": {0: "B"}}
    log.info("exporting decoder -> %s", dec_path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, dec_path, dynamo=False, opset_version=OPSET,
                          input_names=ins, output_names=outs, do_constant_folding=True,
                          dynamic_axes={k: v for k, v in axes.items() if k in ins + outs})

    with open(os.path.join(out_dir, "units.txt"), "w", encoding="utf-8") as f:
        for i, tok in enumerate(spec.vocab):
            f.write(f"{tok} {i}\n")
    settings.save(out_dir)
    if verify:
        settings.verification = verify_onnx(model, out_dir, settings)
        settings.save(out_dir)
    return settings


def verify_onnx(model: ASRModel, out_dir: str, settings: EngineSettings, tol: float = 1e-4) -> Dict:
    """Compare onnxruntime against PyTorch at several batch sizes and lengths."""
    for name in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(os.path.join(out_dir, name))
    ort_eng = OnnxEngine(out_dir, providers=["CPUExecutionProvider"])
    pt_eng = TorchEngine(model, settings)
    report = {}
    for batch, frames, hyp_len in [(1, 67, 5), (3, 301, 17), (4, 1033, 40)]:
        x, xl = _dummy_encoder_inputs(model.spec, batch, frames, seed=frames)
        a = pt_eng.encode(x.numpy(), xl.numpy())
        b = ort_eng.encode(x.numpy(), xl.numpy())
        if not np.array_equal(a["encoder_out_lens"], b["encoder_out_lens"]):
            raise RuntimeError(f"encoder_out_lens differ at B={batch} T={frames}")
        errs = {"encoder_out": float(np.abs(a["encoder_out"] - b["encoder_out"]).max()),
                # log-probs of a trained model reach -40: compare relative to 1 + |value|
                "ctc_log_probs": float((np.abs(a["ctc_log_probs"] - b["ctc_log_probs"])
                                        / (1.0 + np.abs(a["ctc_log_probs"]))).max())}
        eo = torch.from_numpy(a["encoder_out"])
        hyps, hl, rhyps, sc = _dummy_decoder_inputs(eo, torch.from_numpy(a["encoder_out_lens"]),
                                                    settings, hyp_len, seed=hyp_len)
        da = pt_eng.rescore(a["encoder_out"], a["encoder_out_lens"], hyps.numpy(), hl.numpy(),
                            rhyps.numpy(), sc.numpy())
        db = ort_eng.rescore(a["encoder_out"], a["encoder_out_lens"], hyps.numpy(), hl.numpy(),
                             rhyps.numpy(), sc.numpy())
        errs["decoder_score"] = float(np.abs(da[1] - db[1]).max() / max(1.0, np.abs(da[1]).max()))
        key = f"B{batch}_T{frames}"
        report[key] = errs
        log.info("verify %s: %s", key, errs)
        # relative log-prob error: fp32 summation-order noise in encoder_out (~4e-5 at T=1033)
        # grows through a trained CTC projection; 10x the others' tolerance
        bad = {k: v for k, v in errs.items() if not v <= (10 * tol if k == "ctc_log_probs" else tol)}
        if bad:
            raise RuntimeError(f"ONNX export differs from PyTorch at B={batch} T={frames}: {bad}")
    return report
