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
    total = proc_mem.meminfo_mb()["MemTotal"]
    assert proc_mem.floor_mb("auto") == min(8192, total / 10) and proc_mem.floor_mb("123") == 123
    png = tmp_path / "mem.png"
    assert proc_mem.main(["plot", "--out", str(png), f"a={quiet}", f"b={out}"]) == 0
    assert png.stat().st_size > 5000


FAKE_PA = """#!/usr/bin/env bash
# records its arguments; writes a one-row CSV to -f unless it must refuse --request-count
echo "$*" >> "$FAKE_PA_LOG"
f=; prev=
for a in "$@"; do [ "$prev" = -f ] && f=$a; prev=$a; done
if [ -n "$FAKE_PA_NO_COUNT" ] && [[ " $* " == *" --request-count "* ]]; then echo "unknown option"; exit 1; fi
c=$(echo "$*" | grep -o 'concurrency-range [0-9]*' | cut -d' ' -f2)
printf 'Concurrency,Inferences/Second\\n%s,100\\n' "$c" > "$f"
echo "Concurrency: $c, throughput: 100 infer/sec, latency 1000 usec"
"""


@pytest.mark.parametrize("refuses_count", [False, True])
def test_serve_sh_pa_measures_each_concurrency_over_a_request_count_that_fits_memory(tmp_path, refuses_count):
    """scripts/gpu/serve.sh pa: perf_analyzer 2.60 keeps what it sends, so each concurrency of
    PA_CONC is one run of --request-count (sized by loadtest.perf_analyzer_inputs count) after
    4 warm-up requests per client, the rows merged into one CSV per length; a perf_analyzer
    that refuses the option is run by time windows instead."""
    import subprocess

    from loadtest import perf_analyzer_inputs as pai

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "perf_analyzer"
    fake.write_text(FAKE_PA)
    fake.chmod(0o755)
    log = tmp_path / "pa_args.log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
               OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"),
               WAV_DIR=os.path.join(ROOT, "wenet_triton", "samples"), PA_SECONDS="2", PA_CONC="2:4:2",
               PA_BATCHES=" ", PA_MEM_FLOOR_MB="0", FAKE_PA_LOG=str(log))
    if refuses_count:
        env["FAKE_PA_NO_COUNT"] = "1"
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu", "serve.sh"), "pa"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = log.read_text().splitlines()
    counted = [c for c in calls if "--request-count" in c]
    assert len(counted) == 2, calls
    for conc, call in zip((2, 4), counted):
        args = call.split()
        assert args[args.index("--concurrency-range") + 1] == f"{conc}:{conc}"
        assert args[args.index("--warmup-request-count") + 1] == str(4 * conc)
        n = int(args[args.index("--request-count") + 1])
        want = pai.request_count(2, conc, pai.default_budget_mb())
        assert abs(n - want) <= 0.05 * want, (n, want)
        assert "--measurement-interval" not in args and "--shape" in args and "WAV:32000" in args
    windows = [c for c in calls if "--measurement-interval" in c]
    assert len(windows) == (2 if refuses_count else 0), calls
    assert ("time windows instead" in r.stdout) == refuses_count
    with open(tmp_path / "out" / "perf_analyzer_2s.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [["Concurrency", "Inferences/Second"], ["2", "100"], ["4", "100"]]
    assert (tmp_path / "out" / "mem_2s.csv").exists() and (tmp_path / "out" / "cpu_2s.csv").exists()


def test_perf_analyzer_request_count_fits_the_budget():
    """loadtest.perf_analyzer_inputs count: what perf_analyzer keeps of the count's requests
    (1.8x their bytes, as measured) fits the budget (10 s of float32 = 640 kB: 32 GB ->
    29,826), never fewer than 4 per client, never more than `most`."""
    from loadtest import perf_analyzer_inputs as pai

    # 32 GB / (10 s x 16,000 samples x 4 bytes x 1.8 kept per byte sent) = 29,826.2
    assert pai.request_count(10, 256, 32768) == 29826
    assert pai.request_count(20, 256, 32768) == 14913
    assert pai.request_count(60, 512, 1024) == 2048  # a small budget: 4 per client still
    assert pai.request_count(0.5, 8, 1 << 20, most=5000) == 5000
    assert 0 < pai.default_budget_mb() <= 32768
