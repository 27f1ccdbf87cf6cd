"""How many gateway processes `serve` starts: `workers`, and its default by mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gemini_gateway.server.config import CallerConfig, ProjectConfig, Settings
from gemini_gateway.server.identity import token_sha256
from gemini_gateway.server.workers import resolve_workers, usable_cores

PROJECTS = {
    "team": ProjectConfig(callers=[CallerConfig(name="svc", token_sha256=token_sha256("t"))])
}
CORES = usable_cores()


def test_development_mode_on_loopback_runs_one_process() -> None:
    assert resolve_workers(Settings(host="127.0.0.1")) == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_production_mode_runs_one_process_per_core() -> None:
    assert resolve_workers(Settings(host="127.0.0.1", projects=PROJECTS)) == CORES
    exposed = Settings(host="0.0.0.0", allow_unauthenticated=True)
    assert resolve_workers(exposed) == CORES


def test_an_explicit_count_wins_and_zero_is_one_per_core() -> None:
    assert resolve_workers(Settings(host="127.0.0.1", workers=3)) == 3
    assert resolve_workers(Settings(host="127.0.0.1", projects=PROJECTS, workers=1)) == 1
    assert resolve_workers(Settings(host="127.0.0.1", workers=0)) == CORES


def _own_cgroup(root: Path) -> Path:
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    path = next((line[3:] for line in lines if line.startswith("0::")), "/")
    folder = root / path.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.skipif(not Path("/proc/self/cgroup").exists(), reason="Linux only")
def test_a_cgroup_cpu_limit_caps_the_count(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    group = _own_cgroup(tmp_path)
    (group / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity  # no limit
    (group / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two processes
    assert usable_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # a parent's half CPU: one
    assert usable_cores(tmp_path) == 1
