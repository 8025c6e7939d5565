"""deploy/k8s stays consistent with the configuration keys: the ConfigMap's file validates, and every
TRIOSCALE_* variable the workloads set is a known key's override."""

from __future__ import annotations

from pathlib import Path

import yaml

from trioscale.config import KNOWN_KEYS, NON_KEY_ENV, config_from_dict, env_name

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def documents():
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def test_configmap_is_a_valid_postgres_config():
    (cm,) = [d for _, d in documents() if d["kind"] == "ConfigMap"]
    data = yaml.safe_load(cm["data"]["config.yaml"])
    cfg = config_from_dict(data)
    assert cfg.database.type == "postgres" and cfg.database.postgres.host == "postgres"
    assert cfg.presence.lease > cfg.presence.heartbeat
    assert cfg.derp.relay_timeout > cfg.derp.server.heartbeat_interval


def test_every_environment_override_names_a_key():
    known = {env_name(k) for k in KNOWN_KEYS} | set(NON_KEY_ENV)
    seen = set()
    for name, doc in documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            for var in container.get("env", []):
                if var["name"].startswith("TRIOSCALE_"):
                    assert var["name"] in known, f"{name}: {var['name']} is not a configuration key"
                    seen.add(var["name"])
    assert "TRIOSCALE_DERP_SERVER_MESH_KEY" in seen and "TRIOSCALE_DATABASE_POSTGRES_PASSWORD" in seen


def test_coordinators_are_two_replicas_sharing_one_noise_key():
    (dep,) = [d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "trioscale-coord"]
    assert dep["spec"]["replicas"] == 2
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "coord"
    kinds = {d["kind"] for _, d in documents()}
    assert {"Deployment", "Service", "DaemonSet", "ConfigMap", "Secret"} <= kinds
