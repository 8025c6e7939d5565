"""The rules issue #15 sets for the Kubernetes manifests, checked over what each overlay renders to
(tests/deploy/conftest.py): valid objects for the Kubernetes API, locked-down pods, requests and
limits everywhere, probes on the processes' real health and readiness endpoints, the coordinators'
disruption budget and spread, an Ingress, a NetworkPolicy, a DNS Service, regions without a copied
DaemonSet, and Secrets only from files outside git."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import trio
from k8srender import K8S, ROOT, copy_tree, give_secrets, render
from k8sobjects import by_name, container_env, container_port, listen_port, pod_spec, process_config, secret_value
from prometheus_client import CollectorRegistry

from trioscale.shared.net.ops import OpsEndpoints, Readiness
from trioscale.shared.proto.keys import PRIVATE

#: the oldest Kubernetes the manifests are meant for, and the newest schema kubernetes-validate has
SCHEMA_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def containers(overlay):
    for workload in overlay.workloads():
        for container in pod_spec(workload)["containers"]:
            yield workload, container


def bound_ports(cfg, shape: str) -> dict[str, int]:
    """The TCP/UDP ports a process of `shape` binds, by what they are for."""
    ports = {"metrics": listen_port(cfg.metrics_listen_addr)}
    if shape == "coord":
        ports["control"] = listen_port(cfg.listen_addr)
        if cfg.admin.listen_addr:
            ports["admin"] = listen_port(cfg.admin.listen_addr)
    elif shape == "derp":
        ports["derp"] = listen_port(cfg.derp.server.listen_addr)
    elif shape == "stun":
        ports["stun"] = listen_port(cfg.derp.server.stun_listen_addr)
    elif shape == "dns":
        ports["dns"] = listen_port(cfg.dns.listen_addr)
    else:
        raise AssertionError(f"unknown process shape {shape!r}")
    return ports


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and (match[2] in units or match[2] == ""), f"not a quantity: {value!r}"
    return float(match[1]) * units.get(match[2], 1)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    for overlay in rendered.values():
        for doc in overlay.docs:
            for version in SCHEMA_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message}")


def test_the_schema_check_refuses_a_wrong_object(rendered):
    dep = rendered["single"].one("Deployment", "trioscale-coord")
    wrong = {**dep, "spec": {**dep["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, SCHEMA_VERSIONS[0], strict=True)


def test_every_pod_and_container_is_locked_down(rendered):
    for overlay in rendered.values():
        for workload in overlay.workloads():
            spec = pod_spec(workload)
            where = f"{overlay.name}: {workload['metadata']['name']}"
            pod = spec.get("securityContext", {})
            assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, where
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            assert spec.get("automountServiceAccountToken") is False, where
            assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where
            unprivileged_from = 1024
            for sysctl in pod.get("sysctls", []):
                if sysctl["name"] == "net.ipv4.ip_unprivileged_port_start":
                    unprivileged_from = int(sysctl["value"])
            for container in spec["containers"]:
                at = f"{where}/{container['name']}"
                sc = container.get("securityContext", {})
                assert sc.get("runAsNonRoot") is True, at
                assert sc.get("readOnlyRootFilesystem") is True, at
                assert sc.get("allowPrivilegeEscalation") is False, at
                assert not sc.get("privileged"), at
                assert sc.get("seccompProfile", pod["seccompProfile"]) == {"type": "RuntimeDefault"}, at
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], at
                cfg = process_config(overlay.docs, workload, container)
                low = [p for p in bound_ports(cfg, container["args"][0]).values() if p < 1024]
                added = sc["capabilities"].get("add", [])
                if low:
                    assert added == ["NET_BIND_SERVICE"], f"{at} binds {low} and needs NET_BIND_SERVICE only"
                    # Kubernetes puts no added capability in a non-root process's effective set on
                    # every runtime: the pod's own network namespace lets it bind without one
                    assert unprivileged_from <= min(low), f"{at} binds {low}: set net.ipv4.ip_unprivileged_port_start"
                else:
                    assert added == [], f"{at} binds no port below 1024 and adds {added}"
                # temporary files and state go to volumes, the root file system stays read-only
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert {"/tmp", str(cfg.data_dir)} <= mounts, at


def test_every_container_has_requests_and_limits(rendered):
    for overlay in rendered.values():
        for workload, container in containers(overlay):
            at = f"{overlay.name}: {workload['metadata']['name']}/{container['name']}"
            res = container.get("resources", {})
            for what in ("cpu", "memory"):
                request, limit = res.get("requests", {}).get(what), res.get("limits", {}).get(what)
                assert request is not None and limit is not None, f"{at}: {what} request and limit"
                assert quantity(request) <= quantity(limit), f"{at}: {what} request above its limit"


def test_every_port_a_process_binds_is_declared(rendered):
    for overlay in rendered.values():
        for workload, container in containers(overlay):
            cfg = process_config(overlay.docs, workload, container)
            declared = {p["containerPort"] for p in container.get("ports", [])}
            for what, port in bound_ports(cfg, container["args"][0]).items():
                assert port in declared, f"{overlay.name}: {container['name']} binds {what} on {port}, not declared"
            # containers of one pod share its network: no two processes may bind one port
            pod_ports = [listen_port(process_config(overlay.docs, workload, c).metrics_listen_addr)
                         for c in pod_spec(workload)["containers"]]
            assert len(pod_ports) == len(set(pod_ports)), f"{workload['metadata']['name']}: metrics ports collide"


def test_probes_ask_the_metrics_listener_for_health_and_readiness(rendered):
    for overlay in rendered.values():
        for workload, container in containers(overlay):
            at = f"{overlay.name}: {workload['metadata']['name']}/{container['name']}"
            cfg = process_config(overlay.docs, workload, container)
            host = cfg.metrics_listen_addr.rsplit(":", 1)[0]
            assert host not in ("127.0.0.1", "localhost", "[::1]"), f"{at}: the kubelet cannot reach {cfg.metrics_listen_addr}"
            expected = {"livenessProbe": "/health", "readinessProbe": "/ready", "startupProbe": "/health"}
            for probe_name, path in expected.items():
                probe = container.get(probe_name)
                if probe is None and probe_name == "startupProbe":
                    continue
                assert probe is not None, f"{at}: no {probe_name}"
                assert probe["httpGet"]["path"] == path, f"{at}: {probe_name}"
                port = container_port(container, probe["httpGet"]["port"])["containerPort"]
                assert port == listen_port(cfg.metrics_listen_addr), f"{at}: {probe_name} on {port}, metrics on {cfg.metrics_listen_addr}"


async def test_the_probed_paths_are_what_the_metrics_listener_serves(rendered):
    """/health answers while the process runs; /ready is the readiness check (503 while one fails)."""
    paths = {(name, c[name]["httpGet"]["path"]) for o in rendered.values() for _, c in containers(o)
             for name in ("livenessProbe", "readinessProbe", "startupProbe") if name in c}
    readiness = Readiness()
    readiness.add_flag("listeners", "not bound yet")
    endpoints = OpsEndpoints(CollectorRegistry(), readiness)
    for name, path in sorted(paths):
        status, _, _ = await endpoints.answer(b"GET", path.encode())
        want = b"503" if name == "readinessProbe" else b"200"
        assert status.startswith(want), f"{name} {path}: {status!r}"
    with trio.fail_after(5):
        assert (await endpoints.answer(b"GET", b"/no-such-path"))[0].startswith(b"404")


def test_coordinators_have_a_disruption_budget_and_spread_over_nodes(rendered):
    for overlay in rendered.values():
        dep = overlay.one("Deployment", "trioscale-coord")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        budgets = [p for p in overlay.of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
        assert len(budgets) == 1, overlay.name
        spec = budgets[0]["spec"]
        replicas = dep["spec"]["replicas"]
        # a drain may take some, never all
        assert spec.get("maxUnavailable", replicas) < replicas or 0 < spec.get("minAvailable", 0) < replicas
        terms = pod_spec(dep)["affinity"]["podAntiAffinity"]
        spread = [t.get("podAffinityTerm", t) for t in terms.get("preferredDuringSchedulingIgnoredDuringExecution", [])
                  + terms.get("requiredDuringSchedulingIgnoredDuringExecution", [])]
        assert any(t["topologyKey"] == "kubernetes.io/hostname" and selects(t["labelSelector"], labels) for t in spread)


def test_the_ingress_reaches_control_and_admin_on_the_ports_they_listen_on(rendered):
    for overlay in rendered.values():
        (ingress,) = overlay.of_kind("Ingress")
        dep = overlay.one("Deployment", "trioscale-coord")
        (container,) = pod_spec(dep)["containers"]
        cfg = process_config(overlay.docs, dep, container)
        services = by_name(overlay.docs, "Service")
        reached = {}
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services[backend["name"]]
                assert selects({"matchLabels": service["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"])
                (sp,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"].get("name") or p["port"] == backend["port"].get("number")]
                reached[rule["host"]] = container_port(container, sp["targetPort"])["containerPort"]
        server_host = cfg.server_url.split("://", 1)[1].split("/")[0].split(":")[0]
        assert reached.pop(server_host) == listen_port(cfg.listen_addr), overlay.name
        assert list(reached.values()) == [listen_port(cfg.admin.listen_addr)], overlay.name
        tls_hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
        assert {r["host"] for r in ingress["spec"]["rules"]} <= tls_hosts
        assert cfg.server_url.startswith("https://")


def test_the_dns_service_answers_on_53_over_udp_and_tcp(rendered):
    for overlay in rendered.values():
        dep = overlay.one("Deployment", "trioscale-dns")
        (container,) = pod_spec(dep)["containers"]
        cfg = process_config(overlay.docs, dep, container)
        service = overlay.one("Service", "trioscale-dns")
        assert selects({"matchLabels": service["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"])
        by_protocol = {p.get("protocol", "TCP"): p for p in service["spec"]["ports"]}
        assert set(by_protocol) == {"UDP", "TCP"}
        for protocol, port in by_protocol.items():
            assert port["port"] == 53
            target = container_port(container, port["targetPort"])
            assert target.get("protocol", "TCP") == protocol
            assert target["containerPort"] == listen_port(cfg.dns.listen_addr)


def test_network_policies_deny_by_default_and_let_each_service_be_reached(rendered):
    for overlay in rendered.values():
        policies = overlay.of_kind("NetworkPolicy")
        assert any(p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
                   and not p["spec"].get("ingress") for p in policies), f"{overlay.name}: no default deny"
        for workload, container in containers(overlay):
            labels = workload["spec"]["template"]["metadata"]["labels"]
            cfg = process_config(overlay.docs, workload, container)
            for what, port in bound_ports(cfg, container["args"][0]).items():
                protocol = "UDP" if what == "stun" else container_port(container, port).get("protocol", "TCP")
                allowed = [p for p in policies if selects(p["spec"]["podSelector"], labels)
                           for rule in p["spec"].get("ingress", [])
                           for rp in rule.get("ports", []) if rp["port"] == port and rp.get("protocol", "TCP") == protocol]
                assert allowed, f"{overlay.name}: {container['name']}: nothing lets {what} ({port}/{protocol}) in"


def derp_regions(overlay):
    regions = {}
    for ds in overlay.of_kind("DaemonSet"):
        spec = pod_spec(ds)
        relay = next(c for c in spec["containers"] if c["args"] == ["derp"])
        cfg = process_config(overlay.docs, ds, relay)
        code = cfg.derp.server.region_code
        assert spec["nodeSelector"]["trioscale.io/derp-region"] == code
        assert ds["spec"]["selector"]["matchLabels"]["trioscale.io/derp-region"] == code
        assert any(c["args"] == ["stun"] for c in spec["containers"]), f"{ds['metadata']['name']}: no STUN"
        regions[cfg.derp.server.region_id] = code
    return regions


def test_regions_come_from_one_daemonset_and_a_few_lines_each(rendered):
    assert len(derp_regions(rendered["single"])) == 1
    multi = derp_regions(rendered["multi-region"])
    assert len(multi) == 2 and len(set(multi.values())) == 2
    defined = [p for p in K8S.rglob("*.yaml") if re.search(r"^kind: DaemonSet$", p.read_text(), re.M)]
    assert [p.relative_to(K8S).as_posix() for p in defined] == ["derp/daemonset.yaml"]


def test_secrets_come_only_from_the_files_outside_git(rendered):
    for overlay in rendered.values():
        secrets = overlay.of_kind("Secret")
        assert secrets
        given = set(overlay.secret_files.values())
        for secret in secrets:
            # generated: a content hash in the name, every value one of the operator's files
            assert re.fullmatch(r"[a-z0-9-]+-[a-z0-9]{10}", secret["metadata"]["name"]), secret["metadata"]["name"]
            assert "stringData" not in secret
            for key in secret["data"]:
                value = secret_value(overlay.docs, secret["metadata"]["name"], key)
                assert value.encode() in given, f"{overlay.name}: {secret['metadata']['name']}/{key} is not from secrets/"
                assert not re.search(r"REPLACE|CHANGE.?ME|example|xxxx|TODO", value, re.I)
        keys = by_name(overlay.docs, "Secret")
        noise = next(s for s in keys if s.startswith("trioscale-secrets-"))
        PRIVATE.parse(secret_value(overlay.docs, noise, "noise_private.key").strip())
        assert re.fullmatch(r"[0-9a-f]{64}", secret_value(overlay.docs, noise, "mesh_key"))
        # every reference to a Secret finds it and the key
        for workload, container in containers(overlay):
            container_env(overlay.docs, container)  # resolves each secretKeyRef or fails
            for volume in pod_spec(workload).get("volumes", []):
                if "secret" in volume:
                    secret = keys[volume["secret"]["secretName"]]
                    for item in volume["secret"].get("items", []):
                        assert item["key"] in secret["data"]


def test_no_secret_or_secret_file_is_in_git():
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for path in tracked:
        assert "/secrets/" not in path, path
        if path.endswith((".yaml", ".yml")):
            assert not re.search(r"^kind: Secret$", (ROOT / path).read_text(), re.M), f"{path} holds a Secret"
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/overlays/single/secrets/noise_private.key"], cwd=ROOT)
    assert ignored.returncode == 0, "overlays' secrets/ must be git-ignored"


def test_nothing_renders_without_the_secret_files(kustomize, tmp_path):
    tree = copy_tree(tmp_path / "k8s")
    for overlay in ("single", "multi-region"):
        proc = render(kustomize, tree / "overlays" / overlay)
        assert proc.returncode != 0 and "secrets/" in proc.stderr, f"{overlay} rendered without its secrets"


def test_make_secrets_keeps_the_keys_it_made(tmp_path):
    tree = copy_tree(tmp_path / "k8s")
    first = give_secrets(tree, "single", tmp_path / "a")
    again = give_secrets(tree, "single", tmp_path / "b")
    assert first["noise_private.key"] == again["noise_private.key"] and first["mesh_key"] == again["mesh_key"]
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tree / "overlays" / "single" / "secrets").iterdir()}
    assert set(modes.values()) == {0o600}, modes
    incomplete = subprocess.run([str(tree / "make-secrets.sh"), "multi-region"], capture_output=True, text=True)
    assert incomplete.returncode == 1 and "postgres_password" in incomplete.stderr


def test_every_container_runs_the_image_make_image_builds(rendered):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for overlay in rendered.values():
        for _, container in containers(overlay):
            assert container["image"] == f"trioscale:{version}", f"{overlay.name}: {container['image']}"
            assert container["args"][0] in ("coord", "derp", "stun", "dns")
