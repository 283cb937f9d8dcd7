"""What the kernel A/B benchmarks (silu_gemm_ab, ffn_fused_ab, conv_subsample_ab) share: the
check-then-time loop over variants, their CSV in and out, and the look of their log-scale plots."""
import csv


def rel_err(out, ref) -> float:
    """The largest |out - ref| relative to the largest |ref| (ref fp32)."""
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def timed(label: str, variants, err, reps: int, rounds: int):
    """(name, fn) pairs -> [(name, us, err(fn()))]: each variant's output checked by err, then
    timed in a CUDA graph (small_batch_ab._graph_us: us per call, median of `rounds` replays of
    `reps` calls). A variant that fails (a tile plan that does not fit: shared memory,
    registers) is reported and skipped."""
    from benchmarks.small_batch_ab import _graph_us

    out = []
    for name, fn in variants:
        try:
            e = err(fn())
            us = _graph_us(fn, reps, rounds)
        except Exception as ex:  # noqa: BLE001 - a plan that does not fit: the others still run
            print(f"{label} {name:>22}: failed ({type(ex).__name__}: {str(ex)[:80]})")
            continue
        print(f"{label} {name:>22}: {us:9.2f} us  (err {e:.1e})", flush=True)
        out.append((name, us, e))
    return out


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
