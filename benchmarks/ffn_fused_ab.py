"""The FFN + the residual add + LayerNorm after it, on one GPU, each variant timed inside a
CUDA graph (launch gaps as in the engine's graphs), as the `torch_cuda` engine runs them
(FastModel.ffn with defer, then add_ln):

- `cublas`: cuBLAS GEMM (bias epilogue) -> activation pass -> cuBLAS GEMM (split-K below
  1,025 rows); the decoder's ReLU sits in the first GEMM's epilogue;
- `silu_gemm`: the first GEMM + bias + SiLU as one Triton kernel (triton_gemm, encoder only);
- `fused_ffn`: the whole FFN as one Triton kernel (triton_ffn), hidden units split over
  programs for few rows (fp32 partials summed by the add + LayerNorm kernel), with its rule;
- `fp8`: the FFN's GEMMs in e4m3 (engines/fp8.py, opt-in; from 1,024 rows), scales from the
  rows themselves;
- with `--sweep`, `fused_ffn` under each plan of a list (BM, BH, warps, stages, S) instead
  of the rule: the measurements the rule (triton_ffn.plan) is made from.

Also the CTC head (`ctc_head`: linear_f32 + kernels.log_softmax_topk, k 10, against the
opt-in triton_ctc kernel) and the decoder's output projection + log-softmax + gather of the
target (`decoder_vocab`):
`cublas` = the engine's fp32 TF32 GEMM (linear_f32) + kernels.log_softmax_gather, against
`fused_vocab` (triton_vocab, its rule; `--sweep`: each plan of VOCAB_SWEEP).

    python3 -m benchmarks.ffn_fused_ab --out ffn_fused.csv --plot ffn_fused.png [--sweep]
    .venv/bin/python -m benchmarks.ffn_fused_ab --from-csv ffn_fused.csv --plot ffn_fused.png   # no GPU

Shape: the AISHELL model (d 256, FFN 2048; random weights): encoder FFN (SiLU) at rows =
batch x frames (1 x 10 s: 256 rows; 64 x 20 s: 32,768), decoder FFN (ReLU) at rows = batch x
beam 10 x tokens (1 x 10 s: ~410; 64 x 20 s: 51,840). One CSV row per (ffn, variant, rows):
microseconds per call (median of `--rounds` graph replays of `--reps` calls each) and, in
`rel_err`, the largest relative error of the LayerNorm output against the fp32 model (FFN
rows) or the largest absolute error of the log-probabilities against log_softmax over fp32
logits (`decoder_vocab`, `ctc_head` rows)."""
import argparse

import torch
import torch.nn.functional as F

from benchmarks.ab_io import finish, load_rows, rel_err, style, timed
from wenet_triton.engines import fp8

SWEEP = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 3), (64, 128, 4, 2), (64, 64, 8, 2),
         (128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (128, 128, 8, 2)]


VOCAB_SWEEP = [(64, 128, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 128, 8, 3)]


def _model():
    from wenet_triton.engines.cuda import FastModel
    from wenet_triton.model import synthetic
    from wenet_triton.model.conformer import ASRModel

    spec = synthetic.random_spec(synthetic.AISHELL)
    return FastModel(ASRModel.from_spec(spec), torch.float16, "cuda")


def _ref(y, x, p, scale, ln):
    """fp32: x + scale * FFN(y), then the LayerNorm."""
    w1, b1, w2, b2, act = p[:5]
    h = F.linear(y.float(), w1.float(), b1.float())
    h = F.silu(h) if act == "silu" else F.relu(h)
    s = x.float() + scale * F.linear(h, w2.float(), b2.float())
    return F.layer_norm(s, (s.shape[-1],), ln[0].float(), ln[1].float(), ln[2])


def measure(rows_enc, rows_dec, reps: int, rounds: int, sweep: bool):
    from wenet_triton.engines import triton_ffn
    from wenet_triton.engines.triton_plan import num_sms

    fm = _model()
    sms = num_sms(torch.device("cuda"))
    pieces = [("encoder_silu", fm.layers[0][0][0][2], fm.layers[0][0][0][3], fm.layers[0][0][1][1], rows_enc),
              ("decoder_relu", fm.left["layers"][0][5], 1.0, fm.left["layers"][1][0], rows_dec)]
    out = []
    for name, p, scale, ln, rows_list in pieces:
        for rows in rows_list:
            g = torch.Generator(device="cuda").manual_seed(rows)
            x = torch.randn(1, rows, fm.d, device="cuda", generator=g).half()
            y = F.layer_norm(x.float(), (fm.d,)).half()
            ref = _ref(y, x, p, scale, ln)

            def run(silu=False, ffn=False):
                fm.fused_silu, fm.fused_ffn = silu, ffn
                return fm.add_ln(x, fm.ffn(y, p, defer=True), scale, ln)[1]

            variants = [("cublas", lambda: run()), ("fused_ffn", lambda: run(ffn=True))]
            if p[4] == "silu":
                variants.insert(1, ("silu_gemm", lambda: run(silu=True)))
                q8 = _fp8_pack(y, p)
                if fp8.fits(y, q8, "silu"):
                    variants.append(("fp8", lambda q8=q8: fm.add_ln(x, fp8.ffn(y, q8, p[1], p[3]), scale, ln)[1]))
            if sweep:
                hidden = p[0].shape[0]
                for bm, bh, w, st in SWEEP:
                    blocks = -(-rows // bm)
                    for s in (1, 2, 4, 8, 16, 32):
                        if blocks * s > 4 * sms or (s > 1 and blocks * s // 2 >= 2 * sms) or hidden // s < bh:
                            continue
                        variants.append((f"plan {bm},{bh},{w},{st},{s}",
                                         lambda pl=triton_ffn.Plan(bm, bh, w, st, s): _forced(run, pl)))
            out += _rows(name, rows, timed(f"{name} rows {rows:>6}", variants, lambda o, ref=ref: rel_err(o, ref),
                                           reps, rounds))
    out += _measure_vocab(fm, rows_dec, reps, rounds, sweep, sms)
    out += _measure_ctc(fm, rows_enc, reps, rounds)
    return out


def _fp8_pack(y, p):
    """The FFN's e4m3 form with its activation scales taken from these rows (the largest
    input and hidden values), as `wenet-triton calibrate-fp8` takes them from fbank."""
    h = F.silu(F.linear(y.float(), p[0].float(), p[1].float()))
    return fp8.pack_weights(p[0].float(), p[2].float(), (y.float().abs().max().item(), h.abs().max().item()), y.device)


def _measure_ctc(fm, rows_enc, reps, rounds, k: int = 10):
    """The CTC head: linear_f32 + kernels.log_softmax_topk (the engine's default) against the
    opt-in fused kernel (triton_ctc), k 10; `rel_err` = the largest absolute value error."""
    from wenet_triton.engines import kernels, triton_ctc
    from wenet_triton.engines.cuda import linear_f32

    out = []
    for rows in rows_enc:
        g = torch.Generator(device="cuda").manual_seed(rows)
        x = F.layer_norm(torch.randn(rows, fm.d, device="cuda", generator=g), (fm.d,)).half()
        ref = kernels.ref_log_softmax_topk(F.linear(x.float(), fm.ctc_w16.float(), fm.ctc_b32), k, False)[1]
        variants = [("cublas", lambda: kernels.log_softmax_topk(linear_f32(x, fm.ctc_w, fm.ctc_b), k, False,
                                                                fm.vocab)[1]),
                    ("fused_ctc", lambda: triton_ctc.proj_log_softmax_topk(x, fm.ctc_w16, fm.ctc_b32, k)[0])]
        out += _rows("ctc_head", rows, timed(f"ctc_head rows {rows:>6}", variants, _abs_err(ref), reps, rounds))
    return out


def _measure_vocab(fm, rows_dec, reps, rounds, sweep, sms):
    from wenet_triton.engines import kernels, triton_vocab
    from wenet_triton.engines.cuda import linear_f32

    D = fm.left
    out = []
    for rows in rows_dec:
        L = 41 if rows < 4096 else 81  # tokens per hypothesis (10 s / 20 s)
        N = -(-rows // L)
        g = torch.Generator(device="cuda").manual_seed(rows)
        x = F.layer_norm(torch.randn(N, L, fm.d, device="cuda", generator=g), (fm.d,)).half()
        tgt = torch.randint(0, fm.vocab, (N, L), device="cuda", generator=g)
        lens = torch.full((N,), L, dtype=torch.int32, device="cuda")
        ref = kernels.ref_log_softmax_gather(F.linear(x.float(), D["out_w16"].float(), D["out_b32"]), tgt, lens)
        variants = [("cublas", lambda: kernels.log_softmax_gather(linear_f32(x, D["out_w"], D["out_b"]), tgt, lens,
                                                                  fm.vocab)),
                    ("fused_vocab", lambda: triton_vocab.proj_log_softmax_gather(x, D["out_w16"], D["out_b32"],
                                                                                 tgt, lens))]
        if sweep:
            for bm, bn, w, st in VOCAB_SWEEP:
                blocks, tiles = -(-N * L // bm), -(-fm.vocab // bn)
                for s in (1, 2, 4, 8, 16, 32):
                    if s > tiles or blocks * s > 4 * sms or (s > 1 and blocks * s // 2 >= 2 * sms):
                        continue
                    pl = triton_vocab.Plan(bm, bn, w, st, s)
                    variants.append((f"plan {bm},{bn},{w},{st},{s}", lambda pl=pl: triton_vocab.proj_log_softmax_gather(
                        x, D["out_w16"], D["out_b32"], tgt, lens, tiles=pl)))
        out += _rows("decoder_vocab", N * L, timed(f"decoder_vocab rows {N * L:>6}", variants, _abs_err(ref),
                                                   reps, rounds))
    return out


def _abs_err(ref):
    return lambda o: (o - ref).abs().max().item()


def _rows(piece, rows, results):
    """CSV rows of one piece's timed variants."""
    return [{"ffn": piece, "variant": v, "rows": rows, "us": round(us, 2), "rel_err": f"{e:.2e}"}
            for v, us, e in results]


def _forced(run, plan):  # the plan for this call only, also when it fails
    from wenet_triton.engines import triton_ffn

    triton_ffn.FORCED = plan
    try:
        return run(ffn=True)
    finally:
        triton_ffn.FORCED = None


def plot(rows, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ffns = sorted({r["ffn"] for r in rows})
    fig, axes = plt.subplots(1, len(ffns), figsize=(6 * len(ffns), 4), squeeze=False)
    for ax, f in zip(axes[0], ffns):
        sub = [r for r in rows if r["ffn"] == f]
        names = [v for v in ("cublas", "silu_gemm", "fused_ffn", "fp8", "fused_vocab", "fused_ctc")
                 if any(r["variant"] == v for r in sub)]
        for v in names:
            pts = sorted((int(r["rows"]), float(r["us"])) for r in sub if r["variant"] == v)
            ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", label=v)
        best = {}
        for r in sub:
            if r["variant"].startswith("plan"):
                n = int(r["rows"])
                best[n] = min(best.get(n, 1e30), float(r["us"]))
        if best:
            pts = sorted(best.items())
            ax.plot([q[0] for q in pts], [q[1] for q in pts], ls=":", marker="x", label="best swept plan")
        style(ax, "rows, d 256 -> 4,233 tokens, fp16" if f in ("decoder_vocab", "ctc_head")
              else "rows, d 256 -> 2048 -> 256, fp16", title=f)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="256,1024,4096,8192,32768", help="encoder FFN rows")
    p.add_argument("--dec-rows", default="410,3280,51840", help="decoder FFN rows")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sweep", action="store_true", help="also each plan of a list (the rule's measurements)")
    p.add_argument("--out", help="CSV to write")
    p.add_argument("--from-csv", help="redraw from this CSV instead of measuring")
    p.add_argument("--plot", help="PNG to write")
    a = p.parse_args(argv)
    ints = lambda v: [int(x) for x in v.split(",") if x]  # noqa: E731
    rows = load_rows(a.from_csv) if a.from_csv else measure(ints(a.rows), ints(a.dec_rows), a.reps, a.rounds,
                                                            a.sweep)
    finish(rows, a.out, a.plot, plot)

if __name__ == "__main__":
    main()
