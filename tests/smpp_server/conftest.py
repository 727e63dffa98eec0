"""The SMPP server's fixtures: a configuration with accounts, and the server started
beside a real daemon (the daemon's own wiring of the server is the lead's step) on our
SMSC simulator, sharing a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router.config import Settings, parse_settings
from router.smpp_server import SmppServer
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import RunningDaemon

ACCOUNTS: dict[str, dict[str, Any]] = {
    "acme": {"smpp_password": "secret1", "max_binds": 3, "window": 100},
    "solo": {"smpp_password": "solo1", "max_binds": 1, "window": 5},
    "parts": {"smpp_password": "parts1", "long_messages": "parts"},
    "reader": {"smpp_password": "read1", "scopes": ["read"]},
    "quota": {"smpp_password": "quota1", "daily_quota": 3},
    "senders": {"smpp_password": "snd1", "senders": ["+16501112345"]},
    "http": {"api_token": "t" * 20},
}


def door_config(redis_url: str, tmp: Path, smsc_port: int, **server: Any) -> dict[str, Any]:
    data = smpp_config(redis_url, tmp, smsc_port, window=50, store_text=True)
    data["accounts"] = {name: dict(account) for name, account in ACCOUNTS.items()}
    data["smpp_server"] = {"listen": "127.0.0.1:0", "reassembly_timeout": 3, **server}
    return data


@dataclass
class Door:
    settings: Settings
    server: SmppServer
    redis: Redis
    daemon: RunningDaemon | None

    @property
    def port(self) -> int:
        return self.server.port


MakeDoor = Callable[..., Awaitable[Door]]


@pytest.fixture
async def make_door(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> AsyncIterator[MakeDoor]:
    """Start the SMPP server (and, with `daemon=True`, a daemon draining its jobs to
    the simulator); `accounts` and `server` change the configuration."""
    servers: list[SmppServer] = []

    async def make(
        *,
        daemon: bool = False,
        accounts: dict[str, dict[str, Any]] | None = None,
        **server: Any,
    ) -> Door:
        data = door_config(redis_url, tmp_path, smsc.port, **server)  # type: ignore[attr-defined]
        for name, changes in (accounts or {}).items():
            data["accounts"].setdefault(name, {}).update(changes)
        settings = parse_settings(data, env={}, base_dir=tmp_path)
        running = run_daemon(settings) if daemon else None
        smpp = SmppServer(settings, redis)
        await smpp.start()
        servers.append(smpp)
        return Door(settings, smpp, redis, running)

    yield make
    for smpp in servers:
        await smpp.stop(grace=1)
