"""The processes under test: the emulator and the gateways, started, probed and stopped.

Every gateway gets its own SQLite store in the run's temporary folder (never the user's
default data folder) and a Prometheus port, so the bench can read the recorder's counters
and, once the gateway has stopped and flushed, count the rows it wrote.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MODEL = "gemini-2.5-flash"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
# A gateway's own shutdown: in-flight calls get shutdown_grace_s (5 s), then the recorder
# writes what is queued (up to 10 s). Waiting less would kill it before its last batch.
GATEWAY_STOP_TIMEOUT_S = 20.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# One worker process, no access log, connections kept for the whole run: the cheapest
# fixed answer nginx gives. `return` works for POST and discards the request body.
_NGINX_CONFIG = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    keepalive_requests 1000000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def _nginx_string(answer: bytes) -> str:
    """JSON as the body of a single-quoted nginx string: compact, with no `$` (nginx would
    read a variable) and nginx's own escapes doubled."""
    text = json.dumps(json.loads(answer), separators=(",", ":")).replace("$", "\\u0024")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def find_tool(name: str) -> str | None:
    """An optional tool of the bench (h2load, nginx), also where root's PATH has it."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


class ServiceError(RuntimeError):
    """A process under test did not start, or died."""


@dataclass(frozen=True)
class Checkout:
    """A checkout of the project whose gateways the bench starts: its folder (the gateways'
    working directory) and the Python of its virtualenv, whose `gemini_gateway` is that
    folder's code."""

    root: Path
    python: str

    def describe(self) -> str:
        """The folder and its commit, e.g. `/src/before at 2bcf140` (`+ local changes` when
        the working tree differs from it)."""
        try:
            commit = _git(self.root, "rev-parse", "--short", "HEAD")
            changed = _git(self.root, "status", "--porcelain", "--untracked-files=no")
        except (OSError, subprocess.CalledProcessError):
            return f"{self.root} (commit unknown)"
        return f"{self.root} at {commit}{' + local changes' if changed else ''}"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


CURRENT = Checkout(REPO_ROOT, sys.executable)


def baseline_checkout(folder: Path) -> Checkout:
    """Another checkout of the project with its own virtualenv (`folder/.venv`), checked to
    run `folder`'s code: its `gemini_gateway.cli` must come from inside `folder`."""
    root = folder.resolve()
    python = root / ".venv" / "bin" / "python"
    if not python.is_file():
        raise ServiceError(f"{python} not found: the baseline needs its own virtualenv")
    probe = "import importlib.util; print(importlib.util.find_spec('gemini_gateway.cli').origin)"
    try:
        found = subprocess.run(
            [str(python), "-c", probe],
            cwd=root,
            env=_clean_env(root),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"{python} cannot import gemini_gateway.cli:\n{exc.stderr}") from exc
    if not Path(found).resolve().is_relative_to(root):
        raise ServiceError(
            f"{python} runs gemini_gateway from {found}, not from {root}: install the "
            f"checkout into its virtualenv (pip install -e {root})"
        )
    return Checkout(root, str(python))


# Ports handed out by free_port in this run: each goes to one child.
_HANDED_OUT: set[int] = set()
# How many ports below the kernel's ephemeral range free_port draws from.
PORT_SPAN = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: 32768 unless configured)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free port for a child to listen on, from just below the kernel's ephemeral range.

    A port the kernel hands out for port 0 comes from the ephemeral range, where every
    outgoing connection (the load generator's, the gateways' upstream pools) and any other
    program's port-0 bind takes its ports too: between this function closing its socket and
    the child binding the port, one of those could take it. Below the range nothing takes a
    port unless asked for it by number, so it stays free for the child. A random start keeps
    two runs at once apart; a port is never handed out twice in one run."""
    high = _ephemeral_low()
    low = max(1024, high - PORT_SPAN)
    start = random.randrange(low, high)
    for offset in range(high - low):
        port = low + (start - low + offset) % (high - low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue  # in use
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # none free below
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _clean_env(config_dir: Path) -> dict[str, str]:
    # Settings from the caller's shell or a gateway.toml would make runs incomparable.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_GATEWAY_", "GEMINI_EMULATOR_")) and key != "GEMINI_API_KEY"
    }
    env["GEMINI_GATEWAY_CONFIG"] = str(config_dir / "absent-gateway.toml")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    store_path: Path | None = None  # gateways: their SQLite file
    metrics_port: int | None = None  # gateways: Prometheus /metrics
    record_usage: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ServiceError(
                f"{self.name} exited with code {code}; last output:\n{self.log_tail()}"
            )


class Services:
    """Owns the child processes; leaving the `with` block always stops them."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gateway-bench-")
        self._dir = Path(self._tmp.name)
        self._env = _clean_env(self._dir)
        self.started: list[Service] = []

    @property
    def folder(self) -> Path:
        """The run's temporary folder, deleted when the services stop."""
        return self._dir

    def _popen(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> subprocess.Popen[bytes]:
        with (self._dir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                command,
                cwd=cwd,
                env={**self._env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches only the bench, which then stops the
                # children itself, in order, instead of racing their own shutdown.
                start_new_session=True,
            )

    def _spawn(
        self,
        name: str,
        args: list[str],
        port: int,
        env: dict[str, str] | None = None,
        checkout: Checkout = CURRENT,
    ) -> Service:
        process = self._popen(name, [checkout.python, *args], env, checkout.root)
        service = Service(name, process, port, self._dir / f"{name}.log")
        self.started.append(service)
        return service

    def start_python(self, name: str, args: list[str], port: int) -> Service:
        """`python ARGS` of this checkout, listening on `port` (e.g. a bench module's server)."""
        return self._spawn(name, args, port)

    def start_emulator(self, chunk_count: int = 3, chunk_delay_ms: float = 0) -> Service:
        port = free_port()
        args = [
            "-m",
            "gemini_gateway.emulator",
            "--port",
            str(port),
            "--chunk-count",
            str(chunk_count),
        ]
        args += ["--chunk-delay-ms", str(chunk_delay_ms)]
        return self._spawn("emulator", args, port)

    def start_gateway(
        self,
        name: str,
        http_client: str,
        upstream_url: str,
        *,
        record_usage: bool = True,
        logging: bool = False,
        workers: int = 1,
        env: dict[str, str] | None = None,
        checkout: Checkout = CURRENT,
    ) -> Service:
        """A gateway with default settings except the upstream, its own temporary store and
        a metrics port; `record_usage=False` turns the usage recorder off, `logging=True`
        logs every call (with a limit no bench run reaches), `workers` processes share the
        port; `env` adds settings (GEMINI_GATEWAY_* variables). `checkout` is the code it
        runs: its Python, in its folder, with the same arguments and settings; every option
        and setting used here exists in the gateways the bench compares."""
        port, metrics_port = free_port(), free_port()
        store_path = self._dir / f"{name}.db"
        settings = {"GEMINI_GATEWAY_STORE_URL": f"sqlite+aiosqlite:///{store_path}"}
        if not record_usage:
            settings["GEMINI_GATEWAY_RECORD_USAGE"] = "false"
        if logging:
            settings["GEMINI_GATEWAY_LOGGING_ENABLED"] = "true"
            settings["GEMINI_GATEWAY_LOG_MAX_LOGS"] = str(10**9)
        settings.update(env or {})
        args = ["-m", "gemini_gateway.cli", "serve", "--upstream", upstream_url, "--host", HOST]
        args += ["--port", str(port), "--http-client", http_client, "--log-level", "WARNING"]
        # The console on a free port rather than 8080, which other programs may be using.
        args += ["--metrics-port", str(metrics_port), "--console-port", "0"]
        args += ["--workers", str(workers)]
        service = self._spawn(name, args, port, settings, checkout)
        service.store_path = store_path
        service.metrics_port = metrics_port
        service.record_usage = record_usage
        return service

    def start_fixed_upstream(self, nginx: str, answer: bytes) -> Service:
        """nginx answering every request with `answer` (JSON): an upstream that costs next to
        no CPU, so that the gateway is what saturates the machine."""
        port = free_port()
        prefix = self._dir / "nginx"
        prefix.mkdir(exist_ok=True)
        config = prefix / "nginx.conf"
        config.write_text(
            _NGINX_CONFIG.format(prefix=prefix, port=port, body=_nginx_string(answer))
        )
        service = Service(
            "fixed-answer upstream (nginx)",
            self._popen("nginx", [nginx, "-p", str(prefix), "-c", str(config), "-e", "stderr"]),
            port,
            self._dir / "nginx.log",
        )
        self.started.append(service)
        return service

    def stop(self, service: Service, timeout_s: float = GATEWAY_STOP_TIMEOUT_S) -> int:
        """SIGTERM one service and wait for its own shutdown; returns its exit code."""
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
        try:
            return service.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
            raise ServiceError(
                f"{service.name} did not stop within {timeout_s:.0f}s after SIGTERM; "
                f"last output:\n{service.log_tail()}"
            ) from None

    def stop_all(self) -> None:
        for service in self.started:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for service in self.started:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.started.clear()
        self._tmp.cleanup()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_emulator_ready(service: Service, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll until the emulator answers a generateContent call with 200."""
    url = f"{service.url}/v1beta/models/{MODEL}:generateContent"
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "ready?"}]}]}).encode()
    deadline = time.monotonic() + timeout_s
    while True:
        service.check_alive()
        request = urllib.request.Request(
            url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"{service.name} answered HTTP {exc.code} to {url}") from exc
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise ServiceError(f"{service.name} not ready after {timeout_s:.0f}s")
        time.sleep(0.1)


def wait_gateway_ready(service: Service, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll the gRPC health service until the gateway reports SERVING."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(service.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            service.check_alive()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServiceError(f"{service.name} not SERVING after {timeout_s:.0f}s")
            time.sleep(0.1)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ServiceError(f"/proc/{pid}/status has no {field}")


def rss_mib(pid: int) -> float:
    """Resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    """Highest resident set size so far (VmHWM)."""
    return _status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all the process's threads."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may contain spaces; the numeric fields follow its closing ')'.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """The process's children, their children, and so on (a gateway's workers)."""
    found = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue  # the thread or process has just ended
            found += children
            pending += children
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the process and of each of its descendants now alive, by pid: a
    gateway with `--workers N` is a parent and N worker processes."""
    times = {}
    for member in [pid, *descendants(pid)]:
        try:
            times[member] = cpu_seconds(member)
        except OSError:
            pass  # ended between the listing and the read
    return times


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and all its descendants now alive."""
    return sum(tree_cpu(pid).values())


def machine_busy_seconds() -> float:
    """CPU time all the machine's cores have spent on anything but idling (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: everything but idle and iowait counts.
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLOCK_TICKS


def metric_samples(service: Service, timeout_s: float = 5.0) -> dict[str, float]:
    """The gateway's Prometheus samples, keyed `name{label="value",...}` (labels sorted)."""
    if service.metrics_port is None:
        raise ServiceError(f"{service.name} has no metrics port")
    url = f"http://{HOST}:{service.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError as exc:
        raise ServiceError(f"cannot read {url}: {exc}") from exc
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label values; 0 when it has none yet (a labelled
    counter only appears once a value of its label has been used)."""
    return sum(v for key, v in samples.items() if key == name or key.startswith(name + "{"))


def log_rows(store_path: Path) -> int:
    """Rows in request_logs of a stopped gateway's store."""
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM request_logs").fetchone()
    return int(count)


def usage_rows(store_path: Path) -> tuple[int, int]:
    """(rows in usage_events, rows among them with labels team=bench), read with sqlite3
    from a store whose gateway has stopped (so every batch is committed)."""
    if not store_path.exists():
        raise ServiceError(f"store {store_path} was not created")
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        total, labelled = db.execute(
            "SELECT count(*), "
            "coalesce(sum(json_extract(labels, '$.team') = 'bench'), 0) FROM usage_events"
        ).fetchone()
    return int(total), int(labelled)
