"""Tracked links end to end: the real daemon sends over SMPP to our SMSC simulator with
its API listening; the SMSC gets the short link, ``GET`` on it answers 302, and the
click arrives on the websocket, at the status callback URL, in ``links stats`` and on
``/metrics``; API worker processes serve the links too; a reload turns shortening on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from binds.smpp.codec import count_segments, decode_text
from router import Client
from router.config import Settings, parse_settings
from router.daemon.daemon import Daemon
from router.links import Links, find_urls
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import Provider, Receiver, RunningDaemon, config_dict, wait_for
from .test_api_workers import free_port, with_workers
from .test_process import cli, write_config

READER = "r" * 32
TO = "+447911123456"
PLAIN = "+447700900123"
LONG_URL = "https://shop.example.com/orders/12345?tab=tracking&ref=" + "x" * 110


def links_config(
    redis_url: str, tmp: Path, smsc_port: int, api_port: int, callback: str
) -> dict[str, Any]:
    """Profile `sms` (SMPP, shorten on, status callbacks to `callback`) and `plain`
    (SMPP to the same SMSC, shorten off); the API on `api_port`, its /l the base_url."""
    data = smpp_config(redis_url, tmp, smsc_port, shorten=True, status_callback_url=callback)
    plain = {**data["profiles"]["sms"], "numbers": [PLAIN], "global": False}
    plain.pop("shorten")
    plain.pop("status_callback_url")
    data["profiles"]["plain"] = plain
    data["numbers"][PLAIN] = {"features": ["SmsSender", "InternationalSmsSender"]}
    data["links"] = {"base_url": f"http://127.0.0.1:{api_port}/l"}
    data["api"] = {
        "listen": f"127.0.0.1:{api_port}",
        "keys": {"reader": {"token": READER, "scopes": ["read"]}},
    }
    return data


def sent_texts(smsc: SmscSimulator) -> dict[str, str]:
    """Sender (as the SMSC got it: no '+') -> the text it received (one-part messages)."""
    out: dict[str, str] = {}
    for submit in smsc.submits:
        text, _ = decode_text(bytes.fromhex(submit["short_message"]), submit["data_coding"])
        out[submit["source"]] = text
    return out


async def test_a_link_is_sent_short_and_its_click_is_an_event(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    receiver: Receiver,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    port = free_port()
    data = links_config(redis_url, tmp_path, smsc.port, port, receiver.url)  # type: ignore[attr-defined]
    config = write_config(tmp_path / "router.toml", data)
    settings = parse_settings(data, env={})
    base = settings.links.base_url
    original = f"Your order shipped: {LONG_URL}. Thanks!"
    assert count_segments(original) == 2
    client = Client.from_settings(redis, settings)
    (short_id,) = await client.send_many([{"to": TO, "text": original}])
    (plain_id,) = await client.send_many([{"to": TO, "text": original, "profile": "plain"}])
    run_daemon(settings)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)

    async def both_sent() -> bool:
        records = await ledger.find([short_id, plain_id])
        return all(r and r["status"] in ("sent", "delivered") for r in records)

    await wait_for(both_sent, 20, "both sent")
    record = await ledger.get(short_id)
    assert record is not None
    texts = sent_texts(smsc)
    short = texts[record["from"].lstrip("+")]
    ((a, b),) = find_urls(short)
    code = short[a:b].removeprefix(f"{base}/")
    assert short == f"Your order shipped: {base}/{code}. Thanks!"
    # One part: the segments are the short text's, and the record keeps what was sent
    # (none of the longer original's pieces left behind).
    assert record["segments"] == 1 and record["text"] == short
    # The profile that does not shorten sent the text as written, in two parts.
    plain = await ledger.get(plain_id)
    assert plain is not None and plain["segments"] == 2 and plain["text"] == original
    assert sum(1 for s in smsc.submits if s["source"] == PLAIN.lstrip("+")) == 2

    api = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {READER}"}
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: _answers(http, f"{api}/healthz"), 10, "the API")
        async with http.ws_connect(f"{api}/v1/events", headers=headers) as ws:
            await ws.send_json({"profile": "sms", "status": ["click"]})
            assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
            async with http.get(
                f"{base}/{code}", allow_redirects=False, headers={"User-Agent": "Phone/1.0"}
            ) as response:
                assert response.status == 302
                assert response.headers["Location"] == LONG_URL
            seen = await ws.receive_json(timeout=10)
        assert seen["type"] == "click" and seen["status"] == "click"
        assert (seen["id"], seen["url"], seen["user_agent"]) == (short_id, LONG_URL, "Phone/1.0")
        assert isinstance(seen["at"], float) and seen["profile"] == "sms"
        # A link preview redirects too, and is no click.
        async with http.get(
            f"{base}/{code}", allow_redirects=False, headers={"User-Agent": "WhatsApp/2.23"}
        ) as response:
            assert response.status == 302
        async with http.get(f"{base}/{code[:-1]}x", allow_redirects=False) as response:
            assert response.status == 404
        await wait_for(lambda: any(p["status"] == "click" for p in receiver.got), 20, "callback")
        (posted,) = [p for p in receiver.got if p["status"] == "click"]
        assert (posted["id"], posted["url"], posted["user_agent"]) == (
            short_id,
            LONG_URL,
            "Phone/1.0",
        )
        assert "link" not in posted
        async with http.get(f"{api}/metrics") as response:
            metrics = await response.text()
    assert 'sms_router_clicks_total{profile="sms"} 1.0' in metrics
    assert 'sms_router_link_previews_total{profile="sms"} 1.0' in metrics
    assert 'sms_router_clicks_total{profile="plain"} 0.0' in metrics

    code_, out, errors = await cli("links", "stats", "-c", str(config))
    assert code_ == 0, errors
    assert "sms: 1 clicks" in out and short_id in out
    assert "plain: 0 clicks (shorten off)" in out
    code_, out, errors = await cli(
        "links", "stats", "-c", str(config), "--profile", "sms", "--json"
    )
    assert code_ == 0, errors
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["profile"] == "sms" and row["clicks"] == 1 and row["shorten"] is True
    assert row["top"] == [{"id": short_id, "clicks": 1}]
    code_, out, errors = await cli("check-config", "-c", str(config))
    assert code_ == 0 and f"shorten -> {base}/<code>" in out, errors


async def test_a_shortened_record_reads_as_sent(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    receiver: Receiver,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = links_config(redis_url, tmp_path, smsc.port, free_port(), receiver.url)  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    original = f"Your order shipped: {LONG_URL}. Thanks!"
    (job_id,) = await Client.from_settings(redis, settings).send_many(
        [{"to": TO, "text": original}]
    )
    run_daemon(settings)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)

    async def sent() -> bool:
        record = await ledger.get(job_id)
        return bool(record and record["status"] in ("sent", "delivered"))

    await wait_for(sent, 20, "sent")
    record = await ledger.get(job_id)
    assert record is not None
    assert record["text"] == sent_texts(smsc)[record["from"].lstrip("+")]


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_api_workers_serve_the_links(
    redis: Redis,
    provider: Provider,
    redis_url: str,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    port = free_port()
    data = with_workers(config_dict(redis_url, provider.url), port, workers=1)
    data["links"] = {"base_url": f"http://127.0.0.1:{port}/l"}
    settings = parse_settings(data)
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api_workers is not None, 30, "workers started")
    workers = running.daemon.api_workers
    assert workers is not None
    await wait_for(lambda: len(workers.pids) == 1, 30, "a worker")
    links = Links(redis, base_url=settings.links.base_url or "", profiles=settings.profiles)
    short = await links.shorten(
        "see https://example.com/w", message_id="w-1", profile="alerts", ttl=600
    )
    ((code, url),) = short.links
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: _answers(http, f"http://127.0.0.1:{port}/healthz"), 30, "listens")
        async with http.get(f"http://127.0.0.1:{port}/l/{code}", allow_redirects=False) as got:
            assert got.status == 302 and got.headers["Location"] == url
    clicks = await redis.hget("sms:{alerts}:stats", "clicks")
    assert clicks == b"1"


async def test_reload_turns_shortening_on(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    receiver: Receiver,
) -> None:
    from router.config import load_settings

    port = free_port()
    data = links_config(redis_url, tmp_path, smsc.port, port, receiver.url)  # type: ignore[attr-defined]
    data["profiles"]["sms"]["shorten"] = False
    del data["links"]
    path = write_config(tmp_path / "router.toml", data)
    daemon = Daemon(load_settings(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        client = Client.from_settings(redis, daemon.settings)
        ledger = Ledger(redis, retention=60, events_maxlen=1000)
        text = "Go to https://example.com/reload now"

        async def sent(job_id: str) -> dict[str, Any] | None:
            record = await ledger.get(job_id)
            return record if record and record["status"] in ("sent", "delivered") else None

        (before,) = await client.send_many([{"to": TO, "text": text}])
        await wait_for(lambda: sent(before), 20, "sent before the reload")
        assert (await ledger.get(before) or {})["text"] == text
        data["profiles"]["sms"]["shorten"] = True
        data["links"] = {"base_url": "https://s.example.com/l"}
        write_config(path, data)
        assert await daemon.reload() is True
        (after,) = await client.send_many([{"to": TO, "text": text}])
        await wait_for(lambda: sent(after), 20, "sent after the reload")
        shortened = (await ledger.get(after) or {})["text"]
        assert shortened.startswith("Go to https://s.example.com/l/") and shortened != text
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
