"""Offline checks of what a cluster and users' CI get: manifests, CRDs, compose,
scripts and the Envoy bootstrap. Nothing here needs a cluster or a Docker engine."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed (dev dep of kubernetes-validate)
import kubernetes_validate  # type: ignore[import-untyped]  # ships no py.typed
import pytest
import yaml

from nodemesh.k8s_watch.resources import default_resources

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _manifests() -> list[Path]:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted((ROOT / "integration/kind").glob("*.yaml"))
    return [f for f in files if f.name not in ("kustomization.yaml", "kind-config.yaml")]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    (agent,) = _docs(DEPLOY / "agent-daemonset.yaml")
    broken = copy.deepcopy(agent)
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_shared_envoy_bootstrap() -> None:
    (kust,) = _docs(DEPLOY / "kustomization.yaml")
    listed = {DEPLOY / r for r in kust["resources"]}
    assert listed == {p for p in _manifests() if p.is_relative_to(DEPLOY)}
    (generator,) = kust["configMapGenerator"]
    (entry,) = generator["files"]
    key, _, rel = entry.partition("=")
    assert key == "bootstrap.yaml"
    assert (DEPLOY / rel).resolve() == ROOT / "envoy" / "bootstrap.yaml"
    envoy_ds = _docs(DEPLOY / "envoy-daemonset.yaml")[0]
    volumes = envoy_ds["spec"]["template"]["spec"]["volumes"]
    assert {"name": "nodemesh-envoy-bootstrap"} in [v.get("configMap") for v in volumes]


def test_rbac_grants_exactly_what_is_watched_plus_status_and_events() -> None:
    role = next(d for d in _docs(DEPLOY / "rbac.yaml") if d["kind"] == "ClusterRole")
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants.setdefault((group, res), set()).update(rule["verbs"])
    watched = {(s.group, s.plural) for s in default_resources("node")}
    for key in watched:
        assert grants.pop(key) == {"list", "watch"}, key
    for spec in default_resources():
        if spec.status_is_ours:
            assert grants.pop((spec.group, f"{spec.plural}/status")) == {"patch"}
    assert grants.pop(("events.k8s.io", "events")) == {"create"}
    assert grants == {}, "nothing beyond what is watched, status and events"


def test_agent_runs_with_capabilities_not_privileged() -> None:
    (agent,) = _docs(DEPLOY / "agent-daemonset.yaml")
    pod = agent["spec"]["template"]["spec"]
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["privileged"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in ctx["capabilities"]["add"]
    assert {"BPF", "NET_ADMIN"} <= set(ctx["capabilities"]["add"])
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys/fs/bpf", "/sys/fs/cgroup", "/var/run/nodemesh"} <= paths


def _structural_to_jsonschema(schema: Any) -> Any:
    """An apiextensions structural schema as JSON Schema. Unknown fields the API
    server would silently prune become errors, so a typo cannot pass."""
    if isinstance(schema, list):
        return [_structural_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _structural_to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-")}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "crds").glob("cilium*.yaml")):
        (crd,) = _docs(path)
        (version,) = crd["spec"]["versions"]
        schema = _structural_to_jsonschema(version["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}
        out[crd["spec"]["names"]["kind"]] = schema
    return out


def test_crds_cover_the_four_cilium_kinds_with_status() -> None:
    schemas = _crd_schemas()
    assert set(schemas) == {s.kind.value for s in default_resources() if s.group == "cilium.io"}
    for path in (DEPLOY / "crds").glob("cilium*.yaml"):
        (crd,) = _docs(path)
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_gateway_api_crds_cover_the_route_kinds_nodemesh_watches() -> None:
    """The vendored Gateway API CRDs (checked against the pinned module in
    integration/gateway_api) define every gateway.networking.k8s.io kind
    nodemesh watches, at the version it watches, with a status subresource
    where nodemesh writes status."""
    served = {}
    for path in (DEPLOY / "crds").glob("gateway.networking.k8s.io_*.yaml"):
        (crd,) = _docs(path)
        for version in crd["spec"]["versions"]:
            served[(crd["spec"]["names"]["kind"], version["name"])] = version
    watched = [s for s in default_resources() if s.group == "gateway.networking.k8s.io"]
    assert {s.kind.value for s in watched} == {"HTTPRoute", "GRPCRoute", "ReferenceGrant"}
    for spec in watched:
        version = served[(spec.kind.value, spec.version)]
        assert version["served"] is True
        if spec.status_is_ours:
            assert version["subresources"] == {"status": {}}


def test_example_cilium_objects_validate_against_our_crds() -> None:
    schemas = _crd_schemas()
    seen = 0
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in _docs(path):
            if doc.get("apiVersion") == "cilium.io/v2":
                jsonschema.validate(doc, schemas[doc["kind"]])
                seen += 1
    assert seen >= 2, "examples/canary has a CEC and a CNP"
    cec = next(
        d
        for d in _docs(ROOT / "examples/canary/traffic-split.yaml")
        if d["kind"] == "CiliumEnvoyConfig"
    )
    typo = copy.deepcopy(cec)
    typo["spec"]["service"] = typo["spec"].pop("services")
    with pytest.raises(jsonschema.ValidationError, match="service"):
        jsonschema.validate(typo, schemas["CiliumEnvoyConfig"])


def test_compose_file_passes_docker_compose_config() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package, no engine needed) comes from bootstrap.sh"
    run = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"nodemesh", "envoy", "httpbin-v1", "httpbin-v2", "curl"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name}: {host}"


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes from bootstrap.sh"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "*.sh"], capture_output=True, text=True, check=True
    ).stdout.split()
    scripts = sorted({ROOT / s for s in listed} | set((ROOT / "integration/kind").glob("*.sh")))
    assert ROOT / "integration/kind/run.sh" in scripts
    run = subprocess.run(
        [shellcheck, *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout


def test_dockerfile_copies_only_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), source


def _envoy_command_lines() -> dict[str, list[str]]:
    """Envoy's argv as the DaemonSet and the compose file start it, with the
    bootstrap path pointing at envoy/bootstrap.yaml and a node name filled in."""
    (ds,) = _docs(DEPLOY / "envoy-daemonset.yaml")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["envoy"]
    bootstrap = str(ROOT / "envoy/bootstrap.yaml")

    def local(argv: list[str]) -> list[str]:
        swap = {"/etc/envoy/bootstrap.yaml": bootstrap, "$(NODE_NAME)": "node-1"}
        return [swap.get(a, a) for a in argv]

    return {
        "daemonset": local([*container["command"], *container["args"]])[1:],
        "compose": local(compose["command"])[1:],
    }


@pytest.mark.envoy
@pytest.mark.parametrize("where", ["daemonset", "compose"])
def test_envoy_starts_as_shipped_passes_envoy_validate(where: str) -> None:
    envoy = shutil.which("envoy") or str(ROOT / ".venv/bin/envoy")
    argv = _envoy_command_lines()[where]
    assert str(ROOT / "envoy/bootstrap.yaml") in argv
    run = subprocess.run(
        [envoy, "--mode", "validate", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.envoy
def test_shipped_envoy_images_are_the_minor_version_the_suite_runs() -> None:
    envoy = shutil.which("envoy") or str(ROOT / ".venv/bin/envoy")
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = re.search(r"/(\d+)\.(\d+)\.\d+/", out).groups()  # type: ignore[union-attr]
    (ds,) = _docs(DEPLOY / "envoy-daemonset.yaml")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["envoy"]
    for image in (ds["spec"]["template"]["spec"]["containers"][0]["image"], compose["image"]):
        assert image.startswith(f"envoyproxy/envoy:v{major}.{minor}"), image


def test_agent_daemonset_args_are_the_clis() -> None:
    from nodemesh.cmd.main import build_parser

    (agent,) = _docs(DEPLOY / "agent-daemonset.yaml")
    args = agent["spec"]["template"]["spec"]["containers"][0]["args"]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in args]
    parsed, unknown = build_parser().parse_known_args(args)
    assert parsed.command == "agent" and parsed.action == "run"
    assert unknown == []
    assert parsed.kubernetes and parsed.xds_socket is not None
    assert str(parsed.pin_dir) == "/sys/fs/bpf/nodemesh" and parsed.node_name == "node-1"


def _daemonsets() -> list[dict[str, Any]]:
    return [
        d for p in sorted(DEPLOY.glob("*.yaml")) for d in _docs(p) if d.get("kind") == "DaemonSet"
    ]


def test_host_network_pods_keep_admin_ports_on_loopback_and_probe_it_there() -> None:
    """A host-network pod's listeners are the node's: the agent's admin (config
    dumps, metrics) binds 127.0.0.1, and its HTTP probes must then name that
    host, or the kubelet dials the pod IP (the node's address) and fails."""
    checked = 0
    for ds in _daemonsets():
        pod = ds["spec"]["template"]["spec"]
        assert pod.get("hostNetwork") is True, ds["metadata"]["name"]
        for container in pod["containers"]:
            argv = [*container.get("command", []), *container.get("args", [])]
            admin = [a.partition("=")[2] for a in argv if a.startswith("--admin-address=")]
            values = [a.partition("=")[2] if a.startswith("--") else a for a in argv]
            assert not [v for v in values if v.startswith(("0.0.0.0", "[::]"))], argv
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = container.get(kind, {}).get("httpGet")
                if get is None:
                    continue
                assert get.get("host") == "127.0.0.1", f"{ds['metadata']['name']} {kind}"
                port = ports.get(get["port"], get["port"])
                if admin:
                    assert admin == [f"127.0.0.1:{port}"], (admin, kind)
                checked += 1
    assert checked >= 3, "agent readiness + liveness, Envoy readiness"
