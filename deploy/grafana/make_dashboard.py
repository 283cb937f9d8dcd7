#!/usr/bin/env python3
"""Writes deploy/grafana/wenet-triton.json, the Grafana dashboard of a wenet-triton
deployment (Triton's per-model metrics + the supervisor's own). Edit here, then run
`python deploy/grafana/make_dashboard.py`; tests/test_k8s_manifests.py checks that every
query names a metric that Triton or the supervisor exports."""
import json
import os

SEL = 'namespace=~"$namespace", pod=~"$pod"'
ENS = f'model="attention_rescoring", {SEL}'
STAGES = f'model!="attention_rescoring", {SEL}'


def panel(i, title, unit, targets, x, y, w=12, h=8, desc=""):
    return {"id": i, "type": "timeseries", "title": title, "description": desc,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}},
            "targets": [{"refId": chr(65 + k), "expr": e, "legendFormat": lf}
                        for k, (e, lf) in enumerate(targets)]}


def dashboard():
    p = []
    p.append(panel(1, "Throughput (requests/s, whole ensemble)", "reqps", [
        (f"sum(rate(nv_inference_request_success{{{ENS}}}[1m]))", "answered, all pods"),
        (f"sum(rate(nv_inference_request_failure{{{ENS}}}[1m]))", "failed, all pods"),
        (f"sum by (pod) (rate(nv_inference_request_success{{{ENS}}}[1m]))", "{{pod}}")], 0, 0,
        desc="Each request is one utterance through fbank, encoder, CTC search and rescoring."))
    p.append(panel(2, "Latency percentiles in the server (ms, worst pod)", "ms", [
        (f'max by (quantile) (nv_inference_request_summary_us{{{ENS}, quantile=~"0.5|0.9|0.99"}}) / 1000',
         "p{{quantile}}"),
        (f"sum(rate(nv_inference_request_duration_us{{{ENS}}}[1m])) / "
         f"clamp_min(sum(rate(nv_inference_request_success{{{ENS}}}[1m])), 0.001) / 1000", "mean")], 12, 0,
        desc="Triton's latency summaries (--metrics-config summary_latencies=true), per pod; "
             "the client also sees the network and the balancer."))
    p.append(panel(3, "Queue vs compute per model (ms per request)", "ms", [
        (f"sum by (model) (rate(nv_inference_queue_duration_us{{{STAGES}}}[1m])) / "
         f"clamp_min(sum by (model) (rate(nv_inference_request_success{{{STAGES}}}[1m])), 0.001) / 1000",
         "queue {{model}}"),
        (f"sum by (model) (rate(nv_inference_compute_input_duration_us{{{STAGES}}}[1m]) + "
         f"rate(nv_inference_compute_infer_duration_us{{{STAGES}}}[1m]) + "
         f"rate(nv_inference_compute_output_duration_us{{{STAGES}}}[1m])) / "
         f"clamp_min(sum by (model) (rate(nv_inference_request_success{{{STAGES}}}[1m])), 0.001) / 1000",
         "compute {{model}}")], 0, 8,
        desc="Queue time growing while compute stays flat = the replicas are saturated: scale out."))
    p.append(panel(4, "Dynamic batch size per model (requests per execution)", "short", [
        (f"sum by (model) (rate(nv_inference_count{{{STAGES}}}[1m])) / "
         f"clamp_min(sum by (model) (rate(nv_inference_exec_count{{{STAGES}}}[1m])), 0.001)", "{{model}}")],
        12, 8))
    p.append(panel(5, "GPU utilization", "percentunit", [
        (f"nv_gpu_utilization{{{SEL}}}", "{{pod}} {{gpu_uuid}}")], 0, 16, w=8))
    p.append(panel(6, "GPU memory used", "bytes", [
        (f"nv_gpu_memory_used_bytes{{{SEL}}}", "{{pod}}"),
        (f"nv_gpu_memory_total_bytes{{{SEL}}}", "{{pod}} total")], 8, 16, w=8))
    p.append(panel(7, "Autoscaler signals: queue time and requests in flight per pod", "short", [
        (f"sum by (pod) (rate(nv_inference_queue_duration_us{{{STAGES}}}[1m])) / "
         f"clamp_min(sum by (pod) (rate(nv_inference_request_success{{{ENS}}}[1m])), 0.001) / 1000",
         "queue ms {{pod}}"),
        (f"wenet_triton_inflight_requests{{{SEL}}}", "in flight {{pod}}")], 16, 16, w=8,
        desc="What deploy/k8s/base/hpa.yaml scales on (targets 40 ms, 64 in flight)."))
    p.append(panel(8, "Replicas: healthy, restarts, refused requests", "short", [
        (f"sum(wenet_triton_healthy{{{SEL}}})", "healthy replicas"),
        (f"sum(increase(wenet_triton_restarts_total{{{SEL}}}[10m]))", "tritonserver restarts (10 min)"),
        (f"sum(rate(wenet_triton_guard_rejected_total{{{SEL}}}[1m]))", "refused/s (bad, restarting, draining)"),
        (f"max(wenet_triton_probe_latency_ms{{{SEL}}})", "probe latency ms (worst)")], 0, 24, w=24))
    return {
        "title": "wenet-triton", "uid": "wenet-triton", "schemaVersion": 39, "version": 1,
        "tags": ["triton", "asr", "wenet"], "timezone": "", "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(nv_inference_request_success, namespace)", "includeAll": True,
             "multi": False, "current": {"text": "All", "value": "$__all"}, "allValue": ".*", "refresh": 2},
            {"name": "pod", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": 'label_values(nv_inference_request_success{namespace=~"$namespace"}, pod)',
             "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"},
             "allValue": ".*", "refresh": 2}]},
        "panels": p,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wenet-triton.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=1)
        f.write("\n")
    print(f"wrote {out}")
