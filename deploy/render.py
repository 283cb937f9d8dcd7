#!/usr/bin/env python3
"""Render what deploy/ ships, without tools from outside the package registries.

    python deploy/render.py k8s deploy/k8s/overlays/gpu            # manifests on stdout (YAML)
    python deploy/render.py nginx --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002 \
        --listen 127.0.0.1:9000 --health-listen 127.0.0.1:9003 > lb.conf

`k8s` builds a Kustomize directory with the subset of Kustomize that deploy/k8s uses
(`resources`, `namespace`, `images`, `replicas`, `patches` with strategic-merge patch files;
lists of maps merge by `name`, as Kubernetes' own patch strategy does for containers, env,
ports, volumes and volume mounts). `kubectl apply -k DIR` / `kubectl kustomize DIR` give the
same objects (tests/test_k8s_manifests.py compares them where kubectl is installed).

`nginx` rewrites deploy/nginx/nginx.conf's upstream servers and listen addresses (the test
puts it in front of replicas on loopback ports); everything else stays as shipped.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from typing import List

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
NGINX_CONF = os.path.join(HERE, "nginx", "nginx.conf")
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}


# -- Kustomize subset ---------------------------------------------------------------------------
def _load_all(path: str) -> List[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, patch):
    """Strategic merge as deploy/k8s needs it: maps merge key by key, lists of maps that all
    carry `name` merge item by item on it (new items are appended), other lists and scalars
    are replaced, and a null value deletes the key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and base and patch
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _key(obj: dict):
    return obj["kind"], obj["metadata"]["name"]


def _containers(obj: dict):
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("containers", []) + pod.get("initContainers", [])


def build(directory: str) -> List[dict]:
    """The objects `kubectl kustomize directory` would print (for the supported subset)."""
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        k = yaml.safe_load(f)
    unknown = set(k) - SUPPORTED
    if unknown:
        raise ValueError(f"{path}: {sorted(unknown)} not supported by this renderer")
    objs: List[dict] = []
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, res))
        objs += build(p) if os.path.isdir(p) else _load_all(p)
    for patch in k.get("patches", []):
        if set(patch) - {"path", "target"}:
            raise ValueError(f"{path}: only file patches (path, target) are supported")
        for body in _load_all(os.path.join(directory, patch["path"])):
            target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
            hits = [i for i, o in enumerate(objs)
                    if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
            if not hits:
                raise ValueError(f"{path}: patch {patch['path']} matches no object")
            for i in hits:
                objs[i] = merge(objs[i], {kk: v for kk, v in body.items() if kk not in ("apiVersion", "kind")}
                                | {"metadata": {**body.get("metadata", {}), "name": objs[i]["metadata"]["name"]}})
    for r in k.get("replicas", []):
        for o in objs:
            if o["metadata"]["name"] == r["name"] and "replicas" in o.get("spec", {}):
                o["spec"]["replicas"] = r["count"]
    for img in k.get("images", []):
        for o in objs:
            for c in _containers(o):
                name, _, tag = c["image"].rpartition(":") if ":" in c["image"].split("/")[-1] else (c["image"], "", "")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    if "namespace" in k:
        for o in objs:
            if o["kind"] != "Namespace":
                o["metadata"]["namespace"] = k["namespace"]
    seen = set()
    for o in objs:
        if _key(o) in seen:
            raise ValueError(f"{directory}: {_key(o)} defined twice")
        seen.add(_key(o))
    return objs


def dump(objs: List[dict]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False, default_flow_style=False)


# -- nginx --------------------------------------------------------------------------------------
def render_nginx(upstreams: List[str], listen: str, health_listen: str, text: str = "",
                 access_log: str = "") -> str:
    """deploy/nginx/nginx.conf with these upstream servers and listen addresses (and, when
    `access_log` is a path, a request log with the upstream and its grpc-status)."""
    text = text or open(NGINX_CONF).read()
    servers = re.findall(r"^(\s*)server \S+:\d+ (max_fails.*;)$", text, re.M)
    if not servers:
        raise ValueError("no upstream server lines in the nginx config")
    indent, params = servers[0]
    block = "".join(f"{indent}server {u} {params}\n" for u in upstreams)
    text = re.sub(r"^\s*server \S+:\d+ max_fails.*;\n", "", text, flags=re.M)
    text = re.sub(r"(upstream wenet_triton_grpc \{\n(?:\s*#.*\n)*)", lambda m: m.group(1) + block, text)
    text = re.sub(r"listen 8001 http2;", f"listen {listen} http2;", text)
    text = re.sub(r"listen 8081;", f"listen {health_listen};", text)
    if access_log:
        text = text.replace("access_log off;", f"access_log {access_log} grpc;", 1)
        text = text.replace("'rt=$request_time", "'grpc=$upstream_trailer_grpc_status t=$msec rt=$request_time", 1)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("k8s", help="render a Kustomize directory (deploy/k8s/base or an overlay)")
    k.add_argument("dir")
    n = sub.add_parser("nginx", help="deploy/nginx/nginx.conf with other upstreams/listen addresses")
    n.add_argument("--upstream", action="append", required=True, help="HOST:PORT of a replica (repeat)")
    n.add_argument("--listen", default="8001")
    n.add_argument("--health-listen", default="8081")
    n.add_argument("--access-log", default="")
    a = p.parse_args(argv)
    if a.what == "k8s":
        sys.stdout.write(dump(build(a.dir)))
    else:
        sys.stdout.write(render_nginx(a.upstream, a.listen, a.health_listen, access_log=a.access_log))


if __name__ == "__main__":
    main()
