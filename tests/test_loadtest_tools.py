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
