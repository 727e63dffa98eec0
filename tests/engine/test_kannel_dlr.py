"""Kannel's dlr-url (issue 20): a message sent through sendsms with ``dlr-mask`` and
``dlr-url`` has each status change the mask asks for fetched from the dlr-url, with
Kannel's escape codes filled in as Kannel 1.4.5's smsbox fills them
(gw/urltrans.c, gw/dlr.c, gw/bb_smscconn.c).

The escape-code rules are checked alone; then end to end: the real daemon, real
Redis, the npm `smpp` package's SMSC (a peer we did not write) sending delivery
receipts, a real HTTP provider refusing a message, and an HTTP server recording the
GETs an application would get."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from yarl import URL

from router import Client
from router.config import Settings, parse_settings
from router.engine.callbacks import (
    DLR_FAIL,
    DLR_SMSC_FAIL,
    DLR_SMSC_SUCCESS,
    DLR_SUCCESS,
    fill_escapes,
    kannel_get_url,
    kannel_report_text,
    kannel_target,
    kannel_type,
    kannel_url,
)
from router.store.ledger import Ledger

from ..binds.test_smpp_flow import smpp_config
from ..conftest import NUMBERS, Provider, RunningDaemon, number_tables, serve_app, wait_for
from ..peers.peer import NodeSmsc

TOKEN = "kannel-app-token-0123456789"
WEB_NUMBER = "+447700900123"

# ---------------------------------------------------------------------------------------
# The escape codes alone.


def test_codes_known_at_submission_are_filled_first_and_the_rest_later() -> None:
    pattern = "http://app/dlr?t=%d&to=%p&q=%q&from=%P&lit=%%p&x=%Z&s=%A"
    first = fill_escapes(pattern, {"p": "0044+1", "q": "%2B44+1"}, final=False)
    # Filled now; '%' of a value doubled so the final fill gives it back; the rest kept.
    assert first == "http://app/dlr?t=%d&to=0044+1&q=%%2B44+1&from=%P&lit=%%p&x=%Z&s=%A"
    done = fill_escapes(first, {"d": "8", "P": "%2B1650"}, text="ACK/")
    assert done == "http://app/dlr?t=8&to=0044+1&q=%2B44+1&from=%2B1650&lit=%p&x=%Z&s=ACK%2F"


def test_text_codes_read_the_report_as_kannel_reads_a_message() -> None:
    text = "id:7 stat:DELIVRD a*b"
    filled = fill_escapes("%k|%s|%S|%r|%a|%b|%e|%v|%#smpp#x#|end%", {}, text=text)
    assert filled == (
        "id%3A7|stat%3ADELIVRD|a~b||id%3A7+stat%3ADELIVRD+a*b|id%3A7+stat%3ADELIVRD+a*b|"
        + text.encode().hex().upper()
        + "|||end%"
    )


@pytest.mark.parametrize(
    ("status", "extra", "mask", "expected"),
    [
        ("sent", {}, 31, DLR_SMSC_SUCCESS),
        ("sent", {}, 1 | 2 | 16, None),
        ("delivered", {"stat": "DELIVRD"}, 1, DLR_SUCCESS),
        ("delivered", {"stat": "DELIVRD"}, 2 | 8, None),
        ("undelivered", {"stat": "UNDELIV"}, 2, DLR_FAIL),
        ("failed", {"stat": "REJECTD"}, 2, DLR_FAIL),  # a receipt said so
        ("failed", {}, 16, DLR_SMSC_FAIL),  # the SMSC or provider refused it
        ("failed", {}, 2, DLR_SMSC_FAIL),  # Kannel sends 16 to a mask with 2 too
        ("rejected", {}, 16, DLR_SMSC_FAIL),  # our rules
        ("expired", {}, 18, DLR_SMSC_FAIL),
        ("failed", {}, 1 | 8, None),
        ("queued", {}, 31, None),
        ("sending", {}, 31, None),
        ("scheduled", {}, 31, None),
    ],
)
def test_report_types_and_the_mask(
    status: str, extra: dict[str, str], mask: int, expected: int | None
) -> None:
    assert kannel_type({"status": status, **extra}, mask) == expected


def test_report_texts() -> None:
    assert kannel_report_text({"status": "sent"}, DLR_SMSC_SUCCESS) == "ACK/"
    refused = {"status": "failed", "error_code": "http_400", "note": "http 400: bad"}
    assert kannel_report_text(refused, DLR_SMSC_FAIL) == "NACK/http_400/http 400: bad"
    receipt = {"provider_message_id": "1F", "stat": "UNDELIV", "err": "001", "at": "0"}
    assert kannel_report_text(receipt, DLR_FAIL) == (
        "id:1F sub:001 dlvrd:000 submit date:7001010000 done date:7001010000 "
        "stat:UNDELIV err:001 text:"
    )


def test_the_marker_round_trips_and_a_plain_url_is_not_kannel() -> None:
    url = kannel_url("http://app/dlr?x=%d#frag", 19)
    assert kannel_target(url) == ("http://app/dlr?x=%d#frag", 19)
    assert kannel_target("http://app/status") is None
    assert kannel_target("http://app/status#kannel-dlr-mask=x") is None
    # A change the mask does not ask for gives no url; one it asks for, a safe url.
    assert kannel_get_url("http://app/?t=%d", 1, {"status": "sent"}) is None
    got = kannel_get_url("http://app/?t=%d&a=%A&sp=a b", 8, {"status": "sent", "at": "5"})
    assert got == "http://app/?t=8&a=ACK%2F&sp=a%20b"


# ---------------------------------------------------------------------------------------
# End to end.


class DlrApp:
    """An application's dlr-url endpoint: records every GET's raw query."""

    def __init__(self) -> None:
        self.url = ""
        self.gets: list[str] = []

    async def take(self, request: web.Request) -> web.Response:
        self.gets.append(request.rel_url.raw_query_string)
        return web.Response(text="ok")

    def reports(self, job_id: str) -> list[dict[str, str]]:
        """The GETs for one message, each query decoded (one value per name)."""
        found = []
        for raw in self.gets:
            query = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            if query.get("id") == job_id:
                found.append(query)
        return found


@pytest.fixture
async def dlr_app() -> AsyncIterator[DlrApp]:
    app_ = DlrApp()
    app = web.Application()
    app.router.add_get("/dlr", app_.take)
    runner, base = await serve_app(app)
    app_.url = f"{base}/dlr"
    yield app_
    await runner.cleanup()


def dlr_settings(redis_url: str, tmp: Path, smpp_port: int, provider_url: str) -> Settings:
    """Profile `sms` (global) on the npm SMSC as a transceiver, profile `web` on the
    HTTP provider (numbers of +1408 blocked), and the account `app`."""
    data = smpp_config(redis_url, tmp, smpp_port, smpp={"bind": "transceiver"})
    data.update(number_tables([*NUMBERS, WEB_NUMBER]))
    data["profiles"]["web"] = {
        "protocol": "http",
        "numbers": [WEB_NUMBER],
        "blocklist": ["+1408"],
        "http": {
            "url": provider_url,
            "form": {"from": "{from}", "to": "{to}", "text": "{text}", "ref": "{id}"},
            "message_id": "json:id",
            "timeout": 5,
        },
    }
    data["api"] = {"listen": "127.0.0.1:0"}
    data["accounts"] = {"app": {"api_token": TOKEN}}
    return parse_settings(data, env={}, base_dir=tmp)


async def _send(base: str, **variables: str) -> str:
    """sendsms with `variables` (values URL-encoded here, as an application would);
    the job id of its one receiver."""
    query = "&".join(f"{k.replace('_', '-')}={quote(v, safe='')}" for k, v in variables.items())
    url = URL(f"{base}/cgi-bin/sendsms?username=app&password={TOKEN}&{query}", encoded=True)
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        assert (reply.status, await reply.text()) == (202, "0: Accepted for delivery")
        return reply.headers["X-Message-Ids"]


PATTERN = (
    "?id=%I&type=%d&to=%p&q=%q&from=%P&Q=%Q&at=%T&text=%A&smsc=%i&fid=%F&user=%n"
    "&when=%t&keep=yes%2Bno"
)


async def test_dlr_url_gets_each_report_the_mask_asks_for(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    node_smsc: NodeSmsc,
    provider: Provider,
    dlr_app: DlrApp,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    settings = dlr_settings(redis_url, tmp_path, node_smsc.smpp_port, provider.url)
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    url = dlr_app.url + PATTERN

    # Delivered, all types asked: 8 (the SMSC took it), then 1. The receiver as the
    # application wrote it (00...), the sender given.
    delivered = await _send(base, to="00447911123456", text="hello", dlr_mask="31",
                            dlr_url=url, **{"from": "14082223333"})  # fmt: skip
    await wait_for(lambda: len(dlr_app.reports(delivered)) == 2, 20, "two reports")
    sent, done = dlr_app.reports(delivered)
    assert (sent["type"], done["type"]) == ("8", "1")
    for got in (sent, done):
        assert (got["to"], got["q"]) == ("00447911123456", "+447911123456")
        assert (got["from"], got["Q"]) == ("14082223333", "14082223333")
        assert (got["smsc"], got["user"], got["keep"]) == ("sms", "app", "yes+no")
        assert got["at"].isdigit() and int(got["at"]) > 1_000_000_000
    assert sent["text"] == "ACK/"
    record = await Ledger(redis, retention=60, events_maxlen=10).get(delivered)
    assert record is not None and record["status"] == "delivered"
    pmid = record["provider_message_id"]
    assert sent["fid"] == pmid and done["fid"] == pmid
    assert done["text"].startswith(f"id:{pmid} sub:001 dlvrd:001 submit date:")
    assert done["text"].endswith(" stat:DELIVRD err:000 text:")
    assert len(done["when"]) == 19 and done["when"][10] == " "  # YYYY-MM-DD HH:MM:SS

    # Undelivered, only final phone reports asked (1+2): no 8, then 2. No sender
    # given: %P is the number the profile picked, E.164.
    await node_smsc.configure(stat="UNDELIV")
    undelivered = await _send(base, to="447911123456", text="hi", dlr_mask="3", dlr_url=url)
    await wait_for(lambda: dlr_app.reports(undelivered), 20, "the undelivered report")
    await asyncio.sleep(0.3)
    [report] = dlr_app.reports(undelivered)
    assert report["type"] == "2" and report["from"] in NUMBERS
    assert report["Q"] == report["from"]
    assert "stat:UNDELIV" in report["text"]

    # A mask that asks only for delivery gets nothing for an undelivered message.
    silent = await _send(base, to="447911123456", text="hi", dlr_mask="1", dlr_url=url)

    async def final() -> bool:
        record = await Ledger(redis, retention=60, events_maxlen=10).get(silent)
        return record is not None and record["status"] == "undelivered"

    await wait_for(final, 20, "undelivered")

    # Refused by the provider (HTTP 400) and refused by the rules (blocklist): 16.
    provider.script.append(400)
    failed = await _send(base, to="447911123456", text="no", dlr_mask="16", dlr_url=url,
                         smsc="web")  # fmt: skip
    blocked = await _send(base, to="14082223333", text="no", dlr_mask="18", dlr_url=url,
                          smsc="web")  # fmt: skip
    await wait_for(lambda: dlr_app.reports(failed) and dlr_app.reports(blocked), 20, "16s")
    [refused] = dlr_app.reports(failed)
    assert refused["type"] == "16" and refused["text"].startswith("NACK/http_400")
    assert refused["smsc"] == "web" and refused["from"] == WEB_NUMBER
    [ruled] = dlr_app.reports(blocked)
    assert ruled["type"] == "16" and ruled["text"].startswith("NACK/")
    await asyncio.sleep(0.3)
    assert dlr_app.reports(silent) == []
    # Every GET came to the path the application gave, with its own query kept.
    assert all("keep=yes%2Bno" in q for q in dlr_app.gets)
    assert all(urlsplit(dlr_app.url).path == "/dlr" for _ in dlr_app.gets)


async def test_a_json_status_callback_is_still_posted(
    redis: Redis, redis_url: str, tmp_path: Path, node_smsc: NodeSmsc, provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:  # fmt: skip
    """A job without the Kannel mark keeps the JSON POST (the poster's two ways)."""
    posted: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", take)
    runner, base = await serve_app(app)
    try:
        settings = dlr_settings(redis_url, tmp_path, node_smsc.smpp_port, provider.url)
        job = await Client.from_settings(redis, settings).send(
            "+447911123456", "json", status_callback_url=f"{base}/status"
        )
        run_daemon(settings)
        await wait_for(
            lambda: {"sent", "delivered"} <= {p["status"] for p in posted if p["id"] == job},
            20,
            "JSON callbacks",
        )
    finally:
        await runner.cleanup()
