"""Small-batch encoder pieces on one GPU, each timed inside a CUDA graph (launch gaps as in
the engine's graphs): the FFN down-projection + residual add + LayerNorm as one GEMM + the
add_layernorm kernel against split-K (S batched GEMMs over slices of K with fp32 partials,
reduced by add_layernorm_parts), and the rel-pos attention call on each SDPA backend.

    python3 -m benchmarks.small_batch_ab --out small_batch.csv --plot small_batch.png
    python3 -m benchmarks.small_batch_ab --from-csv small_batch.csv --plot small_batch.png   # redraw, no GPU

Shapes: the AISHELL encoder (d 256, FFN 2048, 4 heads; rel-pos: query/key head dim 128,
value 64), rows = batch x frames (a 10 s utterance is 250 frames, bucketed to 256). Prints a
table and writes one CSV row per (piece, variant, rows): microseconds per call (median of
`--rounds` graph replays of `--reps` calls each)."""
import argparse
import csv
import statistics

import torch
import torch.nn.functional as F

from wenet_triton.engines import kernels


def _graph_us(fn, reps: int, rounds: int) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / reps)
    return statistics.median(times)


def ffn_down(rows: int, splits, reps: int, rounds: int, d: int = 256, k: int = 2048):
    g = torch.Generator(device="cuda").manual_seed(rows)
    h = torch.randn(rows, k, device="cuda", generator=g).half()
    w2 = (torch.randn(d, k, device="cuda", generator=g) * 0.02).half()
    b2 = torch.randn(d, device="cuda", generator=g).half()
    x = torch.randn(rows, d, device="cuda", generator=g).half()
    gam, bet = torch.ones(d, device="cuda").half(), torch.zeros(d, device="cuda").half()
    out = []
    for S in splits:
        if S == 1:
            def fn():
                return kernels.add_layernorm(x, F.linear(h, w2, b2), 0.5, gam, bet, 1e-5)
        else:
            a = h.view(rows, S, k // S).transpose(0, 1)
            b = w2.view(d, S, k // S).permute(1, 2, 0)

            def fn(a=a, b=b):
                parts = torch.bmm(a, b, out_dtype=torch.float32)
                return kernels.add_layernorm_parts(x, parts, b2, 0.5, gam, bet, 1e-5)
        out.append(("ffn_down+add_ln", f"S={S}", rows, _graph_us(fn, reps, rounds)))
        ref = kernels.add_layernorm(x, F.linear(h, w2, b2), 0.5, gam, bet, 1e-5)[1].float()
        err = (fn()[1].float() - ref).abs().max().item()
        if err > 0.05:
            raise SystemExit(f"split-K S={S} rows={rows}: max error {err}")
    return out


def attention(batch: int, frames: int, reps: int, rounds: int, heads: int = 4, dk: int = 64):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    g = torch.Generator(device="cuda").manual_seed(batch)
    q = torch.randn(batch, heads, frames, 2 * dk, device="cuda", generator=g).half()
    kk = torch.randn(batch, heads, frames, 2 * dk, device="cuda", generator=g).half()
    v = torch.randn(batch, heads, frames, dk, device="cuda", generator=g).half()
    mask = torch.zeros(batch, 1, 1, frames, device="cuda").half()
    mask[0, ..., frames - 3:] = float("-inf")
    out = []
    for name in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        be = getattr(SDPBackend, name)

        def fn(be=be):
            with sdpa_kernel([be]):
                return F.scaled_dot_product_attention(q, kk, v, attn_mask=mask, scale=0.125)
        try:
            fn()
        except RuntimeError:
            continue
        out.append(("rel_pos_attention", name.lower(), batch * frames, _graph_us(fn, reps, rounds)))
    return out


def plot(results, path: str, title: str = ""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, piece in zip(axes, ("ffn_down+add_ln", "rel_pos_attention")):
        for v in sorted({v for p_, v, _, _ in results if p_ == piece}):
            pts = sorted((r, us) for p_, v2, r, us in results if p_ == piece and v2 == v)
            ax.plot([r for r, _ in pts], [us for _, us in pts], marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows (batch x frames)")
        ax.set_ylabel("us per call (in a CUDA graph)")
        ax.set_title({"ffn_down+add_ln": "FFN down-projection + add + LayerNorm: one GEMM (S=1) or split-K",
                      "rel_pos_attention": "rel-pos attention (256 frames a batch row)"}[piece], fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="small_batch.csv")
    p.add_argument("--rows", default="256,512,1024,2048,4096,8192,16384")
    p.add_argument("--splits", default="1,2,4,8")
    p.add_argument("--batches", default="1,2,4,8,16,64", help="attention batches of 256 frames")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--plot", help="PNG of the results")
    p.add_argument("--from-csv", help="redraw --plot from an earlier --out CSV (no GPU)")
    a = p.parse_args(argv)
    if a.from_csv:
        with open(a.from_csv) as f:
            rows = [(r["piece"], r["variant"], int(r["rows"]), float(r["us_per_call"])) for r in csv.DictReader(f)]
        plot(rows, a.plot or a.from_csv.replace(".csv", ".png"), "one NVIDIA H200, fp16, AISHELL shape")
        return
    kernels.load()
    rows_list = [int(r) for r in a.rows.split(",")]
    splits = [int(s) for s in a.splits.split(",")]
    results = []
    for rows in rows_list:
        results += ffn_down(rows, splits, a.reps, a.rounds)
    for b in (int(x) for x in a.batches.split(",")):
        results += attention(b, 256, a.reps, a.rounds)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["piece", "variant", "rows", "us_per_call"])
        w.writerows((p_, v, r, f"{us:.2f}") for p_, v, r, us in results)
    if a.plot:
        plot(results, a.plot, f"{torch.cuda.get_device_name()}, fp16, AISHELL shape")
    print(f"{torch.cuda.get_device_name()}; microseconds per call inside a CUDA graph")
    for p_, v, r, us in results:
        print(f"{p_:<20} {v:<22} rows {r:>6}  {us:8.2f} us")


if __name__ == "__main__":
    main()
