"""Media checks against real HTTP servers on this machine (aiohttp, on loopback
addresses: reaching them needs `allow_private` or `allow_networks`, which is itself
what several tests check)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from router.errors import RouterError
from router.policy.media import (
    DEFAULT_MAX_BYTES,
    Media,
    MediaChecker,
    MediaError,
    MediaFieldError,
    address_problem,
    parse_media,
)

from ..conftest import free_port

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2040  # 2,048 bytes


@dataclass
class Site:
    """A media server: its base URL and the requests it got (method, path, Range)."""

    base: str
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def hits(self, path: str) -> Counter[str]:
        return Counter(method for method, at, _ in self.seen if at == path)


async def _hang(request: web.Request) -> web.Response:
    await asyncio.sleep(30)
    return web.Response(body=PNG, content_type="image/png")


def _app(site: Site) -> web.Application:
    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def vcard(request: web.Request) -> web.Response:
        return web.Response(text="BEGIN:VCARD\r\nEND:VCARD\r\n", content_type="text/vcard")

    async def huge(request: web.Request) -> web.StreamResponse:
        # 50 MB announced, not sent: a HEAD answer carries the length alone.
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = 50 * 1024 * 1024
        await response.prepare(request)
        return response

    async def head_refused(request: web.Request) -> web.Response:
        if request.method == "HEAD":
            return web.Response(status=int(request.query.get("head", "405")))
        if request.headers.get("Range") == "bytes=0-0" and "no-range" not in request.query:
            return web.Response(
                status=206,
                body=PNG[:1],
                content_type="image/png",
                headers={"Content-Range": f"bytes 0-0/{len(PNG)}"},
            )
        return web.Response(body=PNG, content_type="image/png")

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if request.method != "HEAD":
            await response.write(b"ID3")
        return response

    async def sized_on_get(request: web.Request) -> web.StreamResponse:
        """No length to a HEAD (chunked); the ranged GET says the total."""
        if request.method == "HEAD":
            response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            return response
        return web.Response(
            status=206,
            body=b"\x00",
            content_type="video/mp4",
            headers={"Content-Range": "bytes 0-0/9999999"},
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        site.seen.append((request.method, request.path, request.headers.get("Range", "")))
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_get("/a.png", png)
    app.router.add_get("/page.html", html)
    app.router.add_get("/card.vcf", vcard)
    app.router.add_get("/huge.mp4", huge)
    app.router.add_route("*", "/head-refused.png", head_refused)
    app.router.add_get("/streamed.mp3", streamed)
    app.router.add_get("/sized-on-get.mp4", sized_on_get)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)
    app.router.add_get("/hang.png", _hang)
    return app


Serve = Callable[[str], Awaitable[Site]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a media server on a loopback address (127.0.0.1, 127.0.0.2, ::1)."""
    runners: list[web.AppRunner] = []

    async def start(host: str) -> Site:
        shown = f"[{host}]" if ":" in host else host
        site = Site("")
        runner = web.AppRunner(_app(site), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        site.base = f"http://{shown}:{port}"
        return site

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def checker() -> AsyncIterator[MediaChecker]:
    """A checker that may reach this machine's servers (allow_private)."""
    found = MediaChecker(allow_private=True, timeout=2.0)
    yield found
    await found.close()


async def _refusal(checker: MediaChecker, *urls: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    with pytest.raises(MediaError) as caught:
        await checker.check(list(urls), max_bytes)
    assert isinstance(caught.value, RouterError) and isinstance(caught.value, ValueError)
    return str(caught.value)


async def test_an_image_passes(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/a.png"
    assert await checker.check([url]) == [Media(url, "image/png", len(PNG))]
    # HEAD only: the file itself was never asked for.
    assert site.hits("/a.png") == Counter({"HEAD": 1})


async def test_a_vcard_passes(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    (found,) = await checker.check([f"{site.base}/card.vcf"])
    assert found.content_type == "text/vcard"


async def test_a_missing_file_is_refused(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/nothing.png"
    assert await _refusal(checker, url) == f"media[0] {url}: answered HTTP 404"


async def test_html_is_refused_naming_its_place(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    good, bad = f"{site.base}/a.png", f"{site.base}/page.html"
    assert await _refusal(checker, good, bad) == (
        f"media[1] {bad}: content type text/html is not image, audio, video or text/vcard"
    )


async def test_50_mb_is_refused_over_the_limit(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/huge.mp4"
    assert await _refusal(checker, url) == (
        f"media[0] {url}: 52,428,800 bytes (50.0 MB) is larger than the limit of "
        "5,242,880 bytes (5.0 MB)"
    )
    # The size is cached, not the verdict: a profile allowing 64 MB takes it.
    assert await checker.check([url], 64 * 1024 * 1024) == [
        Media(url, "video/mp4", 50 * 1024 * 1024)
    ]
    assert site.hits("/huge.mp4") == Counter({"HEAD": 1})


async def test_head_refused_then_a_ranged_get(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/head-refused.png"
    assert await checker.check([url]) == [Media(url, "image/png", len(PNG))]
    assert site.seen == [
        ("HEAD", "/head-refused.png", ""),
        ("GET", "/head-refused.png", "bytes=0-0"),
    ]
    # The total of Content-Range is the size compared with the limit.
    checker.forget()
    assert "2,048 bytes is larger than the limit of 1,000 bytes" in await _refusal(
        checker, url, max_bytes=1000
    )


@pytest.mark.parametrize("head", [403, 501])
async def test_other_head_refusals_get_a_ranged_get_too(
    serve: Serve, checker: MediaChecker, head: int
) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/head-refused.png?head={head}"
    assert await checker.check([url]) == [Media(url, "image/png", len(PNG))]
    assert [m for m, _, _ in site.seen] == ["HEAD", "GET"]


async def test_a_ranged_get_without_range_support(serve: Serve, checker: MediaChecker) -> None:
    """A server that ignores Range answers 200 with the whole file: its length is the
    size, and the body is not read."""
    site = await serve("127.0.0.1")
    url = f"{site.base}/head-refused.png?no-range=1"
    assert await checker.check([url]) == [Media(url, "image/png", len(PNG))]


async def test_a_size_only_the_ranged_get_gives(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/sized-on-get.mp4"
    assert await _refusal(checker, url) == (
        f"media[0] {url}: 9,999,999 bytes (9.5 MB) is larger than the limit of "
        "5,242,880 bytes (5.0 MB)"
    )
    assert site.seen == [
        ("HEAD", "/sized-on-get.mp4", ""),
        ("GET", "/sized-on-get.mp4", "bytes=0-0"),
    ]


async def test_an_unknown_size_is_accepted(serve: Serve, checker: MediaChecker) -> None:
    """A streamed answer (chunked, no length): accepted with the size unknown."""
    site = await serve("127.0.0.1")
    url = f"{site.base}/streamed.mp3"
    assert await checker.check([url], 10) == [Media(url, "audio/mpeg", None)]
    assert site.seen == [("HEAD", "/streamed.mp3", ""), ("GET", "/streamed.mp3", "bytes=0-0")]


async def test_redirects_are_followed_and_bounded(serve: Serve, checker: MediaChecker) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/redirect?to=/a.png"
    assert await checker.check([url]) == [Media(url, "image/png", len(PNG))]
    looping = f"{site.base}/loop"
    assert await _refusal(checker, looping) == (f"media[0] {looping}: more than 5 redirects")
    assert site.hits("/loop")["HEAD"] == 6


async def test_a_redirect_to_loopback_is_refused(serve: Serve) -> None:
    """The first server is allowed (its network is), the hop to 127.0.0.1 is not."""
    allowed = await serve("127.0.0.2")
    inner = await serve("127.0.0.1")
    checker = MediaChecker(allow_networks=["127.0.0.2/32"], timeout=2.0)
    try:
        assert (await checker.check([f"{allowed.base}/a.png"]))[0].size == len(PNG)
        target = f"{inner.base}/a.png"
        url = f"{allowed.base}/redirect?to={target}"
        assert await _refusal(checker, url) == (
            f"media[0] {url}: redirected to {target}: 127.0.0.1 is a loopback address "
            "(allowed only with [router] media_allow_private)"
        )
        assert inner.seen == []
    finally:
        await checker.close()


async def test_loopback_only_with_allow_private(serve: Serve) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/a.png"
    strict = MediaChecker(timeout=2.0)
    lenient = MediaChecker(allow_private=True, timeout=2.0)
    try:
        assert await _refusal(strict, url) == (
            f"media[0] {url}: 127.0.0.1 is a loopback address "
            "(allowed only with [router] media_allow_private)"
        )
        # A name is checked by what it resolves to.
        named = url.replace("127.0.0.1", "localhost")
        reason = await _refusal(strict, named)
        assert reason.startswith(f"media[0] {named}: localhost resolves to ")
        assert "a loopback address" in reason
        assert site.seen == []
        assert await lenient.check([url, named]) == [
            Media(url, "image/png", len(PNG)),
            Media(named, "image/png", len(PNG)),
        ]
    finally:
        await strict.close()
        await lenient.close()


async def test_ipv6_loopback(serve: Serve) -> None:
    site = await serve("::1")
    url = f"{site.base}/a.png"
    strict = MediaChecker(timeout=2.0)
    lenient = MediaChecker(allow_private=True, timeout=2.0)
    try:
        assert await _refusal(strict, url) == (
            f"media[0] {url}: ::1 is a loopback address "
            "(allowed only with [router] media_allow_private)"
        )
        mapped = f"http://[::ffff:127.0.0.1]:{url.rsplit(':', 1)[1]}"
        assert "::ffff:127.0.0.1 is a loopback address" in await _refusal(strict, mapped)
        assert await lenient.check([url]) == [Media(url, "image/png", len(PNG))]
    finally:
        await strict.close()
        await lenient.close()


async def test_a_hanging_server_is_refused_in_time(serve: Serve) -> None:
    site = await serve("127.0.0.1")
    url = f"{site.base}/hang.png"
    checker = MediaChecker(allow_private=True, timeout=0.5)
    try:
        started = time.monotonic()
        assert await _refusal(checker, url) == f"media[0] {url}: no answer within 0.5 s"
        assert time.monotonic() - started < 3.0  # 0.5 s, with room for a busy machine
    finally:
        await checker.close()


async def test_the_cache_asks_once(serve: Serve) -> None:
    site = await serve("127.0.0.1")
    checker = MediaChecker(allow_private=True, timeout=2.0, bad_ttl=0.3)
    good, bad = f"{site.base}/a.png", f"{site.base}/page.html"
    try:
        # Two checks at once share one request.
        await asyncio.gather(checker.check([good]), checker.check([good]))
        assert checker.requests == 1
        await checker.check([good])
        assert checker.requests == 1 and site.hits("/a.png") == Counter({"HEAD": 1})
        await _refusal(checker, bad)
        await _refusal(checker, bad)
        assert site.hits("/page.html") == Counter({"HEAD": 1})
        await asyncio.sleep(0.4)  # a refusal is remembered for bad_ttl only
        await _refusal(checker, bad)
        assert site.hits("/page.html") == Counter({"HEAD": 2})
    finally:
        await checker.close()


async def test_the_cache_is_bounded(serve: Serve) -> None:
    site = await serve("127.0.0.1")
    checker = MediaChecker(allow_private=True, timeout=2.0, cache_size=2)
    urls = [f"{site.base}/a.png?n={n}" for n in range(3)]
    try:
        for url in urls:
            await checker.check([url])
        await checker.check([urls[0]])  # the oldest was forgotten: asked again
        assert checker.requests == 4
        await checker.check([urls[2]])
        assert checker.requests == 4
    finally:
        await checker.close()


async def test_an_unreachable_port_is_refused(checker: MediaChecker) -> None:
    url = f"http://127.0.0.1:{free_port()}/a.png"
    assert (await _refusal(checker, url)).startswith(f"media[0] {url}: cannot be fetched: ")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
    ],
)
def test_addresses_never_fetched_from(address: str, kind: str) -> None:
    assert f"{address} is a" in (address_problem(address) or "")
    assert f" {kind} address" in (address_problem(address) or "")


def test_public_and_allowed_addresses() -> None:
    assert address_problem("8.8.8.8") is None
    assert address_problem("2001:4860:4860::8888") is None
    checker = MediaChecker(allow_networks=["10.1.0.0/16"])
    assert address_problem("10.1.2.3", checker.allow_networks) is None
    assert address_problem("10.2.0.1", checker.allow_networks) is not None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://x/a.png", "media: must be a list of 1 to 10 http(s) URLs"),
        ([], "media: must hold 1 to 10 URLs, not 0"),
        (["https://x/a.png"] * 11, "media: must hold 1 to 10 URLs, not 11"),
        (["https://x/a.png", 3], "media[1]: must be a string"),
        (["ftp://x/a.png"], "media[0]: must be an absolute http:// or https:// URL"),
        (["/a.png"], "media[0]: must be an absolute http:// or https:// URL"),
        (["https://x/a b.png"], "media[0]: contains spaces or control characters"),
        (["https://x:99999/a.png"], "media[0]: not a URL (Port out of range 0-65535)"),
        (["https://x/" + "a" * 2048], "media[0]: longer than 2048 characters"),
    ],
)
def test_parse_media_names_the_problem(value: object, problem: str) -> None:
    with pytest.raises(MediaFieldError) as caught:
        parse_media(value)
    assert str(caught.value) == problem
    assert f"{caught.value.field}: {caught.value.problem}" == problem
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RouterError)


def test_parse_media_keeps_the_urls() -> None:
    urls = ["https://x/a.png", "http://y/b.mp4?sig=1"]
    assert parse_media(urls) == tuple(urls)
