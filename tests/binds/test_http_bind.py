"""The Web-URL bind against a real aiohttp server, plus the flow-control primitives."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from binds.base import Accepted, Bind, BindConfigError, BindError, Failed, OutboundMessage, Retry
from binds.flow import RateLimiter, Window
from binds.http import HttpSender, HttpSpec

TRICKY = 'a&b=c+d %20 100% "quoted" \\ back\nnew line\ttab {x} #frag /?ü 😀'
SECRET = "s3cr3t-t0ken/+&="

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    raw_path_qs: str
    headers: dict[str, str]
    body: bytes


async def ok_json(_request: web.Request) -> web.StreamResponse:
    return web.json_response({"id": "prov-1"})


@dataclass
class Provider:
    """A real HTTP server: records every request and counts concurrent ones."""

    base: str = ""
    handler: Handler = ok_json
    seen: list[Seen] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            body = await request.read()
            self.seen.append(Seen(request.method, request.raw_path, dict(request.headers), body))
            return await self.handler(request)
        finally:
            self.active -= 1


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    prov = Provider()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", prov.dispatch)
    # handler_cancellation: a client that timed out must not keep cleanup waiting.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]  # port 0: the OS picked a free one
    prov.base = f"http://127.0.0.1:{port}"
    try:
        yield prov
    finally:
        await runner.cleanup()


@pytest.fixture
async def senders() -> AsyncIterator[Callable[..., Awaitable[HttpSender]]]:
    """Build and start senders; all are closed afterwards."""
    made: list[HttpSender] = []

    async def make(**kwargs: Any) -> HttpSender:
        sender = HttpSender("test/http", HttpSpec(**kwargs))
        await sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()


def msg(text: str = TRICKY, n: int = 1) -> OutboundMessage:
    return OutboundMessage(
        id=f"job-{n}", source="+15550001", destination="+447911123456", text=text
    )


FORM = {"from": "{from}", "to": "{to}", "text": "{text}", "ref": "{id}"}


# --- request shapes --------------------------------------------------------------------


async def test_form_post_sends_exact_fields_and_reads_json_id(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    sender = await senders(url=provider.base + "/send", form=FORM, message_id="json:id")
    assert isinstance(sender, Bind)
    outcome = await sender.submit(msg())
    assert outcome == Accepted(provider_message_id="prov-1", raw='{"id": "prov-1"}')
    [seen] = provider.seen
    assert seen.method == "POST"
    assert seen.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    fields = parse_qs(seen.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert fields == {
        "from": ["+15550001"],
        "to": ["+447911123456"],
        "text": [TRICKY],
        "ref": ["job-1"],
    }


@pytest.mark.parametrize(
    ("selector", "body", "expected"),
    [
        (r"regex:id=(\w+)", "OK queued id=ABC123 at 10:00", "ABC123"),
        (r"regex:(?P<status>OK) (?P<id>\d+)", "OK 998877", "998877"),
        ("regex:OK-\\d+", "status OK-42 done", "OK-42"),
        ("json:data.messages.0.id", '{"data": {"messages": [{"id": 42}, {"id": 43}]}}', "42"),
        ("json:data.messages.1.id", '{"data": {"messages": [{"id": 42}, {"id": "b"}]}}', "b"),
    ],
)
async def test_message_id_extractors(
    provider: Provider,
    senders: Callable[..., Awaitable[HttpSender]],
    selector: str,
    body: str,
    expected: str,
) -> None:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, status=201)

    provider.handler = answer
    sender = await senders(url=provider.base + "/send", form=FORM, message_id=selector)
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id == expected
    assert outcome.raw == body


@pytest.mark.parametrize(
    ("selector", "body"),
    [
        ("json:id", "not json at all"),
        ("json:data.0", '{"data": {"x": 1}}'),
        ("regex:id=(\\d+)", ""),
    ],
)
async def test_missing_message_id_is_still_accepted_and_noted(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]], selector: str, body: str
) -> None:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=body)

    provider.handler = answer
    sender = await senders(url=provider.base + "/send", form=FORM, message_id=selector)
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Accepted)
    assert outcome.provider_message_id is None
    assert "message id not found" in outcome.raw
    assert outcome.raw.endswith(body)


async def test_no_extractor_gives_no_id_and_raw_is_truncated(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="x" * 2000, status=202)

    provider.handler = answer
    sender = await senders(url=provider.base + "/send", form=FORM)
    outcome = await sender.submit(msg())
    assert outcome == Accepted(provider_message_id=None, raw="x" * 500)


async def test_json_post_escapes_text_through_the_encoder(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    template = {
        "message": {"to": ["{to}"], "body": "{text}", "from": "{from}"},
        "ref": "job={id} {{literal}}",
        "priority": 1,
        "flash": False,
        "extra": None,
    }
    sender = await senders(url=provider.base + "/v1/messages", json=template, message_id="json:id")
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Accepted) and outcome.provider_message_id == "prov-1"
    [seen] = provider.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {
        "message": {"to": ["+447911123456"], "body": TRICKY, "from": "+15550001"},
        "ref": "job=job-1 {literal}",
        "priority": 1,
        "flash": False,
        "extra": None,
    }


async def test_put_json_keeps_a_configured_content_type(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    sender = await senders(
        method="put",
        url=provider.base + "/m",
        json=["{text}"],
        headers={"content-type": "application/vnd.sms+json"},
    )
    assert isinstance(await sender.submit(msg('say "hi"\n')), Accepted)
    [seen] = provider.seen
    assert seen.method == "PUT"
    assert seen.headers["Content-Type"] == "application/vnd.sms+json"
    assert json.loads(seen.body) == ['say "hi"\n']


async def test_get_percent_encodes_every_substituted_value(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    url = provider.base + "/send/{to}/x%20y?text={text}&from={from}&key={secret:KEY}&b={{z}}"
    sender = await senders(method="GET", url=url, secrets={"KEY": SECRET})
    assert isinstance(await sender.submit(msg()), Accepted)
    [seen] = provider.seen
    assert seen.method == "GET" and seen.body == b""
    parts = urlsplit(seen.raw_path_qs)
    assert parts.path.split("/") == ["", "send", "%2B447911123456", "x%20y"]
    assert unquote(parts.path.split("/")[2]) == "+447911123456"
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert query == {"text": [TRICKY], "from": ["+15550001"], "key": [SECRET], "b": ["{z}"]}


async def test_get_with_form_sends_fields_in_the_query(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    sender = await senders(method="GET", url=provider.base + "/send?user=me", form=FORM)
    assert isinstance(await sender.submit(msg()), Accepted)
    [seen] = provider.seen
    query = parse_qs(urlsplit(seen.raw_path_qs).query, strict_parsing=True)
    assert query == {
        "user": ["me"],
        "from": ["+15550001"],
        "to": ["+447911123456"],
        "text": [TRICKY],
        "ref": ["job-1"],
    }


async def test_secret_header_is_sent_but_never_reported(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    async def reject(request: web.Request) -> web.StreamResponse:
        # A provider that echoes what it got, raw and URL-encoded, as some do.
        auth = request.headers["Authorization"]
        echo = f"bad credentials {auth} for {request.raw_path}"
        return web.Response(text=echo, status=401)

    provider.handler = reject
    sender = await senders(
        url=provider.base + "/send?key={secret:TOKEN}",
        form=FORM,
        headers={"Authorization": "Bearer {secret:TOKEN}", "X-Ref": "{id}"},
        secrets={"TOKEN": SECRET, "TINY": "ab"},
    )
    outcome = await sender.submit(msg())
    [seen] = provider.seen
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert seen.headers["X-Ref"] == "job-1"
    assert isinstance(outcome, Failed)
    assert outcome.code == "http_401"
    assert outcome.reason.startswith("http 401: bad credentials Bearer ***")
    for text in (outcome.reason, outcome.raw, repr(outcome), repr(sender.spec)):
        assert SECRET not in text
        assert "s3cr3t" not in text
    assert sender.redact(f"x{SECRET}y") == "x***y"


# --- outcome mapping -------------------------------------------------------------------


def answering(status: int, text: str = "", headers: dict[str, str] | None = None) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "headers", "after"),
    [
        (503, {"Retry-After": "7"}, 7.0),
        (500, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a past date: now
        (503, {"Retry-After": "soon"}, None),
        (429, {"Retry-After": "1.5"}, 1.5),
        (502, {}, None),
    ],
)
async def test_throttling_and_server_errors_retry(
    provider: Provider,
    senders: Callable[..., Awaitable[HttpSender]],
    status: int,
    headers: dict[str, str],
    after: float | None,
) -> None:
    provider.handler = answering(status, "busy, try later", headers)
    sender = await senders(url=provider.base + "/send", form=FORM, message_id="json:id")
    outcome = await sender.submit(msg())
    assert outcome == Retry(
        reason=f"http {status}", code=f"http_{status}", raw="busy, try later", after=after
    )


async def test_retry_after_as_an_http_date_is_honoured(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    # RFC 9110 allows an HTTP-date; it used to be ignored (the retry came too early).
    when = email.utils.format_datetime(
        datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120), usegmt=True
    )
    provider.handler = answering(429, "slow down", {"Retry-After": when})
    sender = await senders(url=provider.base + "/send", form=FORM)
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Retry) and outcome.after is not None
    assert 100 < outcome.after <= 120


HUGE = 50 * 2**20


def streaming(status: int, head: bytes) -> Handler:
    """Answer `head` then spaces up to 50 MB, streamed: the test never holds 50 MB."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * 65536
        sent = len(head)
        with contextlib.suppress(ConnectionError):  # the bind hangs up early: good
            await response.write(head)
            while sent < HUGE:
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        return response

    return handler


@pytest.mark.parametrize(
    ("status", "extractor", "expected"),
    [
        # JSON cut short cannot be parsed: accepted on the status, without an id.
        (200, "json:id", Accepted),
        # A regex finds the id in the bytes that were read.
        (200, 'regex:"id": *"([^"]+)"', Accepted),
        (503, "json:id", Retry),
        (400, "json:id", Failed),
    ],
)
async def test_huge_answers_are_read_only_up_to_the_cap(
    provider: Provider,
    senders: Callable[..., Awaitable[HttpSender]],
    status: int,
    extractor: str,
    expected: type,
) -> None:
    # A 50 MB answer once took the daemon's RSS to 701 MB: it was read whole.
    provider.handler = streaming(status, b'{"id": "prov-big", "padding": "')
    sender = await senders(url=provider.base + "/send", form=FORM, message_id=extractor)
    tracemalloc.start()
    try:
        outcome = await asyncio.wait_for(sender.submit(msg()), 60)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB while reading a 50 MB answer"
    assert isinstance(outcome, expected)
    assert "[answer cut at 65536 bytes] " in outcome.raw
    assert len(outcome.raw) < 600
    if isinstance(outcome, Accepted):
        found = "prov-big" if extractor.startswith("regex") else None
        assert outcome.provider_message_id == found
    # The half-read connection is dropped, not reused: the next request works.
    provider.handler = ok_json
    again = await sender.submit(msg())
    assert isinstance(again, Accepted) and again.provider_message_id == "prov-1"


async def test_answer_cap_is_configurable(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    answer = '{"id": "prov-7", "pad": "' + "x" * 5000 + '"}'
    provider.handler = answering(200, answer)
    small = await senders(
        url=provider.base + "/send", form=FORM, message_id="json:id", max_response_bytes=1024
    )
    outcome = await small.submit(msg())
    assert isinstance(outcome, Accepted) and outcome.provider_message_id is None
    assert outcome.raw.startswith("[message id not found by json:id] [answer cut at 1024 bytes]")
    whole = await senders(url=provider.base + "/send", form=FORM, message_id="json:id")
    assert await whole.submit(msg()) == Accepted(provider_message_id="prov-7", raw=answer[:500])


@pytest.mark.parametrize(
    ("status", "text", "reason"),
    [
        (400, '{"error":  "invalid\n destination"}', 'http 400: {"error": "invalid destination"}'),
        (404, "", "http 404"),
        (302, "moved", "http 302: moved"),  # redirects are reported, not followed
        (204, "", "http 204"),  # a 2xx that is not in success_status
    ],
)
async def test_refusals_fail(
    provider: Provider,
    senders: Callable[..., Awaitable[HttpSender]],
    status: int,
    text: str,
    reason: str,
) -> None:
    headers = {"Location": provider.base + "/elsewhere"} if status == 302 else None
    provider.handler = answering(status, text, headers)
    sender = await senders(url=provider.base + "/send", form=FORM)
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Failed)
    assert (outcome.code, outcome.reason) == (f"http_{status}", reason)
    assert len(provider.seen) == 1


async def test_custom_success_status(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    provider.handler = answering(204)
    sender = await senders(url=provider.base + "/send", form=FORM, success_status=(204,))
    assert await sender.submit(msg()) == Accepted(provider_message_id=None, raw="")


async def test_timeout_retries(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    async def slow(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.json_response({"id": "late"})

    provider.handler = slow
    sender = await senders(url=provider.base + "/send", form=FORM, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Retry) and outcome.code == "timeout"
    assert loop.time() - started < 0.8
    assert sender.in_flight == 0


async def test_connection_refused_retries(senders: Callable[..., Awaitable[HttpSender]]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The socket is closed: nothing listens on that port now.
    sender = await senders(
        url=f"http://127.0.0.1:{port}/send?k={{secret:K}}", secrets={"K": SECRET}
    )
    outcome = await sender.submit(msg())
    assert isinstance(outcome, Retry)
    assert outcome.code == "connection"
    assert outcome.reason.startswith("connection error: ")
    assert SECRET not in repr(outcome)


async def test_header_injection_is_refused_without_sending(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    sender = await senders(url=provider.base + "/send", form=FORM, headers={"X-Text": "{text}"})
    outcome = await sender.submit(msg("evil\r\nX-Other: 1"))
    assert isinstance(outcome, Failed) and outcome.code == "invalid_request"
    assert "http.headers.X-Text" in outcome.reason
    assert provider.seen == []


async def test_submit_before_start_raises() -> None:
    sender = HttpSender("idle", HttpSpec(url="http://127.0.0.1:9/send"))
    with pytest.raises(BindError):
        await sender.submit(msg())


async def test_given_session_is_used_and_left_open(provider: Provider) -> None:
    async with aiohttp.ClientSession() as session:
        sender = HttpSender("shared", HttpSpec(url=provider.base + "/s", form=FORM), session)
        await sender.start()
        assert isinstance(await sender.submit(msg()), Accepted)
        await sender.close()
        assert not session.closed


# --- concurrency and rate --------------------------------------------------------------


def delayed(seconds: float) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"id": "x"})

    return handler


async def test_sync_mode_keeps_one_request_in_flight(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    provider.handler = delayed(0.01)
    sender = await senders(url=provider.base + "/send", form=FORM, window=8, sync=True)
    assert sender.window == 1
    outcomes = await asyncio.gather(*(sender.submit(msg(n=i)) for i in range(20)))
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert len(provider.seen) == 20
    assert provider.peak == 1


async def test_async_window_bounds_concurrency(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    provider.handler = delayed(0.05)
    sender = await senders(url=provider.base + "/send", form=FORM, window=5)
    assert sender.window == 5

    async def watch() -> int:
        most = 0
        while True:
            most = max(most, sender.in_flight)
            await asyncio.sleep(0)
            if provider.seen and sender.in_flight == 0:
                return most

    watcher = asyncio.create_task(watch())
    outcomes = await asyncio.gather(*(sender.submit(msg(n=i)) for i in range(20)))
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert provider.peak == 5
    assert await watcher == 5
    # Every request was answered over at most `window` pooled connections.
    assert sender.in_flight == 0


async def test_tps_spaces_requests(
    provider: Provider, senders: Callable[..., Awaitable[HttpSender]]
) -> None:
    sender = await senders(url=provider.base + "/send", form=FORM, window=20, tps=50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(*(sender.submit(msg(n=i)) for i in range(20)))
    elapsed = loop.time() - started
    assert all(isinstance(o, Accepted) for o in outcomes)
    burst = 5  # the default: a tenth of a second's worth at 50/s
    assert elapsed >= (20 - burst) / 50 - 0.02
    assert elapsed < 2.0


# --- configuration errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"form": {"text": "{foo}"}}, "http.form.text: unknown placeholder {foo}"),
        ({"headers": {"Authorization": "Bearer {secret:TOKEN}"}}, "http.headers.Authorization"),
        ({"url": "http://h/{secret:NOPE}"}, "http.url: unknown secret {secret:NOPE}"),
        ({"json": {"a": [{"b": "{txt}"}]}}, "http.json.a.0.b: unknown placeholder {txt}"),
        ({"form": {"text": "a } b"}}, "http.form.text: unmatched '}'"),
        ({"form": {"text": "{text"}}, "http.form.text: unmatched '{'"),
        ({"form": FORM, "json": {"a": "b"}}, "only one of form and json"),
        ({"method": "DELETE"}, "http.method"),
        ({"message_id": "xpath://id"}, "http.message_id"),
        ({"message_id": "regex:(a)(b)"}, "http.message_id: several groups"),
        ({"message_id": "regex:(unclosed"}, "http.message_id: bad regular expression"),
        ({"message_id": "json:"}, "http.message_id"),
        ({"url": "/relative/{to}"}, "http.url: must be an absolute"),
        ({"window": 0}, "http.window"),
        ({"timeout": 0}, "http.timeout"),
        ({"method": "GET", "json": {"a": "{text}"}}, "http.json"),
        ({"json": {"a": {1, 2}}}, "http.json.a: set is not a JSON value"),
    ],
)
def test_bad_configuration_is_rejected_at_construction(kwargs: dict[str, Any], needle: str) -> None:
    spec: dict[str, Any] = {"url": "http://provider.example/send", "secrets": {"KEY": "value"}}
    spec.update(kwargs)
    with pytest.raises(BindConfigError) as info:
        HttpSpec(**spec)
    assert needle in str(info.value)


def test_missing_secret_names_field_and_secret() -> None:
    with pytest.raises(BindConfigError) as info:
        HttpSpec(url="http://p/s", headers={"X-Key": "{secret:TOKEN}"}, secrets={"OTHER": "abcd"})
    assert str(info.value).startswith("http.headers.X-Key: unknown secret {secret:TOKEN}")
    assert "abcd" not in str(info.value)


# --- Window ----------------------------------------------------------------------------


async def test_window_limits_and_records_peak() -> None:
    window = Window(2)
    order: list[int] = []
    release = asyncio.Event()

    async def work(i: int) -> None:
        async with window.slot():
            order.append(i)
            await release.wait()

    tasks = [asyncio.create_task(work(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert (window.in_flight, window.peak, order) == (2, 2, [0, 1])
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]  # FIFO
    assert (window.in_flight, window.peak) == (0, 2)


async def test_window_is_fair_against_newcomers() -> None:
    window = Window(1)
    await window.acquire()
    got: list[str] = []

    async def take(name: str) -> None:
        await window.acquire()
        got.append(name)

    early = asyncio.create_task(take("early"))
    await asyncio.sleep(0)
    window.release()
    # A newcomer that runs before the woken waiter must not steal its slot.
    late = asyncio.create_task(take("late"))
    await asyncio.sleep(0.01)
    assert got == ["early"]
    assert window.in_flight == 1
    window.release()
    await asyncio.gather(early, late)
    assert got == ["early", "late"]
    window.release()
    assert window.in_flight == 0


async def test_window_resize_at_runtime() -> None:
    window = Window(4)
    for _ in range(4):
        await window.acquire()
    window.limit = 2  # shrink: nothing is interrupted, new callers wait
    waiter = asyncio.create_task(window.acquire())
    for _ in range(2):
        window.release()
    await asyncio.sleep(0.01)
    assert not waiter.done() and window.in_flight == 2
    window.release()
    await asyncio.sleep(0.01)
    assert waiter.done() and window.in_flight == 2

    # Growing wakes as many waiters as the new room allows, at once.
    waiters = [asyncio.create_task(window.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    window.limit = 5
    await asyncio.sleep(0.01)
    assert all(w.done() for w in waiters)
    assert (window.in_flight, window.peak) == (5, 5)
    with pytest.raises(ValueError):
        window.limit = 0


async def test_window_cancelled_waiter_does_not_leak_a_slot() -> None:
    window = Window(1)
    await window.acquire()
    queued = asyncio.create_task(window.acquire())
    await asyncio.sleep(0)
    # Hand the slot over and cancel the waiter before it runs: it must give it back.
    window.release()
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert window.in_flight == 0
    cancelled_early = asyncio.create_task(window.acquire())
    await window.acquire()
    await asyncio.sleep(0)
    cancelled_early.cancel()
    await asyncio.gather(cancelled_early, return_exceptions=True)
    window.release()
    assert window.in_flight == 0
    async with window.slot():
        assert window.in_flight == 1


# --- RateLimiter -----------------------------------------------------------------------


async def test_rate_limiter_unlimited_never_waits() -> None:
    limiter = RateLimiter(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(10_000):
        await limiter.acquire()
    assert loop.time() - started < 0.5


async def test_rate_limiter_burst_then_rate() -> None:
    limiter = RateLimiter(100)  # burst 10
    assert limiter.burst == 10
    loop = asyncio.get_running_loop()
    started = loop.time()
    stamps: list[float] = []
    for _ in range(30):
        await limiter.acquire()
        stamps.append(loop.time() - started)
    assert stamps[9] < 0.02  # the burst goes at once
    assert stamps[-1] >= (30 - 10) / 100 - 0.01
    assert stamps[-1] < 0.5


async def test_rate_limiter_serves_concurrent_callers_in_order() -> None:
    limiter = RateLimiter(200, burst=1)
    order: list[int] = []

    async def take(i: int, n: int) -> None:
        await limiter.acquire(n)
        order.append(i)

    await asyncio.gather(*(take(i, 3 if i == 1 else 1) for i in range(6)))
    assert order == [0, 1, 2, 3, 4, 5]


async def test_rate_limiter_rate_change_applies_to_a_waiting_caller() -> None:
    limiter = RateLimiter(1, burst=1)
    loop = asyncio.get_running_loop()
    await limiter.acquire()  # empties the bucket: the next token is a second away
    started = loop.time()
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.02)
    assert not waiter.done()
    limiter.rate = 1000
    await asyncio.wait_for(waiter, 0.2)
    assert loop.time() - started < 0.2
    limiter.rate = 0
    assert limiter.unlimited
    await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(100))), 0.2)
