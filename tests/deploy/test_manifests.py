"""deploy/kubernetes: schema validation (strict, offline), cross-references, and the pod set-up.

The checks are deploy/check_manifests.py's, which `make deploy-check` runs: first on the
manifests as they are (no problem), then on copies broken one way each, to show that each
check catches what it is about. The last part asserts the deployment's intent directly
(gRPC probes, non-root, read-only root file system, placeholders in the example Secret...).
"""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from gemini_gateway.server.config import Settings
from tests.deploy import MANIFESTS, ROOT, checker

Mutation = Callable[[dict[str, dict[str, Any]]], None]


def resources() -> list[Any]:
    _kustomization, found = checker().load()
    return list(found)


def by_kind() -> dict[str, dict[str, Any]]:
    """Deep copies of the resources, one per kind (the headless Service under its name)."""
    found: dict[str, dict[str, Any]] = {}
    for resource in resources():
        key = resource.name if resource.kind == "Service" else resource.kind
        found[key] = copy.deepcopy(resource.body)
    return found


def rebuilt(bodies: dict[str, dict[str, Any]]) -> list[Any]:
    module = checker()
    return [module.Resource("(mutated)", body) for body in bodies.values()]


def container(bodies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(bodies["Deployment"]["spec"]["template"]["spec"]["containers"][0])


# --- as they are ------------------------------------------------------------------------------


def test_make_deploy_check_passes() -> None:
    """What `make deploy-check` runs (and `make lint` with it) exits 0 and says what it did."""
    done = subprocess.run(
        [sys.executable, "deploy/check_manifests.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid against the Kubernetes 1.27" in done.stdout, done.stdout
    assert "(strict)" in done.stdout


@pytest.mark.parametrize("version", checker().kubernetes_versions())
def test_every_manifest_validates_strictly(version: str) -> None:
    found = resources()
    kinds = {r.kind for r in found}
    assert kinds == {
        "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }  # fmt: skip
    assert checker().schema_problems(found, (version,)) == []


def test_validation_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schemas ship inside kubernetes-validate: validating opens no connection."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the schema validation tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert checker().schema_problems(resources(), checker().kubernetes_versions()) == []


def test_kustomization_lists_every_manifest() -> None:
    kustomization, _resources = checker().load()
    assert checker().kustomization_problems(kustomization) == []
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_references_agree() -> None:
    assert checker().reference_problems(resources()) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_listed_resources() -> None:
    """kustomize itself accepts the kustomization and renders the files unchanged."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = [body for body in yaml.safe_load_all(done.stdout) if body]
    key = lambda body: (body["kind"], body["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted((r.body for r in resources()), key=key)


# --- each check catches what it is about ------------------------------------------------------


def _unknown_field(b: dict[str, dict[str, Any]]) -> None:
    b["Deployment"]["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True  # misspelt: the API server would drop it silently


def _unknown_kind(b: dict[str, dict[str, Any]]) -> None:
    b["PodDisruptionBudget"]["kind"] = "PodDisruptionBudgets"


def _old_api(b: dict[str, dict[str, Any]]) -> None:
    b["HorizontalPodAutoscaler"]["apiVersion"] = "autoscaling/v2beta2"


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (_unknown_field, "'readOnlyRootFileSystem' was unexpected"),
        (_unknown_kind, "Couldn't find schema for kind PodDisruptionBudgets"),
        (_old_api, "api version autoscaling/v2beta2"),
    ],
    ids=["unknown field", "unknown kind", "removed apiVersion"],
)
def test_schema_check_catches(mutation: Mutation, expected: str) -> None:
    bodies = by_kind()
    mutation(bodies)
    problems = checker().schema_problems(rebuilt(bodies), checker().kubernetes_versions())
    assert any(expected in p for p in problems), problems


def _set(path: str | tuple[str, ...], value: Any) -> Mutation:
    """A mutation setting `path` ("Kind.a.b.0.c", or a tuple of keys) to `value`."""

    def mutate(bodies: dict[str, dict[str, Any]]) -> None:
        kind, *keys = path.split(".") if isinstance(path, str) else path
        node: Any = bodies[kind]
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _config(key: str, value: str) -> Mutation:
    return _set(f"ConfigMap.data.{key}", value)


CONTAINER = "Deployment.spec.template.spec.containers.0"
REFERENCE_BREAKS: dict[str, tuple[Mutation, str]] = {
    "service selector": (
        _set("gemini-gateway.spec.selector", {"app.kubernetes.io/name": "gateway"}),
        "Service/gemini-gateway: selector does not select",
    ),
    "headless selector": (
        _set("gemini-gateway-headless.spec.selector", {"app": "gemini-gateway"}),
        "Service/gemini-gateway-headless: selector does not select",
    ),
    "deployment selector": (
        _set("Deployment.spec.selector.matchLabels", {"app.kubernetes.io/name": "other"}),
        "spec.selector does not select its own pod labels",
    ),
    "pdb selector": (
        _set("PodDisruptionBudget.spec.selector.matchLabels", {"app": "x"}),
        "PodDisruptionBudget/gemini-gateway: selector does not select",
    ),
    "service target port": (
        _set("gemini-gateway.spec.ports.0.targetPort", "http"),
        "targetPort 'http' is no port of the container",
    ),
    "probe port": (
        _set(f"{CONTAINER}.readinessProbe.grpc.port", 9464),
        "readinessProbe does not probe the gRPC port",
    ),
    "probe kind": (
        _set(f"{CONTAINER}.livenessProbe", {"tcpSocket": {"port": 50051}}),
        "livenessProbe is not a gRPC health probe",
    ),
    "gRPC port vs setting": (
        _config("GEMINI_GATEWAY_PORT", "50052"),
        "containerPort 'grpc' is not GEMINI_GATEWAY_PORT",
    ),
    "metrics port vs setting": (
        _config("GEMINI_GATEWAY_METRICS_PORT", "9090"),
        "containerPort 'metrics' is not GEMINI_GATEWAY_METRICS_PORT",
    ),
    "scrape annotation port": (
        _set(
            ("Deployment", "spec", "template", "metadata", "annotations", "prometheus.io/port"),
            "9090",
        ),
        "prometheus.io/port is not the metrics port",
    ),
    "configmap key not a setting": (
        _config("GEMINI_GATEWAY_LISTEN_PORT", "50051"),
        "GEMINI_GATEWAY_LISTEN_PORT is no setting",
    ),
    "configmap key without prefix": (
        _config("LOG_LEVEL", "DEBUG"),
        "LOG_LEVEL is no setting",
    ),
    "secret key not a setting": (
        _set("Secret.stringData.GEMINI_GATEWAY_DATABASE_URL", "postgresql+asyncpg://x/y"),
        "GEMINI_GATEWAY_DATABASE_URL is no setting",
    ),
    "setting value of the wrong type": (
        _config("GEMINI_GATEWAY_WORKERS", "two"),
        "does not load as Settings",
    ),
    "secret in the configmap": (
        _config("GEMINI_GATEWAY_API_KEY", "REPLACE_ME"),
        "secrets belong in the Secret",
    ),
    "store not PostgreSQL": (
        _set("Secret.stringData.GEMINI_GATEWAY_STORE_URL", "sqlite+aiosqlite:///gateway.db"),
        "the store of several replicas is PostgreSQL",
    ),
    "envFrom names a missing ConfigMap": (
        _set(f"{CONTAINER}.envFrom.0.configMapRef.name", "gateway-settings"),
        "envFrom names ConfigMap 'gateway-settings'",
    ),
    "hpa target": (
        _set("HorizontalPodAutoscaler.spec.scaleTargetRef.name", "gemini"),
        "scaleTargetRef is not",
    ),
    "hpa without cpu request": (
        _set(f"{CONTAINER}.resources.requests", {"memory": "256Mi"}),
        "the HPA scales on CPU, but the container requests none",
    ),
    "pdb blocks drains": (
        _set("PodDisruptionBudget.spec.maxUnavailable", 0),
        "maxUnavailable 0 blocks every drain",
    ),
    "grace shorter than the drain": (
        _config("GEMINI_GATEWAY_SHUTDOWN_GRACE_S", "40"),
        "terminationGracePeriodSeconds 45 < preStop 5.0 s + shutdown_grace_s 40 s",
    ),
    "loopback host": (
        _config("GEMINI_GATEWAY_HOST", "127.0.0.1"),
        "GEMINI_GATEWAY_HOST must be a wildcard address",
    ),
}


@pytest.mark.parametrize(("mutation", "expected"), REFERENCE_BREAKS.values(), ids=REFERENCE_BREAKS)
def test_reference_check_catches(mutation: Mutation, expected: str) -> None:
    bodies = by_kind()
    mutation(bodies)
    problems = checker().reference_problems(rebuilt(bodies))
    assert any(expected in p for p in problems), problems


def test_kustomization_check_catches_an_unlisted_manifest(tmp_path: Any) -> None:
    folder = tmp_path / "kubernetes"
    shutil.copytree(MANIFESTS, folder)
    (folder / "networkpolicy.yaml").write_text("kind: NetworkPolicy\n")
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    kustomization["resources"].append("ingress.yaml")
    problems = checker().kustomization_problems(kustomization, folder)
    assert "kustomization.yaml: does not list networkpolicy.yaml" in problems, problems
    assert "kustomization.yaml: lists ingress.yaml, which does not exist" in problems, problems


# --- the deployment's intent ------------------------------------------------------------------


def test_configmap_and_secret_keys_are_settings_fields() -> None:
    bodies = by_kind()
    keys = [*bodies["ConfigMap"]["data"], *bodies["Secret"]["stringData"]]
    for key in keys:
        assert key.startswith("GEMINI_GATEWAY_"), key
        assert key.removeprefix("GEMINI_GATEWAY_").lower() in Settings.model_fields, key
    assert "GEMINI_GATEWAY_API_KEY" in bodies["Secret"]["stringData"]
    assert "GEMINI_GATEWAY_STORE_URL" in bodies["Secret"]["stringData"]


def test_example_secret_holds_only_marked_placeholders() -> None:
    secret = by_kind()["Secret"]
    assert "data" not in secret
    assert "placeholder" in secret["metadata"]["annotations"]["gemini-gateway/example"]
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{key} is not a marked placeholder"
    text = (MANIFESTS / "secret.example.yaml").read_text()
    assert text.startswith("# EXAMPLE ONLY"), "the file must say first that it is an example"


def test_pod_runs_unprivileged_on_a_read_only_root() -> None:
    bodies = by_kind()
    pod = bodies["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    gateway = container(bodies)
    assert gateway["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    (tmp,) = [m for m in gateway["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


def test_probes_are_native_grpc_health_checks() -> None:
    gateway = container(by_kind())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(gateway[probe]["grpc"]) == {"port"}, probe  # service "": the whole server
        assert gateway[probe]["grpc"]["port"] == 50051


def test_service_speaks_grpc_and_serves_metrics() -> None:
    bodies = by_kind()
    ports = {p["name"]: p for p in bodies["gemini-gateway"]["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == 9464
    assert bodies["gemini-gateway-headless"]["spec"]["clusterIP"] == "None"


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = by_kind()["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2  # a drain or a crash never leaves none
    assert "replicas" not in by_kind()["Deployment"]["spec"]  # the HPA owns the count
