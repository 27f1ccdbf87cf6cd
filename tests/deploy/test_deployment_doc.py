"""docs/deployment.md says what deploy/ does, and its commands and figures hold.

Its commands (docker, kubectl, make) are in `text` blocks: tests/docs runs the `sh` blocks of
the docs it walks, and docker and kubectl cannot run against a daemon or a cluster here. So
each command is accounted for below: `make deploy-check` runs; every other command is checked
against what it names (files, image tags, namespace, resources, ports, settings). A command
that nothing accounts for fails the test, as does an entry that matches no command.

The overlay the doc shows is rendered with `kubectl kustomize` (when kubectl is installed)
with the doc's secret.env, and must leave no placeholder in the output. The scaling arithmetic
is recomputed from docs/benchmarks.md and the manifests' numbers.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gemini_gateway.server.config import Settings
from tests.deploy import DEPLOY, MANIFESTS, ROOT, dockerfile
from tests.docs.markdown import Block, blocks

DOC = ROOT / "docs" / "deployment.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
PROGRAMS = ("docker ", "kubectl ", "make ", ".venv/bin/", "gemini-gateway ", "python ")
OVERLAY = "deploy/overlays/production"
DEPLOY_CHECK = "deploy/check_manifests.py"
TIMES = "\N{MULTIPLICATION SIGN}"  # as the doc writes its products


def manifest(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def commands() -> list[str]:
    """The commands of the doc's text blocks (continuation lines joined)."""
    found = []
    for block in blocks(DOC, "text"):
        pending = ""
        for line in block.text.splitlines():
            pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if line.endswith("\\"):
                continue
            if pending.startswith(PROGRAMS):
                found.append(" ".join(pending.split()))
            pending = ""
    return found


def overlay_blocks() -> tuple[Block, Block]:
    """The overlay's kustomization.yaml and secret.env, as the doc shows them."""
    text = blocks(DOC, "text")
    (kustomization,) = [b for b in text if b.text.startswith("apiVersion: kustomize")]
    (env,) = [b for b in text if b.text.startswith("GEMINI_GATEWAY_API_KEY=")]
    assert f"{OVERLAY}/kustomization.yaml" in kustomization.before
    assert f"{OVERLAY}/secret.env" in env.before
    return kustomization, env


def overlay() -> dict:
    return yaml.safe_load(overlay_blocks()[0].text)


def _image() -> str:
    (container,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def _exposed() -> set[int]:
    final = dockerfile()[1][-1]
    return {int(word) for e in final.all("EXPOSE") for word in e.words()}


def _published(words: list[str]) -> set[int]:
    return {int(words[i + 1].split(":")[1]) for i, w in enumerate(words) if w == "-p"}


def check_docker_build(words: list[str]) -> None:
    assert words[words.index("-f") + 1] == "deploy/Dockerfile"
    assert words[-1] == ".", "the context is the repository root"
    assert words[words.index("-t") + 1] == _image(), "the tag the Deployment runs"


def check_docker_run(words: list[str]) -> None:
    assert words[-1] == _image()
    assert _published(words) <= _exposed()
    for index, word in enumerate(words):
        if word == "-e":
            name = words[index + 1].split("=")[0]
            assert name.startswith("GEMINI_GATEWAY_"), name
            assert name.removeprefix("GEMINI_GATEWAY_").lower() in Settings.model_fields, name


def _overlay_image() -> str:
    (image,) = overlay()["images"]
    assert image["name"] == _image().split(":")[0]
    return f"{image['newName']}:{image['newTag']}"


def check_docker_tag(words: list[str]) -> None:
    assert words[2:] == [_image(), _overlay_image()]


def check_docker_push(words: list[str]) -> None:
    assert words[2:] == [_overlay_image()]


def check_create_namespace(words: list[str]) -> None:
    assert words[3] == overlay()["namespace"]


def check_apply(words: list[str]) -> None:
    assert words[2:] == ["-k", OVERLAY]
    assert overlay()["resources"] == ["../../kubernetes"], "the base, from the overlay's folder"


def check_rollout_status(words: list[str]) -> None:
    assert words[1:3] == ["-n", overlay()["namespace"]]
    assert words[-1] == f"deployment/{manifest('deployment.yaml')['metadata']['name']}"


def check_port_forward(words: list[str]) -> None:
    assert words[1:3] == ["-n", overlay()["namespace"]]
    services = [b for b in yaml.safe_load_all((MANIFESTS / "service.yaml").read_text())]
    kind, name = words[4].split("/")
    (service,) = [s for s in services if s["metadata"]["name"] == name]
    _local, remote = words[5].split(":")
    assert kind == "service" and int(remote) in {p["port"] for p in service["spec"]["ports"]}


def run_make_deploy_check(words: list[str]) -> None:
    """`make deploy-check`: the Makefile runs the check script, and `make lint` depends on it."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^deploy-check:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe and recipe.group(1) == "$(PY) deploy/check_manifests.py", recipe
    lint = re.search(r"^lint:([^#\n]*)", makefile, re.MULTILINE)
    assert lint and "deploy-check" in lint.group(1).split()
    done = subprocess.run(
        [sys.executable, "deploy/check_manifests.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


# First words of each command -> how the test checks it.
COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "docker build": check_docker_build,
    "docker run": check_docker_run,
    "docker tag": check_docker_tag,
    "docker push": check_docker_push,
    "kubectl create namespace": check_create_namespace,
    "kubectl apply": check_apply,
    "kubectl -n gemini-gateway rollout status": check_rollout_status,
    "kubectl -n gemini-gateway port-forward": check_port_forward,
    "make deploy-check": run_make_deploy_check,
}


def test_every_command_is_checked() -> None:
    found = commands()
    assert len(found) >= 8, found
    used = set()
    for command in found:
        keys = [key for key in COMMANDS if command.startswith(key + " ") or command == key]
        assert keys, f"docs/deployment.md: {command!r}: no check accounts for this command"
        used.update(keys)
        COMMANDS[keys[0]](shlex.split(command))
    assert used == set(COMMANDS), f"entries that match no command: {set(COMMANDS) - used}"


def test_settings_named_are_settings() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"\bGEMINI_GATEWAY_[A-Z][A-Z_]*[A-Z]\b", text))
    named -= {"GEMINI_GATEWAY_CONFIG"}  # the TOML file's path, not a setting itself
    assert named
    fields = Settings.model_fields
    unknown = {n for n in named if n.removeprefix("GEMINI_GATEWAY_").lower() not in fields}
    assert not unknown, unknown


def test_doc_names_every_manifest_and_links_resolve() -> None:
    text = DOC.read_text()
    for path in MANIFESTS.glob("*.yaml"):
        assert f"`{path.name}`" in text, path.name
    for path in ("deploy/Dockerfile", "deploy/Dockerfile.dockerignore", DEPLOY_CHECK):
        assert f"`{path}`" in text and (ROOT / path).is_file(), path
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert "security.md" in links, "the security model is docs/security.md's"
    for link in links:
        if link != "security.md":  # written alongside, by the security work
            assert (DOC.parent / link).resolve().is_file(), link


def test_overlay_secret_env_is_ignored_by_git() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", f"{OVERLAY}/secret.env"], cwd=ROOT, timeout=30
    )
    assert done.returncode == 0, f"{OVERLAY}/secret.env would be committable"
    assert (DEPLOY / ".gitignore").is_file()


def test_overlay_replaces_every_secret_key() -> None:
    _kustomization, env = overlay_blocks()
    keys = [line.split("=", 1)[0] for line in env.text.splitlines() if line.strip()]
    assert sorted(keys) == sorted(manifest("secret.example.yaml")["stringData"])
    (generator,) = overlay()["secretGenerator"]
    assert generator["behavior"] == "replace"
    assert generator["name"] == manifest("secret.example.yaml")["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_overlay_renders_without_placeholders(tmp_path: Path) -> None:
    kustomization, env = overlay_blocks()
    shutil.copytree(MANIFESTS, tmp_path / "deploy" / "kubernetes")
    folder = tmp_path / OVERLAY
    folder.mkdir(parents=True)
    (folder / "kustomization.yaml").write_text(kustomization.text)
    (folder / "secret.env").write_text(env.text)
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "REPLACE_ME" not in done.stdout
    rendered = [body for body in yaml.safe_load_all(done.stdout) if body]
    namespace = overlay()["namespace"]
    assert {body["metadata"].get("namespace") for body in rendered} == {namespace}
    (secret,) = [b for b in rendered if b["kind"] == "Secret"]
    assert "stringData" not in secret and sorted(secret["data"]) == sorted(
        line.split("=", 1)[0] for line in env.text.splitlines() if line.strip()
    )
    (deployment,) = [b for b in rendered if b["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == _overlay_image()
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]


# --- the scaling arithmetic -------------------------------------------------------------------


def _bench_rows(title: str) -> list[list[str]]:
    """The cells after the title of the rows of docs/benchmarks.md's latest results that
    start with it: the gateway table's row, then the recording and logging on/off table's
    (a run with --baseline has the baseline's own such table after them)."""
    text = BENCHMARKS.read_text()
    latest = text[text.index("## Latest results") :]
    rows = []
    for line in latest.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == title:
            rows.append(cells[1:])
    assert len(rows) in (2, 3), f"docs/benchmarks.md: expected two {title!r} rows, found {rows}"
    return rows[:2]


def _n(value: float, places: int = 0) -> str:
    return f"{value:,.{places}f}"


def test_scaling_arithmetic_follows_the_bench_and_the_manifests() -> None:
    text = " ".join(DOC.read_text().split())
    # docs/benchmarks.md, latest results: gw aiohttp (recording on, the default), then the
    # recording and logging table: both on, recording only (the same gateway), both off.
    gateways, recording = _bench_rows("gateway CPU per request (µs), c=64")
    _direct, aiohttp_us, *_ = gateways
    _both_on, recording_only_us, off_us_text, _difference = recording
    cpu_us = float(aiohttp_us)
    assert float(recording_only_us) == cpu_us
    off_us = float(off_us_text)
    target = manifest("hpa.yaml")["spec"]["metrics"][0]["resource"]["target"]
    utilization = target["averageUtilization"] / 100
    max_replicas = manifest("hpa.yaml")["spec"]["maxReplicas"]
    (container,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    request_cpu = float(container["resources"]["requests"]["cpu"])
    max_connections = int(manifest("configmap.yaml")["data"]["GEMINI_GATEWAY_MAX_CONNECTIONS"])

    cores = round(1000 * cpu_us / 1e6, 2)
    pods = round(cores / (request_cpu * utilization), 2)
    busy = math.ceil(pods)
    expected = [
        f"{_n(cpu_us)} µs",
        f"1,000 {TIMES} {_n(cpu_us)} µs = {cores:.2f} core",
        f"1 / {_n(cpu_us)} µs = {_n(1e6 / cpu_us)} calls/s",
        f"{utilization:.0%} of {request_cpu:g} CPU",
        f"{cores:.2f} / {utilization:.2f} = {pods:.2f}, so {busy} pods",
        f"{busy} + 1 = {busy + 1} pods per 1,000 calls/s",
        f"adds about {pods:.2f} pods",
        f"`maxReplicas: {max_replicas}`",
        f"{max_replicas - 1} {TIMES} {utilization:.2f} / {cores:.2f} {TIMES} 1,000 = "
        f"{_n(round((max_replicas - 1) * utilization / cores * 1000, -2))} calls/s",
        f"{_n(off_us)} µs per call",
        f"(`GEMINI_GATEWAY_MAX_CONNECTIONS`, {max_connections})",
        f"2,000 / {max_connections} = {2000 / max_connections:.1f}, so "
        f"{math.ceil(2000 / max_connections)} pods",
        f"1,024 → {math.ceil(2000 / 1024)} pods",
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, f"docs/deployment.md's arithmetic no longer holds: {missing}"
