"""The conv subsampling's second convolution (3x3, stride 2, 256 -> 256 channels, + bias +
ReLU, channels-last, fp16) on one GPU, each variant timed inside a CUDA graph: cuDNN's fused
convolution + bias + ReLU (the engine's default, `cuda.conv2d_relu`) against the implicit-GEMM
Triton kernel of `wenet_triton/engines/triton_conv.py` (opt-in), with its default tiles and,
with `--sweep`, each plan of SWEEP.

    python3 -m benchmarks.conv_subsample_ab --out conv.csv --plot conv.png [--sweep]
    .venv/bin/python -m benchmarks.conv_subsample_ab --from-csv conv.csv --plot conv.png   # no GPU

Also the first conv (`first_unfused`: the engine's CMVN, cast, unfold + pad copy and GEMM +
ReLU; `first_triton`: triton_conv.first_conv_relu, one kernel) on the fp32 features that
give the second conv's input. Shapes: the AISHELL subsampling at batch x seconds as the
engine buckets them (second conv input (B, 256, H, 39), H 513 at 10 s, 1,025 at 20 s):
1 x 10 s, 8 x 20 s, 64 x 20 s. One CSV row per (variant, shape): microseconds per call
(median of `--rounds` graph replays of `--reps` calls each), TFLOP/s, and the largest
relative error against fp32."""
import argparse

import torch
import torch.nn.functional as F

from benchmarks.ab_io import finish, load_rows, rel_err, style, timed

SWEEP = [(128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4),
         (128, 64, 64, 4, 4), (256, 128, 64, 8, 3)]
SHAPES = {"1x10s": (1, 513), "8x20s": (8, 1025), "64x20s": (64, 1025)}


def measure(shapes, reps: int, rounds: int, sweep: bool):
    from wenet_triton.engines import triton_conv
    from wenet_triton.engines.cuda import conv2d_relu

    out = []
    cl = torch.channels_last
    for label in shapes:
        B, H = SHAPES[label]
        g = torch.Generator(device="cuda").manual_seed(B)
        x = torch.relu(torch.randn(B, H, 39, 256, device="cuda", generator=g)).half().permute(0, 3, 1, 2)
        w = (torch.randn(256, 256, 3, 3, device="cuda", generator=g) * 0.02).half().contiguous(memory_format=cl)
        b = torch.randn(256, device="cuda", generator=g).half()
        ref = F.relu(F.conv2d(x.float(), w.float(), b.float(), 2))
        flop = 2.0 * ref.numel() * 256 * 9
        variants = [("cudnn", lambda: conv2d_relu(x, w, b, (2, 2)), ref, flop),
                    ("triton", lambda: triton_conv.conv2d_relu(x, w, b, (2, 2)), ref, flop)]
        if sweep:
            variants += [(f"plan {','.join(map(str, p))}",
                          lambda p=triton_conv.Plan(*p): triton_conv.conv2d_relu(x, w, b, (2, 2), tiles=p),
                          ref, flop) for p in SWEEP]
        # the first conv: (B, 2H + 1, 80) fp32 features -> (B, H, 39, 256), the input above
        variants += _first_conv_variants(B, 2 * H + 1, g)
        for name, fn, ref, flop in variants:
            for v, us, err in timed(f"{label:>7}", [(name, fn)], lambda o, ref=ref: rel_err(o, ref), reps, rounds):
                out.append({"shape": label, "variant": v, "us": round(us, 2),
                            "tflops": round(flop / us / 1e6, 1), "rel_err": f"{err:.2e}"})
    return out


def _first_conv_variants(B, T, g):
    """The first conv as the engine runs it (CMVN, cast, unfold + pad, GEMM + ReLU) and as
    triton_conv.first_conv_relu (one kernel); AISHELL weights' shapes, random values."""
    from wenet_triton.engines import triton_conv
    from wenet_triton.engines.cuda import linear_relu

    speech = torch.randn(B, T, 80, device="cuda", generator=g) * 2 + 12
    cmvn = (torch.randn(80, device="cuda", generator=g), torch.rand(80, device="cuda", generator=g) + 0.5)
    w = F.pad(torch.randn(256, 9, device="cuda", generator=g) * 0.2, (0, 7)).half()
    b = torch.randn(256, device="cuda", generator=g).half()

    def unfused():
        u = ((speech - cmvn[0]) * cmvn[1]).half().unfold(1, 3, 2).unfold(2, 3, 2)
        return linear_relu(F.pad(u.reshape(*u.shape[:3], 9), (0, 7)), w, b)

    ref = unfused().float()  # itself within fp16 rounding of fp32; the kernel against it
    flop = 2.0 * ref.numel() * 9
    return [("first_unfused", unfused, ref, flop),
            ("first_triton", lambda: triton_conv.first_conv_relu(speech, cmvn, w, b, 3, 2), ref, flop)]


def plot(rows, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s for s in SHAPES if any(r["shape"] == s for r in rows)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for v in ("cudnn", "triton", "first_unfused", "first_triton"):
        pts = [next((float(r["us"]) for r in rows if r["shape"] == s and r["variant"] == v), None) for s in labels]
        ax.plot(labels, pts, marker="o", label=v)
    style(ax, "batch x audio (AISHELL subsampling, 2nd conv)", title="conv 3x3 / 2, 256 -> 256, + bias + ReLU, fp16",
          logx=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--out", help="CSV to write")
    p.add_argument("--from-csv", help="redraw from this CSV instead of measuring")
    p.add_argument("--plot", help="PNG to write")
    a = p.parse_args(argv)
    rows = load_rows(a.from_csv) if a.from_csv else measure([s for s in a.shapes.split(",") if s], a.reps,
                                                            a.rounds, a.sweep)
    finish(rows, a.out, a.plot, plot)

if __name__ == "__main__":
    main()
