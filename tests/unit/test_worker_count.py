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


def _v1_limit(folder: Path, quota: int, period: int = 100_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_a_cgroup_v1_cpu_quota_caps_the_count(tmp_path: Path) -> None:
    """Hosts still on cgroup v1 (or hybrid): the cpu controller's own tree, cpu.cfs_quota_us."""
    affinity = len(os.sched_getaffinity(0))
    own = "12:memory:/kubepods/pod1/c1\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n"
    mount = tmp_path / "cpu,cpuacct"
    _v1_limit(mount, -1)  # the node: no quota
    _v1_limit(mount / "kubepods/pod1/c1", -1)
    assert usable_cores(tmp_path, own) == affinity
    _v1_limit(mount / "kubepods/pod1/c1", 150_000)  # 1.5 CPUs: two processes
    assert usable_cores(tmp_path, own) == min(affinity, 2)
    _v1_limit(mount / "kubepods", 50_000)  # a parent's half CPU: one
    assert usable_cores(tmp_path, own) == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_a_container_that_sees_its_cgroup_at_the_mount_reads_it_there(tmp_path: Path) -> None:
    """Without a cgroup namespace the path names the host's tree, which the container's
    mount does not hold: the mount itself is the container's cgroup."""
    own = "3:cpu:/kubepods/pod1/c1\n"
    _v1_limit(tmp_path / "cpu", 100_000)
    assert usable_cores(tmp_path, own) == 1
    # Lines that are no cgroup entry, or name no CPU controller, change nothing.
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path, "garbage\n5:memory:/x\n") == affinity
    assert usable_cores(tmp_path / "absent", own) == affinity
