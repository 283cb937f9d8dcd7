"""Where a host's memory goes while a load runs: every `--interval` seconds the private memory
(RssAnon: heap, not shared mappings) of each group of processes (the groups of proc_cpu.py:
tritonserver, its python-backend stubs, `serve`'s checking front, ...), the /dev/shm in use,
the host's MemAvailable and, in a container, its cgroup's memory.current.

    python3 -m benchmarks.proc_mem --out mem.csv --stop-load-below-mb 8192 &   # serve.sh pa does this
    ... run the load ...
    kill -INT %1        # or --duration SECONDS; a summary is printed at the end
    python3 -m benchmarks.proc_mem plot --out mem.png "10 s=mem_10s.csv" "20 s=mem_20s.csv"

A load that leaks drives a host into reclaim and then the OOM killer, which stalls every
process for minutes and kills the largest (a python-backend stub: tritonserver then aborts).
With --stop-load-below-mb, once MemAvailable (or the cgroup's headroom) falls below that, the
load generators (perf_analyzer, locust, the project's load clients) get SIGTERM, so the
measurement ends with a finding instead of a dead host. The summary gives each group's growth
(MB per minute, least squares over the run) and which group grew most."""
import argparse
import csv
import os
import signal
import sys
import time
from typing import Dict, List, Optional, Tuple

from benchmarks.proc_cpu import GROUPS, each_process, save_figure

LOAD_GROUPS = ("perf_analyzer", "load clients")
MB = 1 << 20


def _status_kb(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def group_rss() -> Tuple[Dict[str, float], Dict[str, List[int]]]:
    """(group -> private resident MB (RssAnon), group -> pids)."""
    mb = dict.fromkeys(GROUPS, 0.0)
    pids: Dict[str, List[int]] = {g: [] for g in GROUPS}
    me = os.getpid()
    for pid, grp, status in each_process("status"):
        if not grp or pid == me:
            continue
        mb[grp] += _status_kb(status, "RssAnon") / 1024
        pids[grp].append(pid)
    return mb, pids


def meminfo_mb(path: str = "/proc/meminfo") -> Dict[str, float]:
    out = {}
    with open(path) as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) / 1024
    return out


def cgroup_mb(root: str = "/sys/fs/cgroup") -> Tuple[Optional[float], Optional[float]]:
    """(memory.current, memory.max) of this process's cgroup v2 in MB; None where absent or
    unlimited."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), "/")
    except OSError:
        rel = "/"
    d = os.path.join(root, rel.lstrip("/"))
    vals = []
    for name in ("memory.current", "memory.max"):
        try:
            with open(os.path.join(d, name)) as f:
                v = f.read().strip()
            vals.append(None if v == "max" else int(v) / MB)
        except (OSError, ValueError):
            vals.append(None)
    return vals[0], vals[1]


def shm_used_mb(path: str = "/dev/shm") -> float:
    try:
        s = os.statvfs(path)
    except OSError:
        return 0.0
    return (s.f_blocks - s.f_bfree) * s.f_frsize / MB


def headroom_mb(avail: float, cg_cur: Optional[float], cg_max: Optional[float]) -> float:
    """What the load can still take before reclaim: MemAvailable, or the cgroup's limit minus its
    use when that is smaller."""
    if cg_cur is not None and cg_max is not None:
        return min(avail, cg_max - cg_cur)
    return avail


def slope_per_min(ts: List[float], ys: List[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per minute; 0 for fewer than 2 points."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def floor_mb(value: str, meminfo: str = "/proc/meminfo") -> float:
    """--stop-load-below-mb: a number of MB, or auto = min(8 GB, MemTotal / 10) (a small host's
    whole headroom can be below a fixed 8 GB before any load)."""
    if value != "auto":
        return float(value)
    return min(8192.0, meminfo_mb(meminfo).get("MemTotal", 81920.0) / 10)


COLUMNS = (*GROUPS, "dev_shm", "mem_available", "cgroup_current")


def summarize(rows: List[List[float]]) -> Dict[str, Tuple[float, float, float]]:
    """Rows as written -> column -> (first, peak, growth MB/min)."""
    ts = [r[0] for r in rows]
    out = {}
    for i, c in enumerate(COLUMNS):
        ys = [r[i + 1] for r in rows]
        out[c] = (ys[0], max(ys), slope_per_min(ts, ys))
    return out


def read_rows(path: str) -> List[List[float]]:
    with open(path) as f:
        return [[float(x) if x else 0.0 for x in r] for r in list(csv.reader(f))[1:] if r]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        return plot(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="CSV: t, private MB per group, /dev/shm MB, MemAvailable MB, "
                   "cgroup MB")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: at SIGINT/SIGTERM)")
    p.add_argument("--stop-load-below-mb", default="0",
                   help="SIGTERM the load generators once the memory headroom falls below this many MB "
                        "(0: never; auto: 8 GB or a tenth of the host's memory, whichever is less)")
    a = p.parse_args(argv)
    a.stop_load_below_mb = floor_mb(a.stop_load_below_mb)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    t0 = time.monotonic()
    rows, stopped_at = [], None
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", *COLUMNS])
        while not stop and (a.duration <= 0 or time.monotonic() - t0 < a.duration):
            mb, pids = group_rss()
            avail = meminfo_mb().get("MemAvailable", 0.0)
            cur, lim = cgroup_mb()
            t = time.monotonic() - t0
            row = [round(t, 1), *(round(mb[g], 1) for g in GROUPS), round(shm_used_mb(), 1),
                   round(avail, 1), round(cur, 1) if cur is not None else ""]
            w.writerow(row)
            f.flush()
            rows.append([x if x != "" else 0.0 for x in row])
            room = headroom_mb(avail, cur, lim)
            if a.stop_load_below_mb and room < a.stop_load_below_mb and stopped_at is None:
                stopped_at = t
                victims = [pid for g in LOAD_GROUPS for pid in pids[g]]
                for pid in victims:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
                grew = max(GROUPS, key=lambda g: mb[g] - rows[0][1 + GROUPS.index(g)])
                print(f"memory headroom {room:.0f} MB < {a.stop_load_below_mb:.0f} MB at {t:.0f} s: "
                      f"stopped the load ({len(victims)} processes); largest growth: {grew}", flush=True)
            time.sleep(a.interval)
    if not rows:
        return 0
    s = summarize(rows)
    print(f"private memory (RssAnon) per group over {rows[-1][0]:.0f} s: first / peak MB, growth MB/min")
    for c in COLUMNS:
        first, peak, growth = s[c]
        if peak >= 1 or abs(growth) >= 1:
            print(f"  {c:<22} {first:9.0f} {peak:9.0f} {growth:+9.1f}")
    if stopped_at is not None:
        print(f"  the load was stopped at {stopped_at:.0f} s (memory headroom below {a.stop_load_below_mb:.0f} MB)")
    return 0


def plot(argv) -> int:
    """One panel per run: each group's private memory and the host's MemAvailable over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(prog="proc_mem plot", description=plot.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="private memory per process group during the load")
    p.add_argument("runs", nargs="+", help="LABEL=CSV written by proc_mem")
    a = p.parse_args(argv)
    runs = [(label, read_rows(path)) for label, path in (r.split("=", 1) for r in a.runs)]
    fig, axes = plt.subplots(1, len(runs), figsize=(1.5 + 4.2 * len(runs), 4.0), squeeze=False, sharey=True)
    for ax, (label, rows) in zip(axes[0], runs):
        t = [r[0] for r in rows]
        for i, c in enumerate(COLUMNS):
            ys = [r[i + 1] / 1024 for r in rows]
            if c in GROUPS and max(ys) < 0.5:
                continue
            if c == "cgroup_current":
                continue
            ax.plot(t, ys, label=c, color=f"C{i}", linestyle="--" if c in ("dev_shm", "mem_available") else "-")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("GB")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}  # every series once
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(a.title, fontsize=10)
    return save_figure(fig, a.out)


if __name__ == "__main__":
    raise SystemExit(main())
