"""Several gateway processes on one port: `gemini-gateway serve --workers N`.

The parent (`supervise`) makes the start-up checks once (settings, TLS files, port, store,
credentials), picks the port when given 0, starts the embedded emulator and the metrics server,
then runs N workers. A worker is `python -m gemini_gateway.server.workers INDEX`: a fresh
interpreter (grpc and fork do not mix), a whole gateway with its own event loop, upstream pool
and recorder, bound to the shared port with SO_REUSEPORT so that the kernel spreads incoming
connections across the workers. It reads its settings as one JSON line on stdin, prints READY
on stdout once it serves, drains on SIGTERM or SIGINT, and drains too when its stdin reaches
end of file: the parent has gone, even by SIGKILL, and no worker outlives it.

The parent forwards SIGTERM/SIGINT to every worker and exits once they have drained; a worker
that dies otherwise is started again after a back-off, and one that keeps dying within
STABLE_AFTER_S of starting makes the parent stop everything with a one-line message.

Metrics: the workers write prometheus-client's multiprocess files to a fresh folder
(PROMETHEUS_MULTIPROC_DIR, set for them only) and the parent's /metrics serves their sum.

Per-project limits: with any configured, the parent makes a limits ledger in that folder
(limits_ledger.py), its path the worker's second argument, and the workers keep the limits
together in it; the parent forgets the calls in flight of a worker that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

from gemini_gateway.server import startup
from gemini_gateway.server.config import Settings
from gemini_gateway.server.identity import CallerDirectory
from gemini_gateway.server.limits import create_ledger, open_ledger
from gemini_gateway.server.limits_ledger import LimitsLedger
from gemini_gateway.server.log_format import configure_logging
from gemini_gateway.server.startup import StartupError

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
READY = b"gemini-gateway-worker-ready"
# Longest a worker may take to serve after it was started.
START_TIMEOUT_S = 60.0
# A worker that dies sooner than this after it started serving counts as failing at start.
STABLE_AFTER_S = 10.0
# Back-off before a restart: doubled for each failure at start in a row, up to the maximum.
RESTART_DELAY_S = 0.5
RESTART_DELAY_MAX_S = 10.0
# Failures at start in a row after which the parent gives up.
MAX_START_FAILURES = 5
# Beyond shutdown_grace_s, what workers get to flush the recorder and close; then SIGKILL.
STOP_MARGIN_S = 10.0


def resolve_workers(settings: Settings) -> int:
    """The processes the settings ask for: `workers`, 0 being one per usable core; unset, one
    per core in production mode and 1 in development mode on loopback (or off Linux)."""
    workers = settings.workers
    if workers is None:
        development = CallerDirectory(settings).development_mode and startup.is_loopback(
            settings.host
        )
        if development or sys.platform != "linux":
            return 1
        workers = 0
    return workers if workers > 0 else usable_cores()


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup"), own_cgroups: str | None = None) -> int:
    """The cores this process may run on (its CPU affinity), capped by the CPU limits of its
    cgroup and those above it, cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`): in a
    container, its CPU limit rather than the node's cores. `own_cgroups` is the text of
    /proc/self/cgroup (read when not given)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if own_cgroups is None:
        try:
            own_cgroups = Path("/proc/self/cgroup").read_text()
        except OSError:
            return cores
    for quota, period in _cpu_quotas(cgroup_root, own_cgroups.splitlines()):
        if quota > 0 and period > 0:
            cores = min(cores, max(1, math.ceil(quota / period)))
    return cores


def _cpu_quotas(cgroup_root: Path, own: list[str]) -> Iterator[tuple[int, int]]:
    """(quota, period) in µs of each CPU limit set on the process's cgroups, v2 and v1."""
    for line in own:
        parts = line.split(":", 2)  # hierarchy id, controllers, path
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # v2: one tree, cpu.max = "quota period"
            for folder in _up_from(cgroup_root, path):
                try:
                    limit, period = (folder / "cpu.max").read_text().split()[:2]
                    if limit != "max":
                        yield int(limit), int(period)
                except (OSError, ValueError):
                    continue  # no limit there
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own tree
            mount = next(
                (cgroup_root / name for name in (controllers, "cpu", "cpu,cpuacct")
                 if (cgroup_root / name).is_dir()),
                None,
            )  # fmt: skip
            if mount is None:
                continue
            for folder in _up_from(mount, path):
                try:
                    quota_us = int((folder / "cpu.cfs_quota_us").read_text())  # -1: none
                    yield quota_us, int((folder / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue


def _up_from(mount: Path, path: str) -> list[Path]:
    """The process's cgroup folder under `mount` and each one above it, up to `mount`. In a
    container whose cgroup namespace hides the path, the mount itself is its cgroup."""
    group = mount / path.lstrip("/")
    if not group.is_dir():
        return [mount]
    return [folder for folder in (group, *group.parents) if folder.is_relative_to(mount)]


def worker_settings(
    settings: Settings, *, port: int, workers: int, upstream_url: str | None
) -> dict[str, Any]:
    """What a worker runs with: the parent's settings, its port and upstream, no metrics port."""
    data = settings.model_dump(mode="json", exclude={"api_key"})
    if settings.api_key is not None:
        data["api_key"] = settings.api_key.get_secret_value()
    data.update(port=port, workers=workers, metrics_port=None)
    if upstream_url is not None:
        data["upstream_url"] = upstream_url
    return data


def _free_port(host: str) -> int:
    """A port free on `host` now, for every worker to bind (port 0 would give each its own)."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address)
        return int(probe.getsockname()[1])


def _exit_text(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
        return f"was killed by signal {-status}"
    return f"exited with status {status}"


async def _preflight(settings: Settings) -> tuple[int, str | None]:
    """The checks each worker would make, made once: (the port to share, Vertex AI's URL)."""
    if sys.platform != "linux":
        raise StartupError(
            f"--workers {settings.workers} needs Linux, whose SO_REUSEPORT spreads connections "
            "across processes",
            "use --workers 1 (GEMINI_GATEWAY_WORKERS=1), and run one gateway per port",
        )
    startup.check_exposure(settings)
    startup.read_tls_files(settings)
    startup.check_port(settings.host, settings.port)
    port = settings.port or _free_port(settings.host)
    if settings.metrics_port is not None:
        startup.check_port(
            settings.host, settings.metrics_port, "the metrics server", "--metrics-port"
        )
    vertex_url = None
    if settings.upstream == "vertex":
        vertex_url = getattr(startup.vertex_flavour(settings), "base_url", "")
    startup.load_price_table(settings.price_table_file)
    store = await startup.open_store(settings.store_url)  # created and migrated once, here
    await store.close()
    return port, vertex_url


class _WorkerFailed(Exception):
    def __init__(self, index: int, pid: int, what: str) -> None:
        super().__init__(f"gateway worker {index} (pid {pid}) {what} before it served")
        self.pid = pid
        self.what = what


class Supervisor:
    """Runs `count` workers, restarts those that die, and stops them all on request."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        port: int,
        upstream_url: str | None,
        metrics_dir: str,
        registry: CollectorRegistry,
        ledger: LimitsLedger | None = None,
    ) -> None:
        self.count = count
        self.metrics_dir = metrics_dir
        self.ledger = ledger
        self.stopping = asyncio.Event()
        self.problem: StartupError | None = None
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        payload = worker_settings(settings, port=port, workers=count, upstream_url=upstream_url)
        self._payload = json.dumps(payload).encode() + b"\n"
        self._env = {**os.environ, MULTIPROC_ENV: metrics_dir}
        self._tasks: list[asyncio.Task[None]] = []
        self._relays: set[asyncio.Task[None]] = set()
        self._live = Gauge("gateway_workers", "Worker processes serving.", registry=registry)
        self._restarts = Counter(
            "gateway_worker_restarts",
            "Workers started again after dying unexpectedly.",
            registry=registry,
        )

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        """Start worker `index` and wait until it serves; _WorkerFailed if it does not."""
        ledger = () if self.ledger is None else (str(self.ledger.path),)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gemini_gateway.server.workers",
            str(index),
            *ledger,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )
        self.processes[index] = process
        assert process.stdin is not None and process.stdout is not None
        if self.stopping.is_set():
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionError):
            process.stdin.write(self._payload)
            await process.stdin.drain()
        stdout = process.stdout
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while (line := await stdout.readline()) and line.strip() != READY:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
        except TimeoutError:
            process.kill()
            await process.wait()
            what = f"did not serve within {START_TIMEOUT_S:.0f} s"
            raise _WorkerFailed(index, process.pid, what) from None
        if not line:
            raise _WorkerFailed(index, process.pid, _exit_text(await process.wait()))
        relay = asyncio.create_task(self._relay(stdout))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        return process

    @staticmethod
    async def _relay(stdout: asyncio.StreamReader) -> None:
        """Pass on what a serving worker prints (it prints nothing itself; libraries might)."""
        while line := await stdout.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    async def _keep(self, index: int, started: asyncio.Future[int]) -> None:
        """Keep worker `index` running until stopping; `started` gets its first pid or error."""
        failures = 0
        while True:
            try:
                process = await self._spawn(index)
            except _WorkerFailed as exc:
                self._forget(exc.pid, index)
                if not started.done():
                    started.set_exception(
                        StartupError(
                            str(exc),
                            "its lines above say why; --workers 1 runs the gateway in this "
                            "process, and --debug shows a traceback",
                        )
                    )
                    return
                if self.stopping.is_set():
                    return
                failures += 1
                what = exc.what
            else:
                serving_since = time.monotonic()
                if started.done():
                    log.info("gateway worker %d serving again (pid %d)", index, process.pid)
                else:
                    started.set_result(process.pid)
                self._live.inc()
                status = await process.wait()
                self._live.dec()
                self._forget(process.pid, index)
                if self.stopping.is_set():
                    return
                quick = time.monotonic() - serving_since < STABLE_AFTER_S
                failures = failures + 1 if quick else 0
                what = _exit_text(status)
                log.warning("gateway worker %d (pid %d) %s", index, process.pid, what)
            if failures >= MAX_START_FAILURES:
                self.problem = StartupError(
                    f"gateway worker {index} keeps dying: {failures} times in a row within "
                    f"{STABLE_AFTER_S:.0f} s of starting (last: it {what}); stopped the gateway",
                    "its log lines above say why; --workers 1 runs the gateway in one process",
                )
                self.stopping.set()
                return
            delay = min(RESTART_DELAY_S * 2**failures, RESTART_DELAY_MAX_S)
            log.warning("restarting gateway worker %d in %.1f s", index, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            self._restarts.inc()

    def _forget(self, pid: int, index: int) -> None:
        """What worker `index` (process `pid`, now dead) left: its live metrics, its calls."""
        multiprocess.mark_process_dead(pid, self.metrics_dir)
        if self.ledger is not None:
            self.ledger.forget(index)

    async def start(self) -> list[int] | None:
        """Start every worker: their pids, None if stopped meanwhile, or StartupError."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = [loop.create_future() for _ in range(self.count)]
        self._tasks = [
            asyncio.create_task(self._keep(index, future))
            for index, future in enumerate(futures, 1)
        ]
        waiting: set[asyncio.Future[Any]] = set(futures)
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            while waiting:
                done, _ = await asyncio.wait(
                    waiting | {stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return None
                for future in done:
                    waiting.discard(future)
                    future.result()  # raises the StartupError of a worker that failed
        finally:
            stopped.cancel()
        return [future.result() for future in futures]

    async def stop(self, grace: float) -> None:
        """SIGTERM to every worker (each drains for `grace`), SIGKILL to those still up after."""
        self.stopping.set()
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        if self._tasks:
            _done, late = await asyncio.wait(self._tasks, timeout=grace + STOP_MARGIN_S)
            if late:
                for index, process in self.processes.items():
                    if process.returncode is None:
                        log.warning("gateway worker %d did not stop: killing it", index)
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                await asyncio.wait(self._tasks)
        if self._relays:
            await asyncio.wait(self._relays, timeout=1)


async def supervise(settings: Settings, count: int) -> None:
    """Serve with `count` worker processes until SIGINT/SIGTERM, then drain them all."""
    from gemini_gateway.server.app import banner_text, target_of
    from gemini_gateway.server.console import with_console_default
    from gemini_gateway.server.flavours import make_flavour
    from gemini_gateway.server.metrics import serve_metrics

    settings = with_console_default(settings)
    port, upstream_base = await _preflight(settings)
    metrics_dir = tempfile.mkdtemp(prefix="gemini-gateway-metrics-")
    try:
        async with AsyncExitStack() as opened:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=metrics_dir)
            metrics_port = None
            if settings.metrics_port is not None:
                metrics_port = serve_metrics(settings.host, settings.metrics_port, registry)
            emulator_url = None
            if settings.upstream == "emulator" and not settings.upstream_url:
                from gemini_gateway.emulator.runner import start_emulator

                emulator = await start_emulator()  # one for all the workers
                opened.push_async_callback(emulator.close)
                emulator_url = emulator.url
            if upstream_base is None:
                upstream_base = getattr(make_flavour(settings, emulator_url), "base_url", "")
            ledger = create_ledger(Path(metrics_dir, "limits.ledger"), settings, count)
            if ledger is not None:
                opened.callback(ledger.close)
            supervisor = Supervisor(
                settings, count, port, emulator_url, metrics_dir, registry, ledger
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, supervisor.stopping.set)
            try:
                pids = await supervisor.start()
            except StartupError:
                await supervisor.stop(0)
                raise
            if pids is not None:
                target = target_of(settings.host, port)
                console = settings.console_port
                scheme = "http" if settings.tls_cert_file is None else "https"
                console_url = (
                    None if console is None else f"{scheme}://{target_of(settings.host, console)}/"
                )
                print(banner_text(settings, target, upstream_base, metrics_port, console_url))
                shown = ", ".join(str(pid) for pid in pids)
                print(f"  workers: {count} processes sharing the port (pids {shown})", flush=True)
                if ledger is not None:
                    print(f"  limits: kept by the {count} workers together", flush=True)
                await supervisor.stopping.wait()
            log.info("shutting down %d gateway workers", count)
            await supervisor.stop(settings.shutdown_grace_s)
            if supervisor.problem is not None:
                raise supervisor.problem
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


# --- a worker ---------------------------------------------------------------------------------


def _stop_when_parent_exits(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Block on stdin, which the parent holds open; at end of file, drain and exit.

    Reads the file descriptor itself: a daemon thread blocked inside sys.stdin's buffer
    would hold its lock when the interpreter shuts down.
    """
    with contextlib.suppress(OSError):
        while os.read(sys.stdin.fileno(), 4096):
            pass
    with contextlib.suppress(RuntimeError):  # the loop has already ended
        loop.call_soon_threadsafe(stop.set)


async def _serve_worker(settings: Settings, ledger: LimitsLedger | None) -> None:
    from gemini_gateway.server.app import start_gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=_stop_when_parent_exits, args=(loop, stop), daemon=True).start()
    gateway = await start_gateway(settings, limits_ledger=ledger)
    sys.stdout.buffer.write(READY + b"\n")
    sys.stdout.flush()
    await stop.wait()
    await gateway.stop()


def worker_main(index: int, ledger_path: str | None = None) -> None:
    line = b""
    while not line.endswith(b"\n") and (chunk := os.read(sys.stdin.fileno(), 65536)):
        line += chunk  # unbuffered: the rest of stdin is left to _stop_when_parent_exits
    if not line:
        sys.exit(1)  # the parent went away before it sent the settings
    settings = Settings(**json.loads(line))
    configure_logging(
        settings.log_level,
        settings.log_format,
        text_format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
        fields={"worker": index},
    )
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    ledger = None
    if ledger_path is not None:
        ledger = open_ledger(Path(ledger_path), settings, settings.workers or 1, index)
    try:
        run(_serve_worker(settings, ledger))
    except StartupError as exc:
        print(f"error: worker {index}: " + "\n  ".join(exc.lines), file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    worker_main(int(sys.argv[1]), *sys.argv[2:3])
