"""The load-test helpers that turn measurements into files: sweep.py --from-log (rebuilds a
sweep's CSV + plot from its printed lines) and plot_perf_analyzer.py (perf_analyzer CSVs)."""
import csv
import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, ROOT)
pytest.importorskip("matplotlib")

LOG = """\
   2s c=1        30.1 infer/s         60 audio-s/s  p50    21.8  p99   208.2 ms  failures 0
errors: ['something went wrong']
   5s c=128    2146.3 infer/s      10732 audio-s/s  p50    52.7  p99   115.3 ms  failures 3
stopping this length: 61 s > --max-seconds
  20s c=256     565.1 infer/s      11303 audio-s/s  p50   422.5  p99   728.2 ms  failures 0
"""


def test_sweep_rebuilds_csv_and_plot_from_its_log(tmp_path):
    from loadtest import sweep

    (tmp_path / "sweep.log").write_text(LOG)
    sweep.main(["--from-log", str(tmp_path / "sweep.log"), "--out", str(tmp_path / "out")])
    rows = list(csv.DictReader(open(tmp_path / "out" / "sweep.csv")))
    assert [(float(r["seconds"]), int(r["concurrency"]), float(r["infer_per_s"]), float(r["p99_ms"]),
             int(r["failures"])) for r in rows] == [(2.0, 1, 30.1, 208.2, 0), (5.0, 128, 2146.3, 115.3, 3),
                                                    (20.0, 256, 565.1, 728.2, 0)]
    assert os.path.getsize(tmp_path / "out" / "sweep.png") > 10_000
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no sweep lines"):
        sweep.main(["--from-log", str(tmp_path / "empty.log"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):  # a real sweep needs wavs
        sweep.main(["--out", str(tmp_path / "x")])


def test_perf_analyzer_plot(tmp_path):
    from loadtest import plot_perf_analyzer

    path = tmp_path / "pa.csv"  # the columns perf_analyzer -f writes that the plot reads
    path.write_text("Concurrency,Inferences/Second,p50 latency,p99 latency\n"
                    "128,2932.4,41719,71639\n64,2184.63,28031,44122\n")
    assert [r["Concurrency"] for r in plot_perf_analyzer.read(str(path))] == ["64", "128"]
    plot_perf_analyzer.main([str(path), "--out", str(tmp_path / "pa.png")])
    assert os.path.getsize(tmp_path / "pa.png") > 10_000


def test_proc_cpu_counts_a_busy_process_in_its_group_and_plots(tmp_path):
    """benchmarks/proc_cpu.py: a process named perf_analyzer spinning one core shows up as
    ~one core of that group (not of "other", also in the interval it exits in), and `plot`
    draws the runs."""
    import subprocess

    from benchmarks import proc_cpu

    spin = "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass\n"
    busy = subprocess.Popen(["bash", "-c", f'exec -a perf_analyzer {sys.executable} -c "{spin}"'])
    try:
        out = tmp_path / "cpu.csv"
        proc_cpu.main(["--out", str(out), "--interval", "0.5", "--duration", "3.5"])
    finally:
        busy.kill()
        busy.wait()
    rows = proc_cpu.read_rows(str(out))
    col = 1 + proc_cpu.GROUPS.index("perf_analyzer")
    other = 1 + proc_cpu.GROUPS.index("other")
    assert max(r[col] for r in rows) >= 0.6, rows
    assert sum(r[col] for r in rows) * 0.5 >= 1.5  # ~2.5 core-seconds spun, in 0.5 s intervals
    assert max(r[other] for r in rows) < 1.5, rows  # its exit is not booked to "other"
    assert all(r[-1] <= os.cpu_count() + 0.5 for r in rows)
    means, n, _ = proc_cpu.summarize(rows)
    assert means["perf_analyzer"] > 0.4 and n >= 1
    png = tmp_path / "cores.png"
    assert proc_cpu.main(["plot", "--out", str(png), f"a={out}", f"b={out}"]) == 0
    assert png.stat().st_size > 5000


def test_proc_mem_books_a_growing_load_to_its_group_and_stops_it_at_the_floor(tmp_path):
    """benchmarks/proc_mem.py: a process named perf_analyzer holding ~200 MB shows up as that much
    private memory of its group; with a floor above the host's headroom the load gets SIGTERM
    (what stopped perf_analyzer 2.60 from taking an H200 host's 128 GB in session 23), the
    summary names it, and `plot` draws the runs."""
    import subprocess

    from benchmarks import proc_mem

    hold = ("import time\nb = bytearray(200 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
            "print('ready', flush=True)\ntime.sleep(30)\n")
    load = subprocess.Popen(["bash", "-c", f'exec -a perf_analyzer {sys.executable} -c "{hold}"'],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdout.readline().strip() == "ready"
        out = tmp_path / "mem.csv"
        quiet = tmp_path / "quiet.csv"
        proc_mem.main(["--out", str(quiet), "--interval", "0.3", "--duration", "1"])
        assert load.poll() is None  # no floor: the load runs on
        floor = proc_mem.meminfo_mb()["MemAvailable"] + 1e6
        proc_mem.main(["--out", str(out), "--interval", "0.3", "--duration", "1.5",
                       "--stop-load-below-mb", str(floor)])
        assert load.wait(10) == -15  # SIGTERM
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    rows = proc_mem.read_rows(str(quiet))
    col = 1 + proc_mem.COLUMNS.index("perf_analyzer")
    assert all(190 <= r[col] <= 260 for r in rows), rows
    assert all(r[1 + proc_mem.COLUMNS.index("mem_available")] > 0 for r in rows)
    first, peak, growth = proc_mem.summarize(rows)["perf_analyzer"]
    assert 190 <= first <= peak <= 260 and abs(growth) < 200
    assert proc_mem.slope_per_min([0, 30, 60], [0, 50, 100]) == 100
    png = tmp_path / "mem.png"
    assert proc_mem.main(["plot", "--out", str(png), f"a={quiet}", f"b={out}"]) == 0
    assert png.stat().st_size > 5000
