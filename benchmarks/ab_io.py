"""What the kernel A/B benchmarks (silu_gemm_ab, ffn_fused_ab, conv_subsample_ab) share: their
CSV in and out, and the look of their log-scale plots."""
import csv


def load_rows(path: str):
    with open(path) as f:
        return list(csv.DictReader(f))


def finish(rows, out: str, png: str, plot) -> None:
    """Write rows to the CSV `out` and draw them with plot(rows, png), each where asked."""
    if out and rows:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if png and rows:
        plot(rows, png)


def style(ax, xlabel: str, ylabel: str = "us per call (in a CUDA graph)", title: str = "", logx: bool = True):
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
