"""Shared fixtures: a real redis-server, a real HTTP provider, settings, a daemon.

Nothing here is a fake: Redis is a `redis-server` process on a free port, the
provider is an aiohttp server on another, and the daemon is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import settings
from redis.asyncio import Redis

from router.config import Settings, parse_settings
from router.daemon.daemon import Daemon
from sims.smscsim import SimConfig, SmscSimulator

from .peers.peer import node_smsc  # noqa: F401 - the npm SMPP peer fixture

# CI must not fail on a different random draw or a slow shared machine: property tests
# run the same examples every time (HYPOTHESIS_PROFILE=explore searches afresh).
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Run `app` on a free loopback port: its runner (clean it up) and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Receiver:
    """An application's status-callback endpoint (a real aiohttp server): the JSON
    bodies posted to it, in order."""

    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/status", found.handle)
    runner, base = await serve_app(app)
    found.url = f"{base}/status"
    yield found
    await runner.cleanup()


class RedisServer:
    """A real redis-server on a free port; a test may kill -9 it and start it again on
    the same port and files (with `appendonly`, what it acknowledged survives but the
    last second)."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        *,
        appendonly: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.appendonly = appendonly
        self.extra = extra  # more redis-server arguments (--replicaof for a replica)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH; run the tests through `make test`")
        durable = ("yes", "--appendfsync", "everysec") if self.appendonly else ("no",)
        # A short sync start of a child process before the test goes on.
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                *durable,
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the whole session, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on an empty database; emptied again afterwards."""
    client = Redis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@dataclass
class Provider:
    """A scriptable HTTP SMS provider: records requests, counts concurrency."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)  # statuses to answer, in order
    latency: float = 0.0
    in_flight: int = 0
    peak: int = 0
    counter: int = 0

    @property
    def refs(self) -> Counter[str]:
        return Counter(str(r.get("ref")) for r in self.requests if r["_status"] < 300)

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            body = dict(await request.post())
            if self.latency:
                await asyncio.sleep(self.latency)
            status = self.script.pop(0) if self.script else 200
            body["_status"] = status
            self.requests.append(body)
            if status >= 300:
                return web.json_response({"error": "scripted"}, status=status)
            self.counter += 1
            return web.json_response({"id": f"p-{self.counter}"}, status=status)
        finally:
            self.in_flight -= 1


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    """A real aiohttp server playing the SMS provider."""
    prov = Provider()
    app = web.Application()
    app.router.add_post("/send", prov.handle)
    runner, base = await serve_app(app)
    prov.url = f"{base}/send"
    try:
        yield prov
    finally:
        await runner.cleanup()


NUMBERS = ["+16501112345", "+14082223333", "+14155552671"]


def number_tables(numbers: list[str]) -> dict[str, Any]:
    """``campaigns`` and ``numbers`` tables for `numbers`: US long codes send only on a
    Confirmed 10DLC campaign, and the tests send between US and UK numbers, so every
    number may send abroad."""
    table: dict[str, Any] = {}
    for number in numbers:
        table[number] = {"features": ["SmsSender", "InternationalSmsSender"]}
        if number.startswith("+1"):
            table[number]["campaign"] = "test"
    campaign = {"brand": "Test", "status": "Confirmed", "tier": "StandardVolume"}
    return {"campaigns": {"test": campaign}, "numbers": table}


def config_dict(redis_url: str, provider_url: str, **profile: Any) -> dict[str, Any]:
    """A small valid configuration: profile `alerts` (global, http) and `bulk`."""
    alerts: dict[str, Any] = {
        "global": True,
        "protocol": "http",
        "processing": "async",
        "window": 8,
        "numbers": NUMBERS,
        "http": {
            "url": provider_url,
            "form": {"from": "{from}", "to": "{to}", "text": "{text}", "ref": "{id}"},
            "message_id": "json:id",
            "timeout": 5,
        },
    }
    alerts.update(profile)
    return {
        "router": {"redis": redis_url, "instance": "test", "shutdown_grace": 5},
        "queue": {
            "retry_base": 0.05,
            "retry_max": 0.2,
            "schedule_poll": 0.05,
            "block_ms": 100,
            "claim_idle": 2,
        },
        **number_tables([*alerts["numbers"], "+447911123456"]),
        "profiles": {
            "alerts": alerts,
            "bulk": {
                "protocol": "http",
                "numbers": ["+447911123456"],
                "http": dict(alerts["http"]),
            },
        },
    }


@pytest.fixture
def make_settings(redis_url: str, provider: Provider, tmp_path: Path) -> Callable[..., Settings]:
    def make(
        queue: dict[str, Any] | None = None,
        templates: dict[str, Any] | None = None,
        **profile: Any,
    ) -> Settings:
        data = config_dict(redis_url, provider.url, **profile)
        data["router"]["state_dir"] = str(tmp_path / "var")
        data["queue"].update(queue or {})
        if templates:
            data.setdefault("templates", {}).update(templates)
        return parse_settings(data, env={}, base_dir=tmp_path)

    return make


@pytest.fixture
def smsc_seed() -> int:
    """The simulator's random seed; a test module overrides this fixture for its own."""
    return 1


@pytest.fixture
async def smsc(smsc_seed: int) -> AsyncIterator[SmscSimulator]:
    """Our SMSC simulator on a free port (`smsc.port`)."""
    sim = SmscSimulator(SimConfig(seed=smsc_seed, receipt_delay=0.01))
    sim.port = await sim.start()  # type: ignore[attr-defined]
    yield sim
    await sim.close()


class RunningDaemon:
    """A daemon running in this event loop."""

    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon(settings)
        self.task = asyncio.create_task(self.daemon.run(install_signals=False))

    async def stop(self) -> int:
        self.daemon.request_stop()
        return await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def run_daemon() -> AsyncIterator[Callable[[Settings], RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(settings: Settings) -> RunningDaemon:
        running = RunningDaemon(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()


async def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on `port` now."""
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    return True


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    what: str = "",
) -> None:
    """Poll an async or plain predicate until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.05)
