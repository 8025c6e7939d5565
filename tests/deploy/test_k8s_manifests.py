"""deploy/k8s stays consistent with the configuration keys: every process's configuration (the
ConfigMap's file plus the environment its container gets) validates, and every TRIOSCALE_* variable
the workloads set is a known key's override."""

from __future__ import annotations

import yaml
from k8sobjects import config_file, container_env, pod_spec, process_config

from trioscale.config import KNOWN_KEYS, NON_KEY_ENV, config_from_dict, env_name


def test_configmap_is_a_valid_postgres_config(rendered):
    for overlay in rendered.values():
        (cm,) = [d for d in overlay.of_kind("ConfigMap") if d["metadata"]["name"].startswith("trioscale-config-")]
        cfg = config_from_dict(yaml.safe_load(cm["data"]["config.yaml"]))
        assert cfg.database.type == "postgres" and cfg.database.postgres.host == "postgres"
        assert cfg.presence.lease > cfg.presence.heartbeat
        assert cfg.derp.relay_timeout > cfg.derp.server.heartbeat_interval
        # the Service the config names is there
        assert "postgres" in {d["metadata"]["name"] for d in overlay.of_kind("Service")}


def test_every_environment_override_names_a_key(rendered):
    known = {env_name(k) for k in KNOWN_KEYS} | set(NON_KEY_ENV)
    seen = set()
    for overlay in rendered.values():
        for workload in overlay.workloads():
            for container in pod_spec(workload)["containers"]:
                for var in container_env(overlay.docs, container):
                    if var.startswith("TRIOSCALE_"):
                        assert var in known, f"{overlay.name}: {container['name']}: {var} is not a configuration key"
                        seen.add(var)
    assert {"TRIOSCALE_DERP_SERVER_MESH_KEY", "TRIOSCALE_DATABASE_POSTGRES_PASSWORD",
            "TRIOSCALE_DERP_SERVER_REGION_ID", "TRIOSCALE_METRICS_LISTEN_ADDR"} <= seen


def test_every_process_configuration_validates(rendered):
    for overlay in rendered.values():
        for workload in overlay.workloads():
            for container in pod_spec(workload)["containers"]:
                cfg = process_config(overlay.docs, workload, container)
                assert cfg.database.postgres.password, f"{container['name']}: no database password"
                assert str(cfg.data_dir) == "/var/lib/trioscale"


def test_coordinators_are_replicas_sharing_one_noise_key(rendered):
    for overlay in rendered.values():
        dep = overlay.one("Deployment", "trioscale-coord")
        assert dep["spec"]["replicas"] >= 2
        (container,) = pod_spec(dep)["containers"]
        assert container["args"] == ["coord"]
        # the key file every replica reads is the one Secret's key, not generated per pod
        cfg_path = config_file(overlay.docs, dep, container)["noise"]["private_key_path"]
        mount = next(m for m in container["volumeMounts"] if cfg_path.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"].startswith("trioscale-secrets-")
        assert volume["secret"]["items"][0]["path"] == cfg_path.rsplit("/", 1)[1]
        kinds = {d["kind"] for d in overlay.docs}
        assert {"Deployment", "Service", "DaemonSet", "ConfigMap", "Secret"} <= kinds
    assert rendered["multi-region"].one("Deployment", "trioscale-coord")["spec"]["replicas"] >= 2


def test_every_key_and_certificate_file_a_process_reads_is_mounted_from_a_secret(rendered):
    for overlay in rendered.values():
        secrets = {d["metadata"]["name"]: d for d in overlay.of_kind("Secret")}
        for workload in overlay.workloads():
            spec = pod_spec(workload)
            for container in spec["containers"]:
                cfg = process_config(overlay.docs, workload, container)
                shape = container["args"][0]
                files = {"coord": [cfg.noise.private_key_path],
                         "derp": [cfg.derp.server.tls_cert_path, cfg.derp.server.tls_key_path]}.get(shape, [])
                for path in files:
                    assert path is not None, f"{overlay.name}: {container['name']}: unset"
                    mount = next((m for m in container["volumeMounts"] if str(path.parent) == m["mountPath"]), None)
                    assert mount is not None, f"{overlay.name}: {container['name']}: {path} is not mounted"
                    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                    secret = secrets[volume["secret"]["secretName"]]
                    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])} or {k: k for k in secret["data"]}
                    assert items.get(path.name) in secret["data"], f"{overlay.name}: {path.name} not in {secret['metadata']['name']}"
