"""Reading rendered Kubernetes objects the way the kubelet would: a container's environment, the
configuration its process ends up with, the port a probe names."""

from __future__ import annotations

import base64
from typing import Any

import yaml

from trioscale.config import Config, config_from_dict
from trioscale.shared.net.addr import split_host_port

#: what status.hostIP stands for when a container's environment is worked out here
HOST_IP = "192.0.2.10"


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def secret_value(docs: list[dict[str, Any]], name: str, key: str) -> str:
    secret = by_name(docs, "Secret")[name]
    return base64.b64decode(secret["data"][key]).decode()


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps first, then env (which wins), as the kubelet does."""
    config_maps = by_name(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            env[var["name"]] = secret_value(docs, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            env[var["name"]] = config_maps[ref["configMapKeyRef"]["name"]]["data"][ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == "status.hostIP":
            env[var["name"]] = HOST_IP
        else:
            raise AssertionError(f"{container['name']}: {var['name']} comes from {ref}, which these tests cannot resolve")
    return env


def config_file(docs: list[dict[str, Any]], workload: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The YAML the container's process reads as its configuration file (a ConfigMap mounted by subPath)."""
    spec = pod_spec(workload)
    args = container.get("args", [])
    path = args[args.index("--config") + 1] if "--config" in args else "/etc/trioscale/config.yaml"
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == path:
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            data = by_name(docs, "ConfigMap")[volume["configMap"]["name"]]["data"]
            return yaml.safe_load(data[mount.get("subPath", "config.yaml")])
    raise AssertionError(f"{container['name']}: nothing mounted at {path}")


def process_config(docs: list[dict[str, Any]], workload: dict[str, Any], container: dict[str, Any]) -> Config:
    """The configuration the container's trioscale process runs with (file, then environment)."""
    return config_from_dict(config_file(docs, workload, container), env=container_env(docs, container))


def container_port(container: dict[str, Any], port: int | str) -> dict[str, Any]:
    """The containerPort entry a probe's or Service's port (a name or a number) means."""
    for entry in container.get("ports", []):
        if entry.get("name") == port or entry["containerPort"] == port:
            return entry
    raise AssertionError(f"{container['name']}: no port {port!r}")


def listen_port(addr: str) -> int:
    return int(split_host_port(addr)[1])
