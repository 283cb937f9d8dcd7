"""Where a host's cores go while a load runs: samples every process's CPU time (Linux /proc)
every `--interval` seconds and writes, per interval, the cores each group of processes used
(tritonserver, its python-backend stubs, `serve`'s checking front workers, the supervisor,
perf_analyzer, load clients, the MPS daemon, the rest) and the host's busy cores.

    python3 -m benchmarks.proc_cpu --out cpu.csv --interval 2 &   # scripts/gpu/serve.sh pa does this
    ... run the load ...
    kill -INT %1        # or --duration SECONDS; a summary is printed at the end
    python3 -m benchmarks.proc_cpu plot --out cores.png "4 front workers=cpu_a.csv" "6=cpu_b.csv"

The summary is the mean per group over the intervals where the host was at least half as busy
as its busiest interval (the load's plateau), so a run's idle start and end do not dilute it.
`plot` draws those means of several runs as stacked bars (one per LABEL=CSV)."""
import argparse
import csv
import os
import signal
import sys
import time
from typing import Dict, Iterator, Tuple

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = ("tritonserver", "python-backend stubs", "checking front", "serve supervisor",
          "perf_analyzer", "load clients", "mps daemon", "other")


def group_of(cmdline: str) -> str:
    """The group of a process by its command line ("" for none: a zombie or a kernel thread)."""
    if not cmdline:
        return ""
    argv0 = os.path.basename(cmdline.split("\0", 1)[0])
    if "triton_python_backend_stub" in argv0:
        return "python-backend stubs"
    if argv0 == "tritonserver":
        return "tritonserver"
    if "perf_analyzer" in argv0:
        return "perf_analyzer"
    if "nvidia-cuda-mps" in argv0:
        return "mps daemon"
    if "wenet_triton.serving.guard" in cmdline:
        return "checking front"
    if "\0serve\0" in cmdline + "\0" and "wenet" in cmdline:
        return "serve supervisor"
    if "loadtest" in cmdline or "locust" in cmdline:
        return "load clients"
    return "other"


def each_process(name: str) -> Iterator[Tuple[int, str, str]]:
    """(pid, group, the text of /proc/PID/<name>) of every process readable now (proc_mem
    reads `status` the same way)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{name}") as f:
                text = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        yield int(pid), group_of(cmd), text


def snapshot() -> Dict[int, Tuple[str, float]]:
    """pid -> (group, CPU seconds so far, all threads)."""
    out = {}
    for pid, grp, stat in each_process("stat"):
        fields = stat.rsplit(")", 1)[1].split()
        out[pid] = (grp, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def host_busy() -> Tuple[float, float]:
    """(busy, total) CPU seconds of the host so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v) - idle) / TICK, sum(v) / TICK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        return plot(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="CSV: t, then the cores of each group and of the host")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: at SIGINT/SIGTERM)")
    a = p.parse_args(argv)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    t0 = time.monotonic()
    prev, prev_host, prev_t = snapshot(), host_busy(), t0
    rows = []
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", *GROUPS, "host_busy"])
        while not stop and (a.duration <= 0 or time.monotonic() - t0 < a.duration):
            time.sleep(a.interval)
            cur, cur_host, t = snapshot(), host_busy(), time.monotonic()
            dt = t - prev_t
            used = dict.fromkeys(GROUPS, 0.0)
            for pid, (grp, cpu) in cur.items():
                before = prev.get(pid)  # none: born in this interval, all its CPU time is from it
                if before is None:
                    used[grp or "other"] += cpu
                else:  # an exited process not yet reaped has no command line: its group stays
                    used[grp or before[0] or "other"] += cpu - before[1]
                    cur[pid] = (grp or before[0], cpu)
            busy = (cur_host[0] - prev_host[0]) / dt
            row = [round(t - t0, 1), *(round(used[g] / dt, 2) for g in GROUPS), round(busy, 2)]
            w.writerow(row)
            f.flush()
            rows.append(row)
            prev, prev_host, prev_t = cur, cur_host, t
    if not rows:
        return 0
    means, n, peak = summarize(rows)
    print(f"cores used, mean over {n} of {len(rows)} intervals of {a.interval:g} s "
          f"(host at >= half its peak of {peak:.1f} busy cores of {os.cpu_count()}):")
    for g, m in means.items():
        print(f"  {g:<22} {m:6.2f}")
    return 0


def summarize(rows) -> Tuple[Dict[str, float], int, float]:
    """Rows as written (t, groups..., host busy) -> (mean cores per group and "host busy" over
    the plateau, its number of intervals, the peak host busy)."""
    peak = max(r[-1] for r in rows)
    plateau = [r for r in rows if r[-1] >= peak / 2] or rows
    means = {g: sum(r[i + 1] for r in plateau) / len(plateau) for i, g in enumerate((*GROUPS, "host busy"))}
    return means, len(plateau), peak


def read_rows(path: str):
    with open(path) as f:
        return [[float(x) for x in r] for r in list(csv.reader(f))[1:] if r]


def plot(argv) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(prog="proc_cpu plot", description="stacked bars of the cores per group")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="cores used during the load (plateau mean)")
    p.add_argument("runs", nargs="+", help="LABEL=CSV written by proc_cpu")
    a = p.parse_args(argv)
    runs = [(label, summarize(read_rows(path))[0]) for label, path in (r.split("=", 1) for r in a.runs)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(runs), 4.2))
    bottom = [0.0] * len(runs)
    for g in GROUPS:
        vals = [m[g] for _, m in runs]
        if max(vals) < 0.05:
            continue
        ax.bar(range(len(runs)), vals, bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, (_, m) in enumerate(runs):
        ax.text(i, bottom[i] + 0.1, f"{m['host busy']:.1f} busy", ha="center", fontsize=8)
    ax.set_xticks(range(len(runs)), [label for label, _ in runs], fontsize=8)
    ax.set_ylabel("cores")
    ax.set_title(a.title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, a.out)


def save_figure(fig, out: str) -> int:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
