"""MMS end to end with the real daemon: a message with media goes as an MMS over a
Web-URL provider whose template carries ``{media_json}``, as an SMS with a short link
over SMPP (our SMSC simulator) when its number has no MmsSender (``mms_fallback =
"link"``: the link redirects to the media and its click is an event), or is refused
(``reject``, a toll-free or alphanumeric sender, media that fails its check)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from binds.smpp.codec import decode_text
from router import Client
from router.config import Settings, parse_settings
from router.links import find_urls
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..cli.test_cli_route import route
from ..conftest import Provider, RunningDaemon, free_port, wait_for
from ..policy import test_media
from ..policy.test_media import Serve, Site
from .test_process import write_config

serve = test_media.serve  # media servers on loopback addresses

READER = "r" * 32
TO = "+447911123456"
MMS_LONG = "+16501112345"  # MmsSender
SMS_LONG = "+14082223333"  # no MmsSender
STRICT = "+14155552671"  # no MmsSender, profile `strict` (reject)
TOLL_FREE = "+18005550100"
ALPHA = "ACME"


def mms_config(
    redis_url: str, tmp: Path, smsc_port: int, provider_url: str, api_port: int, media: str
) -> dict[str, Any]:
    """Connectors `smsc` (SMPP, the simulator) and `mmsprov` (Web-URL, media as JSON);
    MMS routed to `mmsprov`, the rest to `smsc`. Profiles `shop` (link fallback,
    shortened) and `strict` (reject). Media may be fetched from `media` (a network)."""
    campaign = {"brand": "Test", "status": "Confirmed", "tier": "StandardVolume"}
    intl = ["SmsSender", "InternationalSmsSender"]
    return {
        "router": {
            "redis": redis_url,
            "instance": "test",
            "shutdown_grace": 5,
            "state_dir": str(tmp / "var"),
            "media_allow_networks": [media],
            "media_timeout": 2,
        },
        "queue": {"retry_base": 0.05, "retry_max": 0.2, "schedule_poll": 0.05, "block_ms": 100},
        "campaigns": {"test": campaign},
        "numbers": {
            MMS_LONG: {"features": [*intl, "MmsSender"], "campaign": "test"},
            SMS_LONG: {"features": intl, "campaign": "test"},
            STRICT: {"features": intl, "campaign": "test"},
            TOLL_FREE: {"features": intl, "verified": True},
            ALPHA: {"features": ["SmsSender"]},
        },
        "connectors": {
            "smsc": {
                "protocol": "smpp",
                "smpp": {
                    "host": "127.0.0.1",
                    "port": smsc_port,
                    "system_id": "smppclient1",
                    "password": "password",
                    "response_timeout": 1,
                    "reconnect_max": 0.5,
                },
            },
            "mmsprov": {
                "protocol": "http",
                "http": {
                    "url": provider_url,
                    "form": {
                        "from": "{from}",
                        "to": "{to}",
                        "text": "{text}",
                        "media": "{media_json}",
                    },
                    "message_id": "json:id",
                },
            },
        },
        "routes": [
            {"kind": "mms", "connectors": ["mmsprov"]},
            {"connectors": ["smsc"]},
        ],
        "profiles": {
            "shop": {"numbers": [MMS_LONG, SMS_LONG], "shorten": True},
            "strict": {"numbers": [STRICT, TOLL_FREE, ALPHA], "mms_fallback": "reject"},
        },
        "links": {"base_url": f"http://127.0.0.1:{api_port}/l"},
        "api": {
            "listen": f"127.0.0.1:{api_port}",
            "keys": {"reader": {"token": READER, "scopes": ["read"]}},
        },
    }


async def _final(ledger: Ledger, ids: list[str]) -> list[dict[str, Any]]:
    async def done() -> bool:
        records = await ledger.find(ids)
        return all(r and r["status"] in ("sent", "delivered", "rejected") for r in records)

    await wait_for(done, 20, "records final")
    return [r for r in await ledger.find(ids) if r is not None]


@dataclass
class Running:
    """The daemon of `mms_config`, its media server (127.0.0.2, allowed) and a client."""

    settings: Settings
    client: Client
    port: int  # the API's
    site: Site


@pytest.fixture
async def running(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    provider: Provider,
    serve: Serve,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> Running:
    site = await serve("127.0.0.2")
    port = free_port()
    data = mms_config(redis_url, tmp_path, smsc.port, provider.url, port, "127.0.0.2/32")  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    run_daemon(settings)
    return Running(settings, Client.from_settings(redis, settings), port, site)


async def test_mms_goes_with_its_media_or_as_a_short_link_that_is_clicked(
    redis: Redis, smsc: SmscSimulator, provider: Provider, running: Running
) -> None:
    site, settings, client, port = running.site, running.settings, running.client, running.port
    media = [f"{site.base}/a.png", f"{site.base}/card.vcf"]
    mms_id, link_id, sms_id = await client.send_many(
        [
            {"to": TO, "text": "Your photo", "media": media, "profile": "shop"},
            {"to": TO, "text": "Your photo", "media": media[:1], "profile": "shop",
             "from": SMS_LONG},
            {"to": TO, "text": "plain text", "profile": "shop", "from": SMS_LONG},
        ]
    )  # fmt: skip
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    mms, link, sms = await _final(ledger, [mms_id, link_id, sms_id])

    # The MMS went to the provider that carries media, from the number that may send it.
    (request,) = provider.requests
    assert json.loads(request["media"]) == media and request["text"] == "Your photo"
    assert request["from"] == MMS_LONG
    assert (mms["status"], mms["mms"], mms["media"], mms["num_media"]) == ("sent", "mms", media, 2)
    assert mms["connector"] == "mmsprov"

    # The other number has no MmsSender: an SMS over SMPP with the media as a short link.
    assert link["status"] in ("sent", "delivered")
    assert (link["mms"], link["media"]) == ("link", media[:1])
    assert link["connector"] == "smsc"
    (note,) = [h["note"] for h in link["history"] if h["status"] == "sending"]
    assert note == f"MMS sent as SMS with links: {SMS_LONG} has no MmsSender feature"
    texts = {}
    for submit in smsc.submits:
        text, _ = decode_text(bytes.fromhex(submit["short_message"]), submit["data_coding"])
        texts[text.split("\n")[0]] = text
    short = texts["Your photo"]
    ((a, b),) = find_urls(short)
    assert short == f"Your photo\n{short[a:b]}" and short[a:b].startswith(
        str(settings.links.base_url)
    )
    assert link["text"] == short
    # A plain SMS is untouched: no media fields.
    assert sms["status"] in ("sent", "delivered") and "mms" not in sms and "media" not in sms

    api = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"{api}/v1/events", headers={"Authorization": f"Bearer {READER}"}
        ) as ws:
            await ws.send_json({"profile": "shop", "status": ["click"]})
            assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
            async with http.get(
                short[a:b], allow_redirects=False, headers={"User-Agent": "Phone/1.0"}
            ) as response:
                assert response.status == 302 and response.headers["Location"] == media[0]
            seen = await ws.receive_json(timeout=10)
    assert (seen["type"], seen["id"], seen["url"]) == ("click", link_id, media[0])


async def test_mms_refused_with_its_reason(
    redis: Redis, smsc: SmscSimulator, provider: Provider, serve: Serve, running: Running
) -> None:
    site, client = running.site, running.client
    elsewhere = await serve("127.0.0.1")  # not in media_allow_networks
    good = [f"{site.base}/a.png"]
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "no_mms_sender": ({"from": STRICT, "media": good}, "mms_not_supported",
                          f"{STRICT} has no MmsSender feature"),
        "toll_free": ({"from": TOLL_FREE, "media": good}, "mms_not_supported",
                      f"{TOLL_FREE} is toll-free (no MMS)"),
        "alphanumeric": ({"from": ALPHA, "media": good}, "mms_not_supported",
                         f"{ALPHA} is an alphanumeric sender ID (no MMS)"),
        "404": ({"media": [*good, f"{site.base}/gone.png"]}, "media_refused",
                f"media[1] {site.base}/gone.png: "),
        "html": ({"media": [f"{site.base}/page.html"]}, "media_refused",
                 "content type text/html is not"),
        "50 MB": ({"media": [f"{site.base}/huge.mp4"]}, "media_refused",
                  "(50.0 MB) is larger than the limit of 5,242,880 bytes"),
        "loopback": ({"media": [f"{elsewhere.base}/a.png"]}, "media_refused",
                     "127.0.0.1 is a loopback address"),
    }  # fmt: skip
    jobs = [{"to": TO, "text": "pic", "profile": "strict", **job} for job, _, _ in cases.values()]
    ids = await client.send_many(jobs)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    records = await _final(ledger, ids)
    for (name, (_job, code, reason)), record in zip(cases.items(), records, strict=True):
        assert record["status"] == "rejected", name
        assert record["error_code"] == code, (name, record["error"])
        assert reason in record["error"], (name, record["error"])
    assert not provider.requests and not smsc.submits
    # 127.0.0.1 was never asked; the allowed server only about what was checked.
    assert not elsewhere.seen


async def test_route_tells_how_an_mms_would_go(tmp_path: Path, redis_url: str) -> None:
    data = mms_config(redis_url, tmp_path, free_port(), "http://127.0.0.1:9/send", free_port(),
                      "127.0.0.2/32")  # fmt: skip
    config = write_config(tmp_path / "router.toml", data)
    code, out, err = await route(config, "--profile", "shop", "--to", TO, "--mms", "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["mms"] == {"as": "mms", "reason": ""}
    assert found["sender"]["candidates"] == [MMS_LONG] and found["connector"] == "mmsprov"
    code, out, err = await route(
        config, "--profile", "shop", "--to", TO, "--from", SMS_LONG, "--mms", "--json"
    )
    found = json.loads(out)
    assert code == 0 and found["connector"] == "smsc"
    assert found["mms"] == {"as": "link", "reason": f"{SMS_LONG} has no MmsSender feature"}
    code, out, err = await route(config, "--profile", "strict", "--to", TO, "--mms")
    assert code == 1
    assert "mms       refused (mms_fallback = reject):" in out
    assert f"rejected: mms_not_supported: profile 'strict' cannot send an MMS to {TO}:" in out
    code, out, err = await route(config, "--profile", "strict", "--to", TO)  # an SMS: sent
    assert code == 0 and "mms" not in out
