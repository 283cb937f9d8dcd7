"""Issue #18: the Kubernetes manifests (deploy/k8s) render and validate, the nginx configs
pass `nginx -t`, the Grafana dashboard reads metrics that exist. No cluster is needed:
objects are checked against the Kubernetes API's JSON schemas (kubernetes-validate, strict:
unknown fields are errors) and for what the deployment promises (one GPU per pod, probes on
the supervisor's real-inference health, non-root, a headless gRPC Service, the autoscaler's
metrics defined for prometheus-adapter)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "deploy"))
from render import build, render_nginx  # noqa: E402

K8S = os.path.join(ROOT, "deploy", "k8s")
OVERLAYS = ["base", "overlays/gpu", "overlays/prometheus-operator"]
K8S_VERSION = "1.33.0"  # schemas bundled with kubernetes-validate
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _objs(overlay="overlays/prometheus-operator"):
    return {(o["kind"], o["metadata"]["name"]): o for o in build(os.path.join(K8S, overlay))}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_kubernetes_schemas(overlay):
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (extra 'test')")
    checked = 0
    for obj in build(os.path.join(K8S, overlay)):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _check_podmonitor(obj)  # a CRD: not in the API's schemas
            continue
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {e}") from None
        checked += 1
    assert checked >= 8


def test_schema_validation_catches_mistakes():
    """The validator is not a rubber stamp: a misspelt field and a wrong type are caught."""
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (extra 'test')")
    dep = _objs()[("Deployment", "wenet-triton")]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/"}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(dep))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def _check_podmonitor(pm):
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert set(pm["spec"]) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    ports = {p["name"] for c in _objs()[("Deployment", "wenet-triton")]["spec"]["template"]["spec"]["containers"]
             for p in c["ports"]}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels", "relabelings"}
        assert ep["port"] in ports and ep["path"] == "/metrics"


def test_renderer_matches_kubectl_kustomize():
    """Where kubectl is installed, `kubectl kustomize` gives exactly our renderer's objects."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    for overlay in OVERLAYS:
        res = subprocess.run([kubectl, "kustomize", os.path.join(K8S, overlay)], capture_output=True,
                             text=True, timeout=120)
        if res.returncode != 0 and "unknown command" in res.stderr:
            pytest.skip("this kubectl has no kustomize")
        assert res.returncode == 0, res.stderr
        theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(res.stdout) if o}
        assert theirs == _objs(overlay), overlay


def test_deployment_shape():
    objs = _objs()
    dep = objs[("Deployment", "wenet-triton")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" == c["resources"]["requests"]["nvidia.com/gpu"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8001, "metrics": 8002, "health": 8003}  # docker/entrypoint.sh's
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe  # the supervisor's
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    for cc in pod["containers"] + pod["initContainers"]:
        assert cc["securityContext"]["allowPrivilegeEscalation"] is False
        assert cc["image"] == "registry.example.com/wenet-triton:0.2.0"
    # the init step renders the repository once per pod; the server serves it
    init = pod["initContainers"][0]
    out = init["args"][init["args"].index("--out") + 1]
    assert c["args"] == ["--repo", out]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    assert pod["terminationGracePeriodSeconds"] > 30  # the supervisor's drain
    assert dep["metadata"]["namespace"] == "wenet-triton"
    assert pod["nodeSelector"]  # the overlay's patch merged in
    # the entrypoint passes extra args to `wenet-triton serve`, which prefers --repo
    entry = open(os.path.join(ROOT, "docker", "entrypoint.sh")).read()
    assert '"$@"' in entry.splitlines()[-1]


def test_services_balance_grpc_per_call():
    objs = _objs()
    svc = objs[("Service", "wenet-triton")]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is False
    assert {p["name"] for p in svc["spec"]["ports"]} >= {"grpc", "metrics", "health"}
    lb = objs[("Deployment", "wenet-triton-lb")]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in lb["containers"][0]["env"]}
    assert env["WENET_TRITON_SERVICE"] == f"wenet-triton.{svc['metadata']['namespace']}.svc.cluster.local"
    assert lb["securityContext"]["runAsNonRoot"]
    assert objs[("Service", "wenet-triton-lb")]["spec"]["ports"][0]["port"] == 8001


def test_hpa_metrics_are_served_by_the_adapter_rules():
    hpa = _objs()[("HorizontalPodAutoscaler", "wenet-triton")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "wenet-triton"
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert wanted == {"wenet_triton_queue_ms", "wenet_triton_inflight_requests"}
    with open(os.path.join(K8S, "prometheus-adapter", "values.yaml")) as f:
        rules = yaml.safe_load(f)["rules"]["custom"]
    assert wanted == {r["name"]["as"] for r in rules}
    # the series they read exist: Triton's counters and the supervisor's gauge
    own = _own_metrics()
    for r in rules:
        series = r["seriesQuery"].split("{")[0]
        assert series.startswith("nv_inference_") or series in own


def _own_metrics():
    """The supervisor's /metrics text, with a guard in front (as `serve` runs by default)."""
    import types

    from wenet_triton.serving.supervisor import Supervisor, SupervisorConfig

    sup = Supervisor(SupervisorConfig(repo="/nonexistent"))
    sup.guard = types.SimpleNamespace(inflight=0, served=0, rejected=0)
    return sup.metrics_text()


def _nginx_t(conf_text, tmp_path):
    if NGINX is None:
        pytest.skip("nginx not installed (.ci/run installs Debian's)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    res = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(tmp_path), "-e", "stderr"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_shipped_nginx_config_passes_nginx_t(tmp_path):
    """deploy/nginx/nginx.conf as shipped (compose's fixed replica addresses), and rendered
    with loopback upstreams as tests/test_failover.py runs it."""
    text = open(os.path.join(ROOT, "deploy", "nginx", "nginx.conf")).read()
    out = _nginx_t(text.replace("/tmp/wenet-triton-lb.pid", str(tmp_path / "lb.pid")), tmp_path)
    assert "test is successful" in out
    rendered = render_nginx(["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"], "127.0.0.1:9100",
                            "127.0.0.1:9104", text=text, access_log=str(tmp_path / "a.log"))
    assert rendered.count("server 127.0.0.1:91") == 3 and "172.28." not in rendered
    _nginx_t(rendered.replace("/tmp/wenet-triton-lb.pid", str(tmp_path / "lb.pid")), tmp_path)


def test_k8s_nginx_template_passes_nginx_t(tmp_path):
    """The balancer's template from the ConfigMap, filled in as the nginx image's entrypoint
    does (envsubst of defined variables only), inside the image's http block."""
    tpl = _objs()[("ConfigMap", "wenet-triton-lb")]["data"]["grpc.conf.template"]
    env = {"NGINX_LOCAL_RESOLVERS": "127.0.0.1", "WENET_TRITON_SERVICE": "wenet-triton.wenet-triton.svc.cluster.local"}
    conf = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), m.group(0)), tpl)
    assert "${" not in conf and "$replicas" in conf
    main = ("pid %s;\nevents {}\nhttp {\n%s\n}\n" % (tmp_path / "lb.pid", conf)).replace(
        "listen 8001", "listen 127.0.0.1:9200").replace("listen 8081", "listen 127.0.0.1:9201")
    _nginx_t(main, tmp_path)


def test_compose_scale_profile_matches_nginx_upstreams():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        c = yaml.safe_load(f)
    replicas = {n: s for n, s in c["services"].items() if "scale" in s.get("profiles", [])
                and n.startswith("replica")}
    assert len(replicas) >= 2
    text = open(os.path.join(ROOT, "deploy", "nginx", "nginx.conf")).read()
    upstreams = re.findall(r"^\s*server (\S+):8001 max_fails", text, re.M)
    addrs = sorted(s["networks"]["scale"]["ipv4_address"] for s in replicas.values())
    assert sorted(upstreams) == addrs
    gpus = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in replicas.values()]
    assert len({tuple(g) for g in gpus}) == len(gpus)  # one GPU each, none shared
    for s in replicas.values():
        assert "localhost:8003/healthz" in " ".join(s["healthcheck"]["test"])
    lb = c["services"]["lb"]
    assert all(lb["depends_on"][n]["condition"] == "service_healthy" for n in replicas)
    assert any(p.startswith("127.0.0.1:") and p.endswith(":8001") for p in lb["ports"])


GRAFANA = os.path.join(ROOT, "deploy", "grafana", "wenet-triton.json")


def test_grafana_dashboard_reads_real_metrics():
    d = json.load(open(GRAFANA))
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for want in ("throughput", "latency", "queue", "compute", "batch", "gpu"):
        assert want in titles, want
    own = _own_metrics()
    triton = {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
              "nv_inference_exec_count", "nv_inference_queue_duration_us", "nv_inference_request_duration_us",
              "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
              "nv_inference_compute_output_duration_us", "nv_inference_request_summary_us",
              "nv_inference_queue_summary_us", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
              "nv_gpu_memory_total_bytes", "nv_gpu_power_usage", "nv_inference_pending_request_count"}
    for e in exprs:
        for name in re.findall(r"\b((?:nv|wenet_triton)_[a-z_]+)\b", e):
            assert name in triton or f"\n{name} " in "\n" + own, (name, e)


def test_grafana_dashboard_is_what_its_generator_writes():
    sys.path.insert(0, os.path.join(ROOT, "deploy", "grafana"))
    from make_dashboard import dashboard

    assert json.load(open(GRAFANA)) == json.loads(json.dumps(dashboard()))
