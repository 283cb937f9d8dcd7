"""The conformer FFN's first GEMM + bias + SiLU on one GPU, each variant timed inside a CUDA
graph (launch gaps as in the engine's graphs): cuBLAS (`F.linear`, bias in its epilogue) then
a SiLU pass, against the Triton kernels of `wenet_triton/engines/triton_gemm.py` that keep the
accumulator and store SiLU's output once: the pointer-load kernel and the persistent TMA one.

    python3 -m benchmarks.silu_gemm_ab --out silu_gemm.csv
    .venv/bin/python -m benchmarks.silu_gemm_ab --from-csv silu_gemm.csv --plot silu_gemm.png   # no GPU

Shape: the AISHELL encoder (d 256, FFN 2048), rows = batch x frames (1 x 10 s is 256 rows
after bucketing, 64 x 20 s 32,768). One CSV row per (variant, rows): microseconds per call
(median of `--rounds` graph replays of `--reps` calls each) and the largest relative error
against fp32."""
import argparse

import torch
import torch.nn.functional as F

from benchmarks.ab_io import finish, load_rows, rel_err, style

VARIANTS = ("cublas+silu", "triton_ptr", "triton_tma")


def measure(rows_list, reps: int, rounds: int, d: int = 256, n: int = 2048):
    from benchmarks.small_batch_ab import _graph_us
    from wenet_triton.engines import triton_gemm as tg

    out = []
    for rows in rows_list:
        g = torch.Generator(device="cuda").manual_seed(rows)
        x = torch.randn(rows, d, device="cuda", generator=g).half()
        w = (torch.randn(n, d, device="cuda", generator=g) * 0.05).half()
        b = torch.randn(n, device="cuda", generator=g).half()
        ref = F.silu(x.float() @ w.float().t() + b.float())
        fns = {"cublas+silu": lambda: F.silu(F.linear(x, w, b)),
               "triton_ptr": lambda: tg.linear_silu(x, w, b, tma=False),
               "triton_tma": lambda: tg.linear_silu(x, w, b, tma=True)}
        for name in VARIANTS:
            err = rel_err(fns[name](), ref)
            us = _graph_us(fns[name], reps, rounds)
            out.append({"variant": name, "rows": rows, "us": round(us, 2), "rel_err": f"{err:.2e}"})
            print(f"{name:>12} rows {rows:>6}: {us:8.2f} us  (rel err {err:.1e})", flush=True)
    return out


def plot(rows, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in VARIANTS:
        pts = sorted((int(r["rows"]), float(r["us"])) for r in rows if r["variant"] == name)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    style(ax, "rows (batch x frames), K 256 -> N 2048, fp16", title="FFN GEMM + bias + SiLU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="256,1024,4096,8192,32768")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", help="CSV to write")
    p.add_argument("--from-csv", help="redraw from this CSV instead of measuring")
    p.add_argument("--plot", help="PNG to write")
    a = p.parse_args(argv)
    rows = load_rows(a.from_csv) if a.from_csv else measure([int(r) for r in a.rows.split(",")], a.reps, a.rounds)
    finish(rows, a.out, a.plot, plot)


if __name__ == "__main__":
    main()
