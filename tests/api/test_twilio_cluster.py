"""The Twilio-compatible Message list on a real 3-master Redis Cluster: the SMS log
merges two profiles whose keys live on different masters, and the official `twilio`
SDK pages it forward and back (tests/cluster.py starts the masters)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from router.config import parse_settings

from ..cluster import cluster_running, cluster_unsupported
from ..conftest import NUMBERS, Provider, RunningDaemon, config_dict, wait_for
from .test_api_twilio import ACCOUNT, TOKEN, UK, _is, _sids, _status, sdk, started

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]


async def test_the_sdk_pages_the_log_of_profiles_on_different_masters(
    tmp_path: Path, provider: Provider, run_daemon: Callable[..., RunningDaemon]
) -> None:
    with cluster_running(tmp_path / "cluster") as nodes:
        data = config_dict(nodes.url, provider.url)
        # otp and promo hash to slots 3408 and 9726: different masters.
        data["profiles"] = {"otp": data["profiles"]["alerts"], "promo": data["profiles"]["bulk"]}
        data["router"]["state_dir"] = str(tmp_path / "var")
        data["api"] = {
            "listen": "127.0.0.1:0",
            "twilio": {"account_sid": ACCOUNT, "auth_token": TOKEN},
        }
        running = run_daemon(parse_settings(data, env={}, base_dir=tmp_path))
        try:
            client = sdk(await started(running))
            sids = []
            for i in range(6):
                route = {"from_": NUMBERS[0]} if i % 2 else {"messaging_service_sid": "promo"}
                message = await asyncio.to_thread(
                    client.messages.create, to=UK if i % 2 else NUMBERS[2], body="x", **route
                )
                sids.append(message.sid or "")
            for sid in sids:
                await wait_for(lambda sid=sid: _is(_status(client, sid), "sent"), 20, sid)

            everything = _sids(await asyncio.to_thread(client.messages.list))
            assert sorted(everything) == sorted(sids)
            assert set(_sids(await asyncio.to_thread(client.messages.list, from_=UK))) == set(
                sids[0::2]
            )
            page = await asyncio.to_thread(client.messages.page, page_size=4)
            pages = [_sids(page)]
            while page.next_page_url:
                page = await asyncio.to_thread(page.next_page)
                pages.append(_sids(page))
            assert pages == [everything[:4], everything[4:]]
            back = await asyncio.to_thread(page.previous_page)
            assert _sids(back) == everything[:4] and back.previous_page_url is None
        finally:
            await running.stop()
