"""Reload (SIGHUP): a new configuration applied to a running daemon, nothing lost."""

from __future__ import annotations

import asyncio
import copy
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router import Client
from router.daemon.daemon import Daemon
from router.daemon.reload import read_verdict
from router.policy.jobs import encode_job
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import Provider, wait_for
from .test_process import cli, write_config

WEB = "+447911123456"


def two_profiles(
    redis_url: str, tmp: Path, smsc: SmscSimulator, provider: Provider
) -> dict[str, Any]:
    data = smpp_config(redis_url, tmp, smsc.port)  # profile `sms`, global, SMPP
    data["profiles"]["web"] = {
        "protocol": "http",
        "window": 8,
        "numbers": [WEB],
        "http": {
            "url": provider.url,
            "form": {"from": "{from}", "to": "{to}", "text": "{text}", "ref": "{id}"},
            "message_id": "json:id",
        },
    }
    data["numbers"][WEB] = {"features": ["SmsSender", "InternationalSmsSender"]}
    return data


async def statuses(redis: Redis, ids: list[str]) -> Counter[str]:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    return Counter(r["status"] if r else "missing" for r in await ledger.find(ids))


@pytest.fixture
async def daemon_from(tmp_path: Path) -> AsyncIterator[Any]:
    running: list[tuple[Daemon, asyncio.Task[int]]] = []

    def start(path: Path) -> Daemon:
        from router.config import load_settings

        daemon = Daemon(load_settings(path), path)
        running.append((daemon, asyncio.create_task(daemon.run(install_signals=False))))
        return daemon

    yield start
    for daemon, task in running:
        if not task.done():
            daemon.request_stop()
            await asyncio.wait_for(task, 30)


async def test_reload_under_load_loses_nothing_and_keeps_the_session_bound(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    provider: Provider,
    daemon_from: Any,
) -> None:
    data = two_profiles(redis_url, tmp_path, smsc, provider)
    path = write_config(tmp_path / "router.toml", data)
    client = Client(redis, default_profile="sms", profiles=["sms", "web", "extra"])
    ids = await client.send_many([{"to": "+447700900123", "text": f"s{i}"} for i in range(3000)])
    ids += await client.send_many(
        [{"to": "+12125550123", "text": f"w{i}", "profile": "web"} for i in range(300)]
    )
    daemon = daemon_from(path)
    await wait_for(lambda: smsc.stats()["submits"] >= 300, 30, "sending under way")
    bind = daemon.runtimes["sms"].binds[0]

    new = copy.deepcopy(data)
    new["profiles"]["sms"]["window"] = 20  # adjusted in place: the session stays
    new["profiles"]["web"]["http"]["timeout"] = 7  # a new HTTP sender
    new["templates"] = {"hi": {"text": {"en": "Hello {name}", "es": "Hola {name}"}}}
    new["profiles"]["extra"] = {
        **copy.deepcopy(new["profiles"]["web"]),
        "numbers": ["+447911123457"],
    }
    new["numbers"]["+447911123457"] = {"features": ["SmsSender", "InternationalSmsSender"]}
    write_config(path, new)
    daemon.hang_up()
    await wait_for(lambda: daemon.reloads == 1, 30, "reloaded")

    assert daemon.runtimes["sms"].binds[0] is bind and bind.ready and bind.window == 20
    assert smsc.stats()["binds"] == 1  # never bound again
    assert set(daemon.runtimes) == {"sms", "web", "extra"}
    [extra] = await client.send_many(
        [
            {
                "to": "+12125550123",
                "template": "hi",
                "vars": {"name": "Ana"},
                "lang": "es",
                "profile": "extra",
            }
        ]
    )

    async def done() -> bool:
        found = await statuses(redis, [*ids, extra])
        return found["sent"] + found["delivered"] == len(ids) + 1

    await wait_for(done, 60, "every message final")
    texts = {r["ref"]: r["text"] for r in provider.requests}
    assert texts[extra] == "Hola Ana"
    web_refs = Counter(r["ref"] for r in provider.requests if r["ref"] != extra)
    assert len(web_refs) == 300 and max(web_refs.values()) == 1  # none lost, none twice
    assert smsc.stats()["submits"] == 3000


async def test_a_broken_file_is_refused_and_the_old_configuration_stays(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    provider: Provider,
    daemon_from: Any,
) -> None:
    data = two_profiles(redis_url, tmp_path, smsc, provider)
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    await wait_for(lambda: daemon.runtimes and daemon.runtimes["sms"].binds[0].ready, 20)
    path.write_text(path.read_text() + '\n[profiles.bad]\nprotocol = "carrier-pigeon"\n')
    assert await daemon.reload() is False
    assert set(daemon.runtimes) == {"sms", "web"}
    verdict = await read_verdict(redis, "test")
    assert verdict is not None and not verdict.applied and verdict.config == str(path)
    assert "profiles.bad.protocol: must be 'http', 'smpp' or 'twilio'" in verdict.problems[0]
    client = Client(redis, default_profile="sms")
    [job] = await client.send_many([{"to": "+447700900123", "text": "still here"}])
    await wait_for(lambda: _final(redis, job), 20, "sent after a refused reload")


async def test_connection_changes_rebind_and_removed_profiles_retire(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    provider: Provider,
    daemon_from: Any,
) -> None:
    data = two_profiles(redis_url, tmp_path, smsc, provider)
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    await wait_for(lambda: daemon.runtimes and daemon.runtimes["sms"].binds[0].ready, 20)
    old = daemon.runtimes["sms"].binds[0]
    new = copy.deepcopy(data)
    new["profiles"]["sms"]["smpp"]["response_timeout"] = 2
    del new["profiles"]["web"]
    del new["numbers"][WEB]
    write_config(path, new)
    assert await daemon.reload() is True
    assert set(daemon.runtimes) == {"sms"}
    fresh = daemon.runtimes["sms"].binds[0]
    assert fresh is not old and not old.ready
    await wait_for(lambda: fresh.ready, 20, "bound again")
    assert smsc.stats()["binds"] == 2
    [job] = await Client(redis, default_profile="sms").send_many(
        [{"to": "+447700900123", "text": "after"}]
    )
    await wait_for(lambda: _final(redis, job), 20, "sent after rebinding")


async def test_sms_router_reload_reloads_the_daemons_own_file_and_reports_its_verdict(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, provider: Provider
) -> None:
    data = two_profiles(redis_url, tmp_path, smsc, provider)
    # The daemon runs on its own file, given relative to its folder; the operator's
    # shell is elsewhere, with another (valid) file that only says where Redis is.
    home = tmp_path / "etc"
    home.mkdir()
    path = write_config(home / "router.toml", data)
    mine = str(write_config(tmp_path / "mine.toml", data))
    log = tmp_path / "daemon.log"
    proc = await _start_daemon_in(home, "router.toml", log)
    try:
        await wait_for(lambda: redis.exists("sms:health:test"), 30, "the first health beat")
        with path.open("a") as file:
            file.write('\n[profiles.bad]\nprotocol = "carrier-pigeon"\n')
        code, out, err = await cli("reload", "-c", mine)
        assert code == 1, out + err
        assert f"runs on {path}" in err
        assert f"instance 'test' refused the reload; {path} has problems" in err
        assert "profiles.bad.protocol: must be 'http', 'smpp' or 'twilio'" in err
        assert b"reload refused" in log.read_bytes()

        data["profiles"]["web"]["window"] = 4
        write_config(path, data)
        code, out, err = await cli("reload", "-c", mine)
        assert code == 0, err
        assert out.splitlines() == [
            f"reloaded instance test (pid {proc.pid}) from {path}",
            "  profile web updated (binds rebuilt)",
        ]
        # Nothing answers a stopped process: a clear time-out, exit 1.
        proc.send_signal(signal.SIGSTOP)
        try:
            code, out, err = await cli("reload", "-c", mine, "--wait", "1")
        finally:
            proc.send_signal(signal.SIGCONT)
        assert code == 1 and f"no answer from instance 'test' (pid {proc.pid}) within 1s" in err
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not await redis.exists("sms:health:test")  # a stopped daemon removes it
    code, _, err = await cli("reload", "-c", mine)
    assert code == 1 and "no running daemon for instance 'test'" in err


async def _start_daemon_in(folder: Path, config: str, log: Path) -> asyncio.subprocess.Process:
    """`sms-router run -c CONFIG` started in `folder`, its output to `log`."""
    with log.open("ab") as handle:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "run", "-c", config,
            cwd=folder, stdout=handle, stderr=handle,
        )  # fmt: skip


async def _final(redis: Redis, job: str) -> bool:
    found = await statuses(redis, [job])
    return found["sent"] + found["delivered"] == 1


async def test_a_profile_added_by_reload_gets_its_reports_on_a_shared_connector(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, daemon_from: Any
) -> None:
    """Receipts on a `[connectors]` entry find the profiles running now, not only those
    of the start-up configuration (issue 19)."""
    data = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    sms = data["profiles"]["sms"]
    smpp = sms.pop("smpp")
    sms.pop("protocol")
    data["connectors"] = {"carrier": {"protocol": "smpp", "smpp": smpp}}
    data["routes"] = [{"connectors": ["carrier"]}]
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    await wait_for(lambda: any(c.ready for c in daemon.connectors), 20, "bound")
    new = copy.deepcopy(data)
    new["profiles"]["late"] = {"numbers": ["+447700900123"]}
    new["numbers"]["+447700900123"] = {"features": ["SmsSender", "InternationalSmsSender"]}
    write_config(path, new)
    assert await daemon.reload() is True
    client = Client(redis, default_profile="late")
    ids = await client.send_many([{"to": f"+4479111000{i:02d}", "text": "x"} for i in range(20)])

    async def delivered() -> bool:
        found = Counter(
            r["status"] for r in await Ledger(redis, retention=60, events_maxlen=10).find(ids) if r
        )
        return found["delivered"] == len(ids)

    await wait_for(delivered, 30, "the late profile's messages delivered")


async def test_the_recipient_index_follows_queue_recipient_index_on_reload(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    provider: Provider,
    daemon_from: Any,
) -> None:
    """Off by reload: neither the doors nor the workers index new records; on again:
    both do."""
    data = two_profiles(redis_url, tmp_path, smsc, provider)
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    await wait_for(lambda: daemon.runtimes and daemon.runtimes["sms"].binds[0].ready, 20)

    async def indexed() -> set[str]:
        found: set[str] = set()
        async for key in redis.scan_iter(match="sms:{sms}:to:*"):
            found |= {m.decode().rpartition("|")[2] for m in await redis.zrange(key, 0, -1)}
        return found

    async def send(tag: str) -> list[str]:
        client = Client.from_settings(redis, daemon.settings)
        [job] = await client.send_many([{"to": "+447700900123", "text": tag, "id": f"{tag}-d"}])
        plain = f"{tag}-x"
        await redis.xadd("sms:{sms}:q", {"job": encode_job({"id": plain, "to": "+447700900124",
                                                           "text": tag})})  # fmt: skip
        for one in (job, plain):
            await wait_for(lambda one=one: _final(redis, one), 20, f"{one} sent")  # type: ignore[misc]
        return [job, plain]

    first = await send("on")
    assert set(first) <= await indexed()
    data["queue"]["recipient_index"] = False
    write_config(path, data)
    assert await daemon.reload() is True
    off = await send("off")
    assert not set(off) & await indexed()
    data["queue"]["recipient_index"] = True
    write_config(path, data)
    assert await daemon.reload() is True
    again = await send("again")
    assert set(again) <= await indexed()
