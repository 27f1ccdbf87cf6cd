"""Check deploy/kubernetes: `make deploy-check` runs this, and tests/deploy runs its checks.

1. Schemas. Every resource of the manifests that kustomization.yaml lists validates against
   the Kubernetes JSON schemas shipped inside the `kubernetes-validate` package (offline: no
   cluster, no network), strictly: an unknown field is an error, and so is a kind or
   apiVersion the schemas do not know (the package's own command only warns about those).
   Checked for each version in KUBERNETES_VERSIONS: the oldest the manifests support (gRPC
   probes are GA from 1.27) and the newest the package knows.
2. The kustomization lists every manifest of the folder, and only those.
3. References between the resources and to the gateway itself:
   - the Deployment's selector matches its pod labels; each Service's and the
     PodDisruptionBudget's selector matches them too;
   - each Service's targetPort is a port of the gateway container; probes and the Prometheus
     scrape annotation use its ports; the gRPC and metrics ports are the ones the ConfigMap
     gives the gateway (GEMINI_GATEWAY_PORT, GEMINI_GATEWAY_METRICS_PORT);
   - envFrom names the ConfigMap and the Secret, whose keys are all GEMINI_GATEWAY_<FIELD>
     for fields of gemini_gateway.server.config.Settings, and whose values together load as
     Settings; secrets (the API key, the store URL) are in the Secret only, and the store is
     PostgreSQL (every replica shares it);
   - the HorizontalPodAutoscaler targets the Deployment, whose container requests the CPU it
     scales on;
   - terminationGracePeriodSeconds covers the preStop pause, the gateway's shutdown grace
     and the time it takes after that to write its last usage batch (workers.STOP_MARGIN_S).

Usage: python deploy/check_manifests.py [FOLDER]   (default: deploy/kubernetes)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FOLDER = Path(__file__).resolve().parent / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
# Oldest supported: native gRPC probes are GA from Kubernetes 1.27 (beta from 1.24).
OLDEST_KUBERNETES = "1.27.0"
ENV_PREFIX = "GEMINI_GATEWAY_"
# Settings whose values are secrets: they belong in the Secret, never in the ConfigMap.
SECRET_SETTINGS = frozenset({"api_key", "store_url"})
# Keys a kustomization here may use (anything else is a typo or needs a look).
KUSTOMIZATION_KEYS = frozenset({"apiVersion", "kind", "resources"})
# envFrom sources: (reference, kind, the field holding the values).
ENV_SOURCES = (("configMapRef", "ConfigMap", "data"), ("secretRef", "Secret", "stringData"))


def kubernetes_versions() -> tuple[str, ...]:
    from kubernetes_validate import utils

    return (OLDEST_KUBERNETES, utils.latest_version())


@dataclass(frozen=True)
class Resource:
    """One resource of a manifest file."""

    file: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name"))

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


def load(folder: Path = FOLDER) -> tuple[dict[str, Any], list[Resource]]:
    """The kustomization and the resources of the files it lists, in order."""
    kustomization = yaml.safe_load((folder / KUSTOMIZATION).read_text()) or {}
    resources = []
    for name in kustomization.get("resources", []):
        path = folder / name
        if not path.is_file():
            continue  # kustomization_problems names it
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                resources.append(Resource(name, body))
    return kustomization, resources


# --- 1. schemas -------------------------------------------------------------------------------


def schema_problems(resources: list[Resource], versions: tuple[str, ...]) -> list[str]:
    from kubernetes_validate import utils

    problems = []
    for resource in resources:
        for version in versions:
            try:
                utils.validate(resource.body, version, strict=True)
            except utils.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path) or "(top)"
                problems.append(f"{resource}: Kubernetes {exc.version}: {where}: {exc.message}")
            except utils.SchemaNotFoundError as exc:
                problems.append(f"{resource}: {exc.message}")
    return problems


# --- 2. the kustomization ---------------------------------------------------------------------


def kustomization_problems(kustomization: dict[str, Any], folder: Path = FOLDER) -> list[str]:
    problems = []
    if kustomization.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        problems.append(f"{KUSTOMIZATION}: apiVersion is not kustomize.config.k8s.io/v1beta1")
    if kustomization.get("kind") != "Kustomization":
        problems.append(f"{KUSTOMIZATION}: kind is not Kustomization")
    unknown = sorted(set(kustomization) - KUSTOMIZATION_KEYS)
    if unknown:
        problems.append(f"{KUSTOMIZATION}: keys this check does not know: {unknown}")
    listed = list(kustomization.get("resources", []))
    present = sorted(p.name for p in folder.glob("*.yaml") if p.name != KUSTOMIZATION)
    problems += [
        f"{KUSTOMIZATION}: lists {n}, which does not exist" for n in listed if n not in present
    ]
    problems += [f"{KUSTOMIZATION}: does not list {n}" for n in present if n not in listed]
    problems += [f"{KUSTOMIZATION}: lists {n} twice" for n in set(listed) if listed.count(n) > 1]
    return problems


# --- 3. references ----------------------------------------------------------------------------


def one(resources: list[Resource], kind: str) -> Resource:
    """The only resource of `kind` (a check that assumes one fails loudly otherwise)."""
    found = [r for r in resources if r.kind == kind]
    if len(found) != 1:
        raise LookupError(f"expected one {kind}, found {len(found)}")
    return found[0]


def every(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r.kind == kind]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a selector (a Service's plain map, or matchLabels) selects pods with `labels`.

    matchExpressions is not used by these manifests: a selector with it is reported rather
    than guessed at.
    """
    if "matchExpressions" in selector:
        return False
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def gateway_container(deployment: Resource) -> dict[str, Any]:
    containers = deployment.body["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        raise LookupError(f"{deployment}: expected one container, found {len(containers)}")
    return dict(containers[0])


def pod_environment(resources: list[Resource]) -> dict[str, str]:
    """What the gateway container's envFrom gives it: the ConfigMap's and the Secret's keys."""
    environment: dict[str, str] = {}
    for source in gateway_container(one(resources, "Deployment")).get("envFrom", []):
        for ref, kind, values in ENV_SOURCES:
            for resource in every(resources, kind):
                if ref in source and resource.name == source[ref]["name"]:
                    environment.update(
                        {k: str(v) for k, v in resource.body.get(values, {}).items()}
                    )
    return environment


@contextmanager
def environment_only(environment: Mapping[str, str]) -> Iterator[None]:
    """os.environ with no GEMINI_GATEWAY_* but `environment`, and no TOML file to read."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(environment)
        os.environ["GEMINI_GATEWAY_CONFIG"] = os.devnull + ".absent.toml"
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from(environment: Mapping[str, str]) -> Any:
    """gemini_gateway's Settings as a process with only `environment` would load them."""
    from gemini_gateway.server.config import Settings

    with environment_only(environment):
        return Settings()


def setting_of(key: str) -> str | None:
    """The Settings field an environment variable sets (None: it sets none)."""
    from gemini_gateway.server.config import Settings

    if not key.startswith(ENV_PREFIX):
        return None
    field = key.removeprefix(ENV_PREFIX).lower()
    return field if field in Settings.model_fields else None


def _port(value: Any, ports: Mapping[str, int]) -> int | None:
    """A port given by number or by the name of a container port."""
    if isinstance(value, int):
        return value
    return ports.get(str(value))


def reference_problems(resources: list[Resource]) -> list[str]:
    from gemini_gateway.server.workers import STOP_MARGIN_S

    problems: list[str] = []
    try:
        deployment = one(resources, "Deployment")
        container = gateway_container(deployment)
        configmap = one(resources, "ConfigMap")
        secret = one(resources, "Secret")
        hpa = one(resources, "HorizontalPodAutoscaler")
        pdb = one(resources, "PodDisruptionBudget")
    except LookupError as exc:
        return [str(exc)]
    services = every(resources, "Service")
    if not services:
        problems.append("no Service")

    template = deployment.body["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    if not selects(deployment.body["spec"]["selector"], labels):
        problems.append(f"{deployment}: spec.selector does not select its own pod labels")
    for service in services:
        if not selects(service.body["spec"].get("selector", {}), labels):
            problems.append(f"{service}: selector does not select the Deployment's pods")
    if not selects(pdb.body["spec"].get("selector", {}), labels):
        problems.append(f"{pdb}: selector does not select the Deployment's pods")

    # Ports: container ports by name, then every user of a port.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    numbers = set(ports.values())
    for service in services:
        for port in service.body["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if _port(target, ports) not in numbers:
                problems.append(f"{service}: targetPort {target!r} is no port of the container")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        if spec is None:
            if probe != "startupProbe":
                problems.append(f"{deployment}: no {probe}")
            continue
        if "grpc" not in spec:
            problems.append(f"{deployment}: {probe} is not a gRPC health probe")
        elif _port(spec["grpc"]["port"], ports) != ports.get("grpc"):
            problems.append(f"{deployment}: {probe} does not probe the gRPC port")

    environment = pod_environment(resources)
    for source in container.get("envFrom", []):
        for ref, kind, _values in ENV_SOURCES:
            names = {r.name for r in every(resources, kind)}
            if ref in source and source[ref]["name"] not in names:
                problems.append(f"{deployment}: envFrom names {kind} {source[ref]['name']!r}")
    if secret.body.get("data"):
        problems.append(f"{secret}: use stringData (placeholders in plain text), not data")
    for resource, values in (
        (configmap, configmap.body.get("data", {})),
        (secret, secret.body.get("stringData", {})),
    ):
        for key in values:
            if setting_of(key) is None:
                problems.append(
                    f"{resource}: {key} is no setting (GEMINI_GATEWAY_<FIELD> of Settings)"
                )
    misplaced = sorted(
        k for k in configmap.body.get("data", {}) if setting_of(k) in SECRET_SETTINGS
    )
    if misplaced:
        problems.append(f"{configmap}: secrets belong in the Secret: {misplaced}")
    for name in sorted(SECRET_SETTINGS):
        if (ENV_PREFIX + name.upper()) not in secret.body.get("stringData", {}):
            problems.append(f"{secret}: no {ENV_PREFIX + name.upper()}")
    try:
        settings = settings_from(environment)
    except Exception as exc:  # pydantic's ValidationError, or a settings source's error
        return [*problems, f"the pod's environment does not load as Settings: {exc}"]

    if ports.get("grpc") != settings.port:
        problems.append(f"{deployment}: containerPort 'grpc' is not GEMINI_GATEWAY_PORT")
    if settings.metrics_port is None or ports.get("metrics") != settings.metrics_port:
        problems.append(f"{deployment}: containerPort 'metrics' is not GEMINI_GATEWAY_METRICS_PORT")
    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        problems.append(f"{deployment}: pods lack prometheus.io/scrape: 'true'")
    if annotations.get("prometheus.io/port") != str(settings.metrics_port):
        problems.append(f"{deployment}: prometheus.io/port is not the metrics port")
    if settings.host not in ("0.0.0.0", "::", "[::]"):
        problems.append(f"{configmap}: GEMINI_GATEWAY_HOST must be a wildcard address in a pod")
    if not settings.store_url.startswith("postgresql+asyncpg://"):
        problems.append(
            f"{secret}: the store of several replicas is PostgreSQL (postgresql+asyncpg://)"
        )

    target = hpa.body["spec"]["scaleTargetRef"]
    wanted = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment.name}
    if {key: target.get(key) for key in wanted} != wanted:
        problems.append(f"{hpa}: scaleTargetRef is not {wanted}")
    scales_on_cpu = any(
        metric.get("type") == "Resource" and metric["resource"]["name"] == "cpu"
        for metric in hpa.body["spec"].get("metrics", [])
    )
    if scales_on_cpu and "cpu" not in container.get("resources", {}).get("requests", {}):
        problems.append(f"{deployment}: the HPA scales on CPU, but the container requests none")
    min_replicas = hpa.body["spec"].get("minReplicas", 1)
    budget = pdb.body["spec"]
    if "minAvailable" in budget and not isinstance(budget["minAvailable"], str):
        if budget["minAvailable"] >= min_replicas:
            problems.append(f"{pdb}: minAvailable >= the HPA's minReplicas blocks every drain")
    if budget.get("maxUnavailable") == 0:
        problems.append(f"{pdb}: maxUnavailable 0 blocks every drain")

    grace = template["spec"].get("terminationGracePeriodSeconds", 30)
    pause = pre_stop_seconds(container)
    needed = pause + settings.shutdown_grace_s + STOP_MARGIN_S
    if grace < needed:
        problems.append(
            f"{deployment}: terminationGracePeriodSeconds {grace} < preStop {pause} s + "
            f"shutdown_grace_s {settings.shutdown_grace_s:g} s + {STOP_MARGIN_S:g} s to finish"
        )
    return problems


def pre_stop_seconds(container: Mapping[str, Any]) -> float:
    """How long the preStop hook pauses (`sleep N` or the sleep action; 0 without one)."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    return 0.0


def problems(folder: Path = FOLDER) -> list[str]:
    """Everything wrong with the manifests in `folder` (empty: all is well)."""
    kustomization, resources = load(folder)
    return (
        kustomization_problems(kustomization, folder)
        + schema_problems(resources, kubernetes_versions())
        + reference_problems(resources)
    )


def main(argv: list[str]) -> int:
    folder = Path(argv[1]) if len(argv) > 1 else FOLDER
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        print(
            "error: kubernetes-validate is not installed: .venv/bin/pip install -e '.[dev]'",
            file=sys.stderr,
        )
        return 2
    found = problems(folder)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    if found:
        return 1
    _kustomization, resources = load(folder)
    versions = ", ".join(v.rsplit(".", 1)[0] for v in kubernetes_versions())
    shown = os.path.relpath(folder) if folder.is_absolute() else folder
    print(
        f"{shown}: {len(resources)} resources valid against the Kubernetes {versions} schemas "
        "(strict); references and settings agree"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
