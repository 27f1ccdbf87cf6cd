"""deploy/Dockerfile and its .dockerignore, checked without Docker.

- The structure: a build stage and a runtime stage; what the runtime stage mounts comes from
  the build stage; the runtime runs as a numeric non-root user (the one the Deployment
  names); it exposes the ports its environment gives the gateway (those of the manifests);
  its GEMINI_GATEWAY_* variables are settings; it runs `gemini-gateway serve`.
- The build context: every path the Dockerfile copies exists and survives the
  .dockerignore; the build stage's wheel command, run on exactly what the context keeps,
  builds the same two wheels as the whole checkout does.
- The HEALTHCHECK's inline Python, run as Docker would run it: healthy (exit 0) against a
  serving gateway, unhealthy (exit 1) once it drains and once nothing listens.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gemini_gateway.server.app import Gateway, start_gateway
from gemini_gateway.server.config import Settings
from tests.deploy import (
    DOCKERFILE,
    DOCKERIGNORE,
    MANIFESTS,
    ROOT,
    Stage,
    dockerfile,
    ignore_rules,
    kept_by_context,
)


def runtime() -> Stage:
    return dockerfile()[1][-1]


def deployment_pod() -> dict:
    return yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())["spec"]["template"]["spec"]


def context_files() -> list[str]:
    """Files of the checkout that the build context keeps (paths relative to the root)."""
    rules = ignore_rules(DOCKERIGNORE.read_text())
    kept = []
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith((".git/", ".venv/", "node_modules/")):
            continue
        if path.is_file() and kept_by_context(relative, rules):
            kept.append(relative)
    return kept


# --- structure --------------------------------------------------------------------------------


def test_multi_stage_build_then_runtime() -> None:
    args, stages = dockerfile()
    assert [s.name for s in stages] == ["build", "runtime"]
    # Both stages start from the same Python image, so the wheels fit the runtime.
    assert {s.base for s in stages} == {"${PYTHON_IMAGE}"}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    build, final = stages
    assert any("pip wheel" in r.text for r in build.all("RUN"))
    # The runtime copies nothing from the checkout: it installs the build stage's wheels.
    assert not final.all("COPY") and not final.all("ADD")
    mounts = [r for r in final.all("RUN") if "--mount=" in r.text]
    assert mounts and all("from=build" in r.text for r in mounts), mounts
    assert any("pip install /wheels/*.whl" in r.text for r in mounts)


def test_runs_as_the_non_root_user_the_deployment_names() -> None:
    final = runtime()
    (user,) = final.all("USER")
    uid, _, gid = user.text.partition(":")
    assert uid.isdigit() and gid.isdigit(), "numeric, so runAsNonRoot can check it"
    assert int(uid) != 0 and int(gid) != 0
    created = " ".join(r.text for r in final.all("RUN"))
    assert f"useradd --system --uid {uid} --gid {gid}" in created
    assert f"groupadd --system --gid {gid}" in created
    # USER comes after everything that needs root (installing, creating the user).
    assert user.line > max(r.line for r in final.all("RUN"))
    security = deployment_pod()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))


def test_environment_and_ports_match_the_manifests() -> None:
    final = runtime()
    env = final.env()
    gateway_env = {k: v for k, v in env.items() if k.startswith("GEMINI_GATEWAY_")}
    for key in gateway_env:
        assert key.removeprefix("GEMINI_GATEWAY_").lower() in Settings.model_fields, key
    exposed = {int(word) for e in final.all("EXPOSE") for word in e.words()}
    assert exposed == {int(env["GEMINI_GATEWAY_PORT"]), int(env["GEMINI_GATEWAY_METRICS_PORT"])}
    assert env["GEMINI_GATEWAY_HOST"] == "0.0.0.0"
    (container,) = deployment_pod()["containers"]
    assert exposed == {p["containerPort"] for p in container["ports"]}
    configmap = yaml.safe_load((MANIFESTS / "configmap.yaml").read_text())["data"]
    for key in ("GEMINI_GATEWAY_HOST", "GEMINI_GATEWAY_PORT", "GEMINI_GATEWAY_METRICS_PORT"):
        assert configmap[key] == env[key], key


def test_starts_gemini_gateway_serve() -> None:
    final = runtime()
    (entrypoint,) = final.all("ENTRYPOINT")
    (command,) = final.all("CMD")
    assert entrypoint.exec_form() == ["gemini-gateway"], "exec form: the gateway is PID 1"
    assert command.exec_form() == ["serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "gemini-gateway" in scripts
    (container,) = deployment_pod()["containers"]
    assert container["args"] == command.exec_form()
    assert "command" not in container


# --- build context ----------------------------------------------------------------------------


def test_copied_paths_exist_and_reach_the_builder() -> None:
    _args, stages = dockerfile()
    rules = ignore_rules(DOCKERIGNORE.read_text())
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            words = [w for w in copy.words() if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in copy.words()), copy.text
            sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, source
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            # Build leftovers (client/build/ after a wheel build) are meant to stay out.
            if "__pycache__" not in relative and "build" not in relative.split("/"):
                assert kept_by_context(relative, rules), f"{relative} is left out of the context"


def test_context_leaves_out_what_the_build_does_not_need() -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text())
    for path in (
        ".venv/bin/python", "node_modules/.bin/buf", ".git/HEAD", "tests/conftest.py",
        "bench/__main__.py", "docs/deployment.md", "gateway.toml", "build/lib/x.py",
        "server/__pycache__/app.cpython-311.pyc",
        "client/gemini_grpc_gateway_client.egg-info/PKG-INFO",
        "deploy/kubernetes/secret.example.yaml", "deploy/overlays/production/secret.env",
    ):  # fmt: skip
        assert not kept_by_context(path, rules), path
    for path in ("pyproject.toml", "client/pyproject.toml", "server/app.py", "emulator/app.py"):
        assert kept_by_context(path, rules), path


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = ignore_rules("*\n!keep/\nkeep/**/skip\n")
    assert not kept_by_context("top.txt", rules)
    assert kept_by_context("keep/a/b.py", rules)
    assert not kept_by_context("keep/skip/c.py", rules)  # `**/` may match no folder
    assert not kept_by_context("keep/a/skip/c.py", rules)


def _wheel_files(folder: Path) -> dict[str, set[str]]:
    found = {}
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            names = {n for n in archive.namelist() if ".dist-info/" not in n}
        found[wheel.name] = names
    return found


def _build_wheels(source: Path, out: Path, command: str) -> dict[str, set[str]]:
    """The build stage's `pip wheel` command, run in `source` (offline: no build isolation)."""
    words = shlex.split(command)
    assert words[:2] == ["pip", "wheel"], command
    words = [out.as_posix() if w == "/wheels" else w for w in words]
    subprocess.run(
        [sys.executable, "-m", *words, "-q", "--no-build-isolation"], cwd=source, check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip
    return _wheel_files(out)


def test_build_stage_builds_both_wheels_from_the_context_alone(tmp_path: Path) -> None:
    """What reaches the builder is enough: the wheels built from it hold the same files as
    wheels built from the whole checkout."""
    (build, _runtime) = dockerfile()[1]
    (wheel_run,) = [r for r in build.all("RUN") if "pip wheel" in r.text]
    command = wheel_run.text.split("&&")[0].strip()
    context = tmp_path / "context"
    for relative in context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT, checkout, symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "*.egg-info",
                                      "__pycache__", ".*cache", "third_party", ".hypothesis"),
    )  # fmt: skip
    from_context = _build_wheels(context, tmp_path / "wheels-context", command)
    from_checkout = _build_wheels(checkout, tmp_path / "wheels-checkout", command)
    assert sorted(from_context) == [
        "gemini_grpc_gateway-0.1.0-py3-none-any.whl",
        "gemini_grpc_gateway_client-0.1.0-py3-none-any.whl",
    ]
    assert from_context == from_checkout


# --- HEALTHCHECK ------------------------------------------------------------------------------


def healthcheck() -> tuple[dict[str, str], list[str]]:
    """(the HEALTHCHECK's options, its command) from the runtime stage."""
    (check,) = runtime().all("HEALTHCHECK")
    options_text, _, _ = check.text.partition("CMD ")
    options = dict(word.removeprefix("--").split("=", 1) for word in options_text.split())
    command = check.exec_form()
    assert command is not None, "exec form: no shell needed in the image"
    return options, command


def test_healthcheck_asks_the_grpc_health_service() -> None:
    options, command = healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "grpc_health.v1" in command[2] and "Check(" in command[2]
    assert "SERVING" in command[2]
    # A probe that cannot answer within Docker's timeout is killed, not "unhealthy" by itself:
    # the gRPC deadline must come first.
    assert "timeout=3" in command[2] and options["timeout"] == "5s"
    assert {"interval", "timeout", "start-period", "retries"} <= set(options)


async def _run_healthcheck(port: int) -> tuple[int, float, str]:
    _options, command = healthcheck()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_")}
    env["GEMINI_GATEWAY_PORT"] = str(port)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command[1:], env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, time.monotonic() - started, output.decode()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(
        upstream="emulator", port=0, store_url=f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    )
    gw = await start_gateway(settings)
    try:
        yield gw
    finally:
        await gw.stop(0)


async def test_healthcheck_is_healthy_while_serving_and_not_while_draining(
    gateway: Gateway,
) -> None:
    status, _took, output = await _run_healthcheck(gateway.port)
    assert status == 0, output
    await gateway.health.enter_graceful_shutdown()  # what SIGTERM does first
    status, _took, output = await _run_healthcheck(gateway.port)
    assert status == 1, output


async def test_healthcheck_is_unhealthy_when_nothing_listens() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, took, output = await _run_healthcheck(port)
    assert status == 1, output
    assert took < 5, f"took {took:.1f} s, beyond the HEALTHCHECK's --timeout"


def test_dockerfile_says_how_to_build_it() -> None:
    assert "docker build -f deploy/Dockerfile -t gemini-gateway:0.1.0 ." in DOCKERFILE.read_text()
