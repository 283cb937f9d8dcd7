"""Triton's Prometheus metrics (port 8002): per-model requests, batches, queue and compute
time, as deltas over a run."""
import re
import urllib.request
from collections import defaultdict

_LINE = re.compile(r'^(nv_inference_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$')
FIELDS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_exec_count",
          "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
          "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us")


def scrape(hostport: str) -> dict:
    """Per (model, counter) sums; `hostport` may list several servers (comma-separated)."""
    if "," in hostport:
        total = defaultdict(float)
        for one in hostport.split(","):
            for k, v in scrape(one.strip()).items():
                total[k] += v
        return dict(total)
    url = hostport if hostport.startswith("http") else f"http://{hostport}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = defaultdict(float)
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in FIELDS:
            model = re.search(r'model="([^"]+)"', m.group(2))
            if model:
                out[(model.group(1), m.group(1))] += float(m.group(3))
    return dict(out)


def delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


def summarize(d: dict) -> dict:
    models = sorted({m for m, _ in d})
    res = {}
    for m in models:
        g = lambda f: d.get((m, f), 0.0)  # noqa: E731
        n = g("nv_inference_request_success") + g("nv_inference_request_failure")
        if n <= 0:
            continue
        compute = (g("nv_inference_compute_input_duration_us") + g("nv_inference_compute_infer_duration_us")
                   + g("nv_inference_compute_output_duration_us"))
        res[m] = {"requests": n, "avg_batch": n / max(g("nv_inference_exec_count"), 1),
                  "queue_ms": g("nv_inference_queue_duration_us") / n / 1000,
                  "compute_ms": compute / n / 1000}
    return res
