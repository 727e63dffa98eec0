"""Kannel's sendsms (issue 20): the requests of Kannel 1.4.5's user guide, answered as
Kannel answers them (its texts, status codes and headers, from gw/smsbox.c), against
the real daemon, real Redis and a real HTTP provider; the errors against the API
application alone (nothing may be enqueued for them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from redis.asyncio import Redis
from yarl import URL

from router.api.app import ApiServer, SendsmsServer
from router.api.common import ApiContext
from router.client import Client
from router.config import Settings, parse_settings
from router.store.ledger import Ledger

from ..conftest import NUMBERS, Provider, RunningDaemon, config_dict, wait_for

TOKEN = "kannel-shop-token-0123456789"
UK = "+447911123456"  # profile bulk's number, and a destination
ACCEPTED = "0: Accepted for delivery"
AUTH = "Authorization failed for sendsms"
Start = Callable[[Settings], RunningDaemon]


@dataclass
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    @property
    def ids(self) -> list[str]:
        return self.headers.get("X-Message-Ids", "").split()


def kannel_config(
    redis_url: str, provider_url: str, tmp: Path, accounts: dict[str, Any] | None = None
) -> Settings:
    data = config_dict(redis_url, provider_url)
    data["router"]["state_dir"] = str(tmp / "var")
    data["api"] = {"listen": "127.0.0.1:0"}
    data["sendsms"] = {"listen": "127.0.0.1:0"}
    data["accounts"] = accounts or {
        "shop": {"api_token": TOKEN},
        "reader": {"api_token": "r" * 20, "scopes": ["read"]},
        "bulkonly": {"api_token": "b" * 20, "profiles": ["bulk"], "senders": [UK]},
    }
    return parse_settings(data, env={}, base_dir=tmp)


async def call(
    base: str,
    query: str = "",
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/cgi-bin/sendsms",
) -> Reply:
    """One request, its query string sent exactly as written (already URL-encoded)."""
    url = URL(f"{base}{path}?{query}" if query else f"{base}{path}", encoded=True)
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, data=body, headers=headers) as reply:
            return Reply(reply.status, await reply.text(), dict(reply.headers))


def q(**variables: str) -> str:
    """Kannel's CGI variables, URL-encoded as an application encodes them."""
    return "&".join(f"{k.replace('_', '-')}={quote(v, safe='')}" for k, v in variables.items())


SHOP = f"username=shop&password={TOKEN}"


@pytest.fixture
async def daemon_base(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> AsyncIterator[str]:
    running = run_daemon(kannel_config(redis_url, provider.url, tmp_path))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    yield f"http://127.0.0.1:{running.daemon.api.port}"


def sent_to(provider: Provider, job_id: str) -> dict[str, Any] | None:
    return next((r for r in provider.requests if r.get("ref") == job_id), None)


async def test_user_guide_requests_are_sent_and_answered_accepted(
    daemon_base: str, provider: Provider, redis: Redis
) -> None:
    # The user guide's first example: one receiver, the text URL-encoded with '+'.
    reply = await call(daemon_base, f"{SHOP}&to=%2B447911123456&text=Hello+world")
    assert (reply.status, reply.text) == (202, ACCEPTED)
    # Kannel's reply headers, exactly.
    assert reply.headers["Content-Type"] == "text/html"
    assert reply.headers["Pragma"] == "no-cache" and reply.headers["Cache-Control"] == "no-cache"
    [job] = reply.ids
    await wait_for(lambda: sent_to(provider, job), 10, "sent")
    got = sent_to(provider, job)
    assert got is not None and (got["to"], got["text"]) == (UK, "Hello world")
    assert got["from"] in NUMBERS  # the global profile picked its sender
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job)
    assert record is not None and record["account"] == "shop"

    # Several receivers, space-separated ('+' in a URL): +, 00 and digits-only forms;
    # one written twice is sent once, as Kannel does. user/pass are the old names.
    many = "%2B447911123456+0016501112345+14082223333+%2B447911123456"
    reply = await call(daemon_base, f"user=shop&pass={TOKEN}&to={many}&text=Hi+all")
    assert (reply.status, reply.text) == (202, ACCEPTED) and len(reply.ids) == 3
    await wait_for(lambda: all(sent_to(provider, j) for j in reply.ids), 10, "all sent")
    receivers = [sent_to(provider, j)["to"] for j in reply.ids]  # type: ignore[index]
    assert receivers == [UK, "+16501112345", "+14082223333"]

    # A sender, and a receiver Kannel's sendsms-chars refuse left out of the others.
    query = q(to="447911123456 bad-number!", text="from me", **{"from": "14082223333"})
    reply = await call(daemon_base, f"{SHOP}&{query}")
    assert (reply.status, reply.text) == (202, ACCEPTED) and len(reply.ids) == 1
    await wait_for(lambda: sent_to(provider, reply.ids[0]), 10, "sent")
    got = sent_to(provider, reply.ids[0])
    assert got is not None and (got["from"], got["to"]) == ("+14082223333", UK)

    # smsc names a profile; validity and deferred are minutes.
    reply = await call(daemon_base, f"{SHOP}&{q(to=UK, text='bulk', smsc='bulk', priority='3')}")
    assert reply.status == 202
    await wait_for(lambda: sent_to(provider, reply.ids[0]), 10, "sent")
    assert sent_to(provider, reply.ids[0])["from"] == UK  # type: ignore[index]


async def test_text_in_any_charset_and_ucs2(daemon_base: str, provider: Provider) -> None:
    text = "Привет ✓ Grüße"
    ucs2 = quote(text.encode("utf-16-be"), safe="")
    utf8 = quote(text.encode(), safe="")
    cases = [
        f"coding=2&text={ucs2}",  # UCS-2 bytes, Kannel's default for coding 2
        f"coding=2&charset=UTF-8&text={utf8}",  # UTF-8 converted, as Kannel does
        f"text={utf8}",  # coding 0: UTF-8 by default
        f"coding=0&charset=UTF-16BE&text={ucs2}",
    ]
    ids = []
    for case in cases:
        reply = await call(daemon_base, f"{SHOP}&to=%2B447911123456&{case}")
        assert (reply.status, reply.text) == (202, ACCEPTED), case
        ids += reply.ids
    latin = await call(daemon_base, f"{SHOP}&to=%2B447911123456&charset=ISO-8859-1&text=Gr%FC%DFe")
    assert latin.status == 202
    await wait_for(lambda: all(sent_to(provider, j) for j in [*ids, *latin.ids]), 10, "sent")
    assert {sent_to(provider, j)["text"] for j in ids} == {text}  # type: ignore[index]
    assert sent_to(provider, latin.ids[0])["text"] == "Grüße"  # type: ignore[index]


async def test_posts_with_kannel_headers_xml_and_a_form(
    daemon_base: str, provider: Provider
) -> None:
    # Kannel's POST: the text is the body, everything else in X-Kannel-* headers.
    headers = {
        "Content-Type": "text/plain; charset=ISO-8859-1",
        "X-Kannel-Username": "shop",
        "X-Kannel-Password": TOKEN,
        "X-Kannel-To": "+447911123456 +16501112345",
        "X-Kannel-From": "+14082223333",
    }
    reply = await call(daemon_base, method="POST", body="Grüße".encode("latin-1"), headers=headers)
    assert (reply.status, reply.text) == (202, ACCEPTED) and len(reply.ids) == 2
    # The user guide's XML document, two <da> receivers, the text URL-encoded.
    xml = (
        '<?xml version="1.0"?><message><submit>'
        "<da><number>+447911123456</number></da><da><number>0016501112345</number></da>"
        "<oa><number>+14082223333</number></oa><ud>Hello+from+XML+%E2%9C%93</ud>"
        f"<from><username>shop</username><password>{TOKEN}</password></from>"
        "</submit></message>"
    )
    xml_reply = await call(daemon_base, method="POST", body=xml.encode(),
                           headers={"Content-Type": "text/xml"})  # fmt: skip
    assert (xml_reply.status, xml_reply.text) == (202, ACCEPTED) and len(xml_reply.ids) == 2
    # A form (Kannel answers it "Invalid content-type"; the router reads it).
    form = f"{SHOP}&{q(to=UK, text='from a form')}".encode()
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    form_reply = await call(daemon_base, method="POST", body=form, headers=form_type)
    assert (form_reply.status, form_reply.text) == (202, ACCEPTED)
    every = [*reply.ids, *xml_reply.ids, *form_reply.ids]
    await wait_for(lambda: all(sent_to(provider, j) for j in every), 10, "sent")
    texts = [sent_to(provider, j)["text"] for j in every]  # type: ignore[index]
    assert texts == ["Grüße", "Grüße", "Hello from XML ✓", "Hello from XML ✓", "from a form"]
    assert sent_to(provider, xml_reply.ids[1])["to"] == "+16501112345"  # type: ignore[index]
    # A POST without credentials in its headers is unauthorised, as in Kannel.
    bad = await call(daemon_base, method="POST", body=b"x", headers={"Content-Type": "text/plain"})
    assert (bad.status, bad.text) == (403, AUTH)


async def test_validity_and_deferred_are_minutes(
    daemon_base: str, provider: Provider, redis: Redis
) -> None:
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    later = await call(daemon_base, f"{SHOP}&{q(to=UK, text='later', deferred='5')}")
    expired = await call(daemon_base, f"{SHOP}&{q(to=UK, text='too late', validity='0')}")
    assert later.status == expired.status == 202

    async def status(job: str) -> str | None:
        record = await ledger.get(job)
        return None if record is None else str(record["status"])

    async def settled() -> bool:
        return await status(later.ids[0]) == "scheduled" and (
            await status(expired.ids[0]) == "expired"
        )

    await wait_for(settled, 10, "scheduled and expired")
    assert sent_to(provider, later.ids[0]) is None and sent_to(provider, expired.ids[0]) is None


# ---------------------------------------------------------------------------------------
# Errors, on the application alone: nothing is enqueued for any of them.


class Worker:
    """What readiness reads of a profile's worker."""

    def __init__(self, name: str, ready: bool) -> None:
        self.name = name
        self.ready = ready


@pytest.fixture
async def bare(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> AsyncIterator[tuple[str, ApiContext]]:
    """The API application alone (no daemon) on a free port: its base URL and context."""
    context = api_context(redis, kannel_config(redis_url, provider.url, tmp_path))
    server = ApiServer(context)
    await server.start()
    yield f"http://127.0.0.1:{server.port}", context
    await server.stop()


def api_context(redis: Redis, settings: Settings) -> ApiContext:
    return ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=1000),
        client=Client.from_settings(redis, settings),
    )


GOOD = q(to=UK, text="hi")
ERRORS = [
    # Kannel's own checks and texts (gw/smsbox.c), in its order: credentials first.
    (f"username=shop&password=wrong&{GOOD}", 403, AUTH),
    (f"username=nobody&password={TOKEN}&{GOOD}", 403, AUTH),
    (GOOD, 403, AUTH),
    (f"username=reader&password={'r' * 20}&{GOOD}", 403, AUTH),  # no send scope
    ("username=shop&password=wrong", 403, AUTH),
    (f"{SHOP}&text=hi", 400, "Missing receiver number, rejected"),
    (f"{SHOP}&to=&text=hi", 400, "Empty receiver number not allowed, rejected"),
    (f"{SHOP}&to=abc&text=hi", 400, "Number(s) has/have been denied by white- and/or black-lists."),
    (f"{SHOP}&{GOOD}&udh=%05%00%03%01", 400, "UDH field misformed, rejected"),
    (f"{SHOP}&{GOOD}&account=%5Bx%5D", 400, "Account field misformed or too long, rejected"),
    (f"{SHOP}&{GOOD}&dlr-mask=1&dlr-url=ftp%3A%2F%2Fx", 400, "DLR-URL field misformed, rejected"),
    (f"{SHOP}&{GOOD}&dlr-mask=64", 400, "DLR-Mask field misformed, rejected"),
    (f"{SHOP}&{GOOD}&mclass=4", 400, "MClass field misformed, rejected"),
    (f"{SHOP}&{GOOD}&pid=256", 400, "PID field misformed, rejected"),
    (f"{SHOP}&{GOOD}&rpi=3", 400, "RPI field misformed, rejected"),
    (f"{SHOP}&{GOOD}&alt-dcs=2", 400, "Alt-DCS field misformed, rejected"),
    (f"{SHOP}&{GOOD}&mwi=8", 400, "MWI field misformed, rejected"),
    (f"{SHOP}&{GOOD}&coding=3", 400, "Coding field misformed, rejected"),
    (f"{SHOP}&{GOOD}&compress=2", 400, "Compress field misformed, rejected"),
    (f"{SHOP}&{GOOD}&validity=-2", 400, "Validity field misformed, rejected"),
    (f"{SHOP}&{GOOD}&deferred=-2", 400, "Deferred field misformed, rejected"),
    (f"{SHOP}&{GOOD}&priority=4", 400, "Priority field misformed, rejected"),
    (f"{SHOP}&to=%2B447911123456&charset=NOPE&text=hi", 400, "Charset or body misformed, rejected"),
    (f"{SHOP}&to=%2B447911123456&coding=2&text=%00", 400, "Charset or body misformed, rejected"),
    (f"{SHOP}&{GOOD}&smsc=nosuch", 403, "Not routable. Do not try again."),
    # What Kannel would send and the router cannot, or not as asked.
    (f"{SHOP}&{GOOD}&udh=%05%00%03%2A%02%01", 400, "UDH field not supported, rejected"),
    (f"{SHOP}&{GOOD}&coding=1", 400, "Coding field not supported, rejected"),
    (f"{SHOP}&{GOOD}&pid=64", 400, "PID field not supported, rejected"),
    (f"{SHOP}&{GOOD}&mwi=0", 400, "MWI field not supported, rejected"),
    # Jobs the profile would refuse: refused now, in Kannel's words.
    (f"{SHOP}&to=%2B1&text=hi", 400, "To field misformed, rejected (+1: "),
    (f"{SHOP}&to=%2B447911123456&from=%2B447000000001&text=hi", 400,
     "From field misformed, rejected ("),
    (f"{SHOP}&to=%2B447911123456&text={'x' * 40_000}", 400, "Text field misformed, rejected ("),
    # The account's profiles and senders.
    (f"username=bulkonly&password={'b' * 20}&{GOOD}&smsc=alerts", 403,
     "Not routable. Do not try again. (profile: "),
    (f"username=bulkonly&password={'b' * 20}&{GOOD}&from=%2B16501112345", 403,
     "Sender not allowed, rejected (from: "),
]  # fmt: skip


async def test_errors_are_answered_as_kannel_and_nothing_is_enqueued(
    bare: tuple[str, ApiContext], redis: Redis
) -> None:
    base, _context = bare
    for query, status, text in ERRORS:
        reply = await call(base, query)
        assert reply.status == status, (query, reply.text)
        assert reply.text.startswith(text), (query, reply.text)
        assert reply.headers["Content-Type"] == "text/html"
    invalid = await call(
        base, method="POST", body=b"{}", headers={"Content-Type": "application/json"}
    )
    assert (invalid.status, invalid.text) == (400, "Invalid content-type")
    kannel = {"X-Kannel-Username": "shop", "X-Kannel-Password": TOKEN}
    no_to = await call(base, method="POST", body=b"x",
                       headers={"Content-Type": "text/plain", **kannel})  # fmt: skip
    assert (no_to.status, no_to.text) == (400, "Missing receiver(s) number(s), rejected")
    assert await redis.keys("sms:*") == []
    # And the same application sends a good one.
    good = await call(base, f"{SHOP}&{GOOD}")
    assert (good.status, good.text) == (202, ACCEPTED)
    assert await redis.keys("sms:*") != []


async def test_queued_for_later_while_the_profile_cannot_send(
    bare: tuple[str, ApiContext],
) -> None:
    base, context = bare
    context.workers = [Worker("alerts", ready=False), Worker("bulk", ready=True)]
    reply = await call(base, f"{SHOP}&{GOOD}")
    assert (reply.status, reply.text) == (202, "3: Queued for later delivery")
    reply = await call(base, f"{SHOP}&{GOOD}&smsc=bulk")
    assert (reply.status, reply.text) == (202, ACCEPTED)


async def test_rate_and_daily_quota_answer_429_with_retry_after(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    accounts = {
        "quota": {"api_token": "q" * 20, "daily_quota": 2},
        "slow": {"api_token": "s" * 20, "tps": 1},
    }
    server = ApiServer(
        api_context(redis, kannel_config(redis_url, provider.url, tmp_path, accounts))
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        quota = f"username=quota&password={'q' * 20}"
        three = q(to="+447911123456 +16501112345 +14082223333", text="x")
        over = await call(base, f"{quota}&{three}")
        assert over.status == 429 and over.text.startswith("Temporal failure, try again later. (")
        assert "daily quota of 2" in over.text and int(over.headers["Retry-After"]) >= 1
        two = await call(base, f"{quota}&{q(to='+447911123456 +16501112345', text='x')}")
        assert (two.status, two.text) == (202, ACCEPTED) and len(two.ids) == 2
        assert (await call(base, f"{quota}&{GOOD}")).status == 429

        slow = f"username=slow&password={'s' * 20}&{GOOD}"
        assert (await call(base, slow)).status == 202
        throttled = await call(base, slow)
        assert throttled.status == 429 and "rate of 1 messages/s" in throttled.text
        assert throttled.headers["Retry-After"] == "1"
    finally:
        await server.stop()


async def test_the_sendsms_listener_serves_sendsms_alone(
    bare: tuple[str, ApiContext],
) -> None:
    _base, context = bare
    server = SendsmsServer(context)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        reply = await call(base, f"{SHOP}&{GOOD}")
        assert (reply.status, reply.text) == (202, ACCEPTED)
        for path in ("/v1/messages", "/healthz", "/cgi-bin/sendota"):
            other = await call(base, path=path)
            assert (other.status, other.text) == (404, "Unknown request.")
    finally:
        await server.stop()
