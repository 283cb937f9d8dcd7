"""Issue #18: two real replicas behind the shipped nginx config, one killed mid-run, no request
lost.

Two `wenet-triton serve` replicas (supervisor + checking gRPC front + tritonserver each, own
ports, loopback only) serve the shared random u2pp_conformer model behind
deploy/nginx/nginx.conf rendered with their loopback ports as upstreams. First the balancer's
overhead: the same load straight to both replicas (the client's own round robin) and through
nginx. Then 300 requests at concurrency 8 through nginx; after the first ~60 answers one
replica's tritonserver is killed with SIGKILL. Every request must get the transcript that
offline decoding gives (after retries), the killed replica's supervisor must bring it back,
and nginx's log must show it answering client requests again before the run ends. Figures
are printed (-s) and quoted in docs/scale.md. Needs Debian's nginx (.ci/run installs it).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, model_dir, reference, shared_path
from served import ServedProcess, processes_with

pytestmark = pytest.mark.server
pytest.importorskip("tritonclient.grpc")
sys.path.insert(0, os.path.join(ROOT, "deploy"))
from render import render_nginx  # noqa: E402

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
FIGURES = {}
N_REQUESTS, CONCURRENCY, KILL_AFTER = 300, 8, 60


def _wait_healthy(replicas, timeout):
    deadline = time.time() + timeout
    for r in replicas:
        r.wait_healthy(max(1.0, deadline - time.time()))


@pytest.fixture(scope="module")
def items_and_expected(tmp_path_factory):
    """The 24 shortest test utterances (2-5 s: keeps the run short on 2 cores) and what
    offline decoding (Recognizer, onnxruntime) gives for them."""
    from wenet_triton.audio.frontend import read_audio
    from wenet_triton.decode.vocab import Vocab
    from wenet_triton.engines import OnnxEngine
    from wenet_triton.engines.export import export_onnx
    from wenet_triton.pipeline import Recognizer

    dec, _ = reference("u2pp_conformer")
    export = str(tmp_path_factory.mktemp("fo_export"))
    export_onnx(model_dir("u2pp_conformer"), export, beam_size=dec["beam_size"],
                ctc_weight=dec["ctc_weight"], reverse_weight=dec["reverse_weight"])
    d = shared_path("data", "synth_test")
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".wav"))
    items = sorted(((n, read_audio(os.path.join(d, n + ".wav"))) for n in names), key=lambda it: len(it[1]))[:24]
    names = [n for n, _ in items]
    eng = OnnxEngine(export)
    rec = Recognizer(eng, Vocab.from_engine_dir(export, eng.settings))
    texts = []
    for i in range(0, len(items), 8):
        texts += [r.text for r in rec.recognize([w for _, w in items[i:i + 8]])]
    return export, items, dict(zip(names, texts))


@pytest.fixture(scope="module")
def cluster(items_and_expected, tmp_path_factory):
    """Two supervised replicas and nginx in front of them (all on loopback)."""
    if NGINX is None:
        pytest.skip("nginx not installed (.ci/run installs Debian's)")
    from wenet_triton.serving.repo import build_repo
    from wenet_triton.serving.server import free_port

    export = items_and_expected[0]
    tmp = str(tmp_path_factory.mktemp("fo"))
    repo = build_repo(model_dir("u2pp_conformer"), os.path.join(tmp, "model_repo"), "onnxruntime",
                      overrides={"max_audio_seconds": 30, "engine": {"threads": 1},
                                 "models": {"feature_extractor": {"max_queue_delay_us": 5000}}},
                      engine_dir=export)
    t0 = time.time()
    replicas = [ServedProcess(repo, tmp, name=n, drain_timeout=20) for n in ("replica-a", "replica-b")]
    lb_port, lb_health = free_port(), free_port()
    conf = os.path.join(tmp, "lb.conf")
    access_log = os.path.join(tmp, "lb_access.log")
    with open(conf, "w") as f:
        f.write(render_nginx([r.url for r in replicas], f"127.0.0.1:{lb_port}", f"127.0.0.1:{lb_health}",
                             access_log=access_log).replace("/tmp/wenet-triton-lb.pid", os.path.join(tmp, "lb.pid")))
    nginx = None
    try:
        check = subprocess.run([NGINX, "-t", "-q", "-c", conf, "-p", tmp, "-e", "stderr"],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen([NGINX, "-c", conf, "-p", tmp, "-e", "stderr", "-g", "daemon off;"],
                                 stderr=open(os.path.join(tmp, "nginx.err"), "w"))
        _wait_healthy(replicas, 300)
        FIGURES["replicas healthy after start (s)"] = round(time.time() - t0, 1)
        yield {"replicas": replicas, "lb": f"127.0.0.1:{lb_port}", "access_log": access_log,
               "repo": repo, "conf": conf}
    finally:
        for r in replicas:
            r.stop()
        if nginx is not None:
            nginx.send_signal(signal.SIGTERM)  # fast shutdown of master and workers
            nginx.wait(30)
        time.sleep(0.5)
        print("\nfailover figures:", json.dumps(FIGURES, indent=1))
        left = processes_with(repo) + processes_with(conf)
        assert not left, left
        regions = set().union(*(r.regions for r in replicas))
        stale = [g for g in regions if os.path.exists(os.path.join("/dev/shm", g))]
        assert not stale, stale


def _load(items, n):
    return [(f"{i}:{items[i % len(items)][0]}", items[i % len(items)][1]) for i in range(n)]


def _check(replies, expected):
    wrong = [r for r in replies if r.error is None and r.text != expected[r.name.split(":", 1)[1]]]
    failed = [r for r in replies if r.error is not None]
    return wrong, failed


def test_balancer_overhead_nginx_vs_direct(cluster, items_and_expected):
    """nginx's cost per request. (1) 300 ModelReady calls one at a time straight to a replica
    and through nginx: the extra hop alone. (2) The same inference load (48 requests,
    concurrency 8) straight to both replicas (the client's own round robin) and through nginx,
    each twice, alternating."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from wenet_triton.serving.client import MODEL, transcribe_many

    _, items, expected = items_and_expected
    a = cluster["replicas"][0]
    out = {}
    for name, url in (("direct", a.url), ("nginx", cluster["lb"])) * 2:
        c = grpcclient.InferenceServerClient(url)
        c.is_model_ready(MODEL)
        lat = []
        for _ in range(300):
            t0 = time.perf_counter()
            assert c.is_model_ready(MODEL)
            lat.append(time.perf_counter() - t0)
        c.close()
        out.setdefault(f"ModelReady {name} median ms", []).append(round(float(np.median(lat)) * 1000, 2))
    hop = [n - d for n, d in zip(out["ModelReady nginx median ms"], out["ModelReady direct median ms"])]
    out["nginx hop, ms per call"] = round(float(np.mean(hop)), 2)

    direct = ",".join(r.url for r in cluster["replicas"])
    load = _load(items, 48)
    transcribe_many(direct, load[:16], CONCURRENCY)  # warm-up of both replicas
    for name, url in (("direct", direct), ("nginx", cluster["lb"])) * 2:
        t0 = time.perf_counter()
        replies = transcribe_many(url, load, CONCURRENCY)
        wall = time.perf_counter() - t0
        wrong, failed = _check(replies, expected)
        assert not wrong and not failed, (wrong[:2], [r.error for r in failed[:2]])
        lat = np.array([r.seconds for r in replies]) * 1000
        for k, v in (("infer/s", len(replies) / wall), ("mean ms", lat.mean()), ("p99 ms", np.percentile(lat, 99))):
            out.setdefault(f"inference {name} {k}", []).append(round(float(v), 1))
    FIGURES["overhead"] = out
    assert out["nginx hop, ms per call"] < 50
    # what the dashboards and the autoscaler read: Triton's latency quantiles per model and
    # the supervisor's own metrics
    triton = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
    assert 'nv_inference_request_summary_us{model="encoder"' in triton and 'quantile="0.99"' in triton
    own = urllib.request.urlopen(a.health_url.replace("/healthz", "/metrics"), timeout=5).read().decode()
    for name in ("wenet_triton_healthy 1", "wenet_triton_inflight_requests ", "wenet_triton_restarts_total 0"):
        assert name in own, own


def _upstream_lines(path):
    """(time, upstream, upstream grpc-status) per request nginx passed on."""
    rows = []
    for line in open(path):
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "t" in fields:
            rows.append((float(fields["t"]), fields.get("upstream", ""), fields.get("grpc", "")))
    return rows


def test_kill_one_replica_mid_run_loses_no_request(cluster, items_and_expected):
    from wenet_triton.serving.client import transcribe_many

    _, items, expected = items_and_expected
    a, b = cluster["replicas"]
    load = _load(items, N_REQUESTS)
    replies, killed = [], {}

    def on_reply(r):
        replies.append(r)
        if len(replies) == KILL_AFTER:
            killed["pid"] = a.triton_pid()
            killed["t"] = time.time()
            os.kill(killed["pid"], signal.SIGKILL)

    health = []  # (time, status) of the killed replica, sampled during the run
    done = threading.Event()

    def watch():
        while not done.is_set():
            health.append((time.time(), a.health()[0]))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.time()
    try:
        out = transcribe_many(cluster["lb"], load, CONCURRENCY, on_reply=on_reply, timeout=90)
    finally:
        done.set()
        watcher.join(5)
    t_end = time.time()
    assert "pid" in killed, "the run ended before the kill"
    wrong, failed = _check(out, expected)
    retried = [r for r in out if r.attempts > 1]
    down = [t for t, s in health if t > killed["t"] and s != 200]
    back = [t for t, s in health if down and t > down[0] and s == 200]
    log = [x for x in _upstream_lines(cluster["access_log"]) if x[0] >= t0]
    t_back = back[0] if back else None
    served_after = [x for x in log if x[1] == a.url and x[2] == "0" and t_back and x[0] > t_back]
    FIGURES["failover"] = {
        "sent": len(out), "answered": sum(r.error is None for r in out) - len(wrong),
        "retried": len(retried), "retries": sum(r.attempts - 1 for r in out),
        "lost": len(failed) + len(wrong), "run (s)": round(t_end - t0, 1),
        "killed after (s)": round(killed["t"] - t0, 1),
        "health 503 after kill (s)": round(down[0] - killed["t"], 1) if down else None,
        "healthy again after kill (s)": round(t_back - killed["t"], 1) if t_back else None,
        "requests answered by the restarted replica": len(served_after),
        "requests answered by a / b (nginx log)": [sum(x[1] == r.url and x[2] == "0" for x in log) for r in (a, b)],
        "max attempts of one request": max(r.attempts for r in out),
    }
    assert not wrong, [(r.name, r.text) for r in wrong[:3]]
    assert not failed, [(r.name, r.error, r.attempts) for r in failed[:3]]
    assert len(out) == N_REQUESTS
    assert a.triton_pid() not in (None, killed["pid"]), a.tail()  # a new tritonserver
    assert a.health()[1].get("restarts") == 1
    assert down, f"health never went 503 after the kill: {health[-5:]}"
    if not t_back:  # the run ended before the replica was back (a quick run): wait for it
        t_back = a.wait_healthy(120)
        FIGURES["failover"]["healthy again after kill (s), after the run"] = round(t_back - killed["t"], 1)
    if not served_after:  # then the balancer must send it client requests again
        more = transcribe_many(cluster["lb"], _load(items, 4 * CONCURRENCY), CONCURRENCY, timeout=90)
        assert _check(more, expected) == ([], []), [(r.name, r.error, r.text) for r in more[:3]]
        log = _upstream_lines(cluster["access_log"])
        served_after = [x for x in log if x[1] == a.url and x[2] == "0" and x[0] > t_back]
        FIGURES["failover"]["requests answered by the restarted replica, after the run"] = len(served_after)
    assert served_after, "the restarted replica took no client request once it was back"
    a.note_regions()
