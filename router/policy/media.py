"""Media checks: whether each media URL of an MMS may be sent, before it is sent.

A job's ``media`` is a list of 1 to `MAX_MEDIA` http(s) URLs (`parse_media` checks
the shape, at the door and in the worker alike). Before a message with media is
sent, `MediaChecker.check` asks each URL's server about it:

- a ``HEAD`` request, no body read, within `timeout` seconds for the whole URL
  (redirects included). A server that refuses ``HEAD`` (405, 501; also 403, which
  storage services answer to a ``HEAD`` on a link signed for ``GET`` only) is asked
  again with ``GET`` and ``Range: bytes=0-0``: the headers are read, the body never;
- the answer must be 2xx with a content type ``image/*``, ``audio/*``, ``video/*``
  or ``text/vcard`` (``text/x-vcard``);
- its size (``Content-Length``, or the total of a 206's ``Content-Range``) at most
  the profile's ``mms_max_bytes``; a ``HEAD`` answered without a length is followed
  by the ranged ``GET``. A server that gives no size even to that (a streamed answer)
  is accepted with the size unknown (`Media.size` None):
  the provider fetches the file itself and refuses one over its own limit, which
  the record then shows; refusing every streamed file would refuse good media that
  the sender cannot fix;
- redirects are followed, at most `max_redirects`, each hop checked as the first.

No request goes to a loopback, private, link-local, multicast, unspecified or
reserved address (IPv4 or IPv6, IPv4-mapped included) unless `allow_private` (or
the address is in one of `allow_networks`: an operator's own media server): an
address written in the URL is checked before connecting; a name is resolved by
`_PublicResolver`, which drops such addresses, and aiohttp connects to the addresses
it returned, so a name that resolves differently a second time (DNS rebinding) cannot
reach past the check. Proxies from the environment are not used.

Results are cached per URL (`cache_size` URLs, a good one for `good_ttl` seconds, a
refused one for `bad_ttl`), and checks of one URL running at the same time share one
request. The size is kept, not the verdict on it, so profiles with different limits
share an entry.

A refused URL raises `MediaError` naming it: ``media[1] https://x/y.html: content
type text/html is not image, audio, video or text/vcard``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from router.errors import RouterError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_MEDIA",
    "Media",
    "MediaChecker",
    "MediaError",
    "MediaFieldError",
    "address_problem",
    "parse_media",
]

MAX_MEDIA = 10  # URLs per message (Twilio's limit, and the carriers')
MAX_URL_LENGTH = 2_048  # as a job's other URLs (router/policy/jobs.py)
DEFAULT_MAX_BYTES = 5 * 1024 * 1024  # a profile's mms_max_bytes unless set
TIMEOUT = 5.0  # seconds for one URL, redirects included
MAX_REDIRECTS = 5
CACHE_SIZE = 10_000
GOOD_TTL = 600.0  # seconds a URL found good stays good
BAD_TTL = 60.0  # seconds a refused URL stays refused (the sender may fix it)
# Answers to HEAD after which a ranged GET is tried (see the module docstring).
_HEAD_REFUSED = frozenset({403, 405, 501})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TYPES = ("image/", "audio/", "video/")
_VCARD = frozenset({"text/vcard", "text/x-vcard"})


class MediaError(RouterError, ValueError):
    """A media URL that may not be sent: `index` (0-based in the job's ``media``),
    `url` and `reason`; the message names all three."""

    code = "media_refused"

    def __init__(self, index: int, url: str, reason: str) -> None:
        super().__init__(f"media[{index}] {url}: {reason}")
        self.index = index
        self.url = url
        self.reason = reason


class MediaFieldError(RouterError, ValueError):
    """A job's ``media`` field of the wrong shape: `field` (``media`` or
    ``media[<index>]``) and the `problem`."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Media:
    """What a media URL's server said about it: its content type and size in bytes
    (None: the server did not say)."""

    url: str
    content_type: str
    size: int | None


def parse_media(value: Any) -> tuple[str, ...]:
    """A job's ``media`` as a tuple of URLs, or MediaFieldError naming what is wrong
    (``media[2]: ...``): a list of 1 to `MAX_MEDIA` absolute http(s) URLs, each at
    most `MAX_URL_LENGTH` characters. The wire format's decoder turns it into its own
    error for the field (`JobError(exc.field, exc.problem)`)."""
    if not isinstance(value, list | tuple):
        raise MediaFieldError("media", f"must be a list of 1 to {MAX_MEDIA} http(s) URLs")
    if not 1 <= len(value) <= MAX_MEDIA:
        raise MediaFieldError("media", f"must hold 1 to {MAX_MEDIA} URLs, not {len(value)}")
    for index, url in enumerate(value):
        if not isinstance(url, str):
            raise MediaFieldError(f"media[{index}]", "must be a string")
        if len(url) > MAX_URL_LENGTH:
            raise MediaFieldError(f"media[{index}]", f"longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise MediaFieldError(f"media[{index}]", f"not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MediaFieldError(f"media[{index}]", "must be an absolute http:// or https:// URL")
        if any(c.isspace() or ord(c) < 0x20 for c in url):
            raise MediaFieldError(f"media[{index}]", "contains spaces or control characters")
    return tuple(value)


_PRIVATE_NOTE = "(allowed only with [router] media_allow_private)"


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def address_problem(address: str, allowed: Networks = ()) -> str | None:
    """Why `address` (an IP address, IPv4 or IPv6, as text) may not be fetched from
    (``127.0.0.1 is a loopback address ...``), or None when it is a public unicast
    address or in one of the `allowed` networks."""
    kind = _kind(address, allowed)
    return None if kind is None else f"{address} is {kind} {_PRIVATE_NOTE}"


def _kind(address: str, allowed: Networks = ()) -> str | None:
    """``a loopback address`` (and the like) for an address not to fetch from; None
    for a public unicast one or one in the `allowed` networks."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is no part
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
    if any(ip in network for network in allowed):
        return None
    for kind, found in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        # Shared address space (100.64/10), benchmarking ranges and the like.
        ("non-public", not ip.is_global),
    ):
        if found:
            return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
    return None


class _Refused(OSError):
    """Raised inside aiohttp's connector when a name resolves to no allowed address
    (an OSError, so aiohttp reports it as a failed resolution carrying this one)."""


class _PublicResolver(AbstractResolver):
    """aiohttp's resolver that keeps only public addresses: the connector connects to
    what this returns, so the check and the connection use the same address."""

    def __init__(self, allowed: Networks = ()) -> None:
        self._inner = aiohttp.DefaultResolver()
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [item for item in found if _kind(item["host"], self._allowed) is None]
        if not kept:
            if not found:
                raise _Refused(f"{host} resolves to no address")
            first = found[0]["host"]
            raise _Refused(f"{host} resolves to {first}, {_kind(first)} {_PRIVATE_NOTE}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class _Bad(Exception):
    """A URL found bad (cached for the shorter time); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Cached:
    until: float  # time.monotonic() when it is forgotten
    media: Media | None
    reason: str = ""  # why a URL is bad (media None)


class MediaChecker:
    """Checks media URLs (see the module docstring); one per daemon (it holds an HTTP
    session and the cache). `close` it when done."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allow_networks: Sequence[str] = (),
        timeout: float = TIMEOUT,
        max_redirects: int = MAX_REDIRECTS,
        cache_size: int = CACHE_SIZE,
        good_ttl: float = GOOD_TTL,
        bad_ttl: float = BAD_TTL,
    ) -> None:
        self.allow_private = allow_private
        # Networks fetched from even without allow_private (an operator's own media
        # server on 10.1.2.0/24, say); ValueError for one that is not a network.
        self.allow_networks: Networks = tuple(
            ipaddress.ip_network(net, strict=False) for net in allow_networks
        )
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.cache_size = cache_size
        self.good_ttl = good_ttl
        self.bad_ttl = bad_ttl
        self.requests = 0  # HTTP requests made (HEAD and GET), for metrics and tests
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._running: dict[str, asyncio.Task[_Cached]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def check(self, urls: Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES) -> list[Media]:
        """Each URL's `Media`, in order, when every one may be sent (the URLs checked at
        the same time); else MediaError naming the first refused one."""
        found = await asyncio.gather(*(self._lookup(url) for url in urls))
        out: list[Media] = []
        for index, (url, entry) in enumerate(zip(urls, found, strict=True)):
            if entry.media is None:
                raise MediaError(index, url, entry.reason)
            size = entry.media.size
            if size is not None and size > max_bytes:
                raise MediaError(
                    index, url, f"{_bytes(size)} is larger than the limit of {_bytes(max_bytes)}"
                )
            out.append(entry.media)
        return out

    async def close(self) -> None:
        """Stop the checks running and close the HTTP session (a later check opens
        another)."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self) -> None:
        """Empty the cache (a configuration reload that changes `allow_private`)."""
        self._cache.clear()

    async def _lookup(self, url: str) -> _Cached:
        cached = self._cache.get(url)
        if cached is not None:
            if cached.until > time.monotonic():
                self._cache.move_to_end(url)
                return cached
            del self._cache[url]
        task = self._running.get(url)
        if task is None:
            # A task of its own: a caller that is cancelled does not cancel the check
            # others wait for, and its result is cached all the same.
            task = asyncio.get_running_loop().create_task(self._probe(url), name="media-check")
            self._running[url] = task
            task.add_done_callback(lambda _: self._running.pop(url, None))
        return await asyncio.shield(task)

    async def _probe(self, url: str) -> _Cached:
        try:
            async with asyncio.timeout(self.timeout):
                media = await self._fetch(url)
            entry = _Cached(time.monotonic() + self.good_ttl, media)
        except _Bad as exc:
            entry = _Cached(time.monotonic() + self.bad_ttl, None, exc.reason)
        except TimeoutError:
            reason = f"no answer within {self.timeout:g} s"
            entry = _Cached(time.monotonic() + self.bad_ttl, None, reason)
        self._remember(url, entry)
        return entry

    def _remember(self, url: str, entry: _Cached) -> None:
        self._cache[url] = entry
        self._cache.move_to_end(url)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver: AbstractResolver = (
                aiohttp.DefaultResolver()
                if self.allow_private
                else _PublicResolver(self.allow_networks)
            )
            connector = aiohttp.TCPConnector(resolver=resolver, limit=64, limit_per_host=4)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                trust_env=False,  # no proxy from the environment: it would fetch for us
                headers={"User-Agent": "sms-router media check"},
                auto_decompress=False,
            )
        return self._session

    async def _fetch(self, url: str) -> Media:
        """Follow `url`'s redirects, checking each hop; the final answer's Media."""
        target = url
        for _hop in range(self.max_redirects + 1):
            try:
                self._check_target(target)
                status, headers = await self._ask(target, "HEAD")
                ranged = status in _HEAD_REFUSED
                if ranged:
                    status, headers = await self._ask(target, "GET")
                if status in _REDIRECTS:
                    location = headers.get("Location")
                    if not location:
                        raise _Bad(f"answered {status} without a Location")
                    target = str(URL(target).join(URL(location)))
                    continue
                if not 200 <= status < 300:
                    raise _Bad(f"answered HTTP {status}")
                media = self._media(url, headers)
                if media.size is None and not ranged:
                    # No length to a HEAD (a streamed answer): the ranged GET's
                    # Content-Range may give the total.
                    status, headers = await self._ask(target, "GET")
                    if 200 <= status < 300:
                        media = Media(url, media.content_type, _size(headers))
                return media
            except _Bad as exc:
                if target != url:
                    raise _Bad(f"redirected to {target}: {exc.reason}") from None
                raise
        raise _Bad(f"more than {self.max_redirects} redirects")

    def _check_target(self, target: str) -> None:
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Bad("not an http(s) URL")
        if self.allow_private:
            return
        host = parts.hostname
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: `_PublicResolver` checks what it resolves to
        problem = address_problem(host, self.allow_networks)
        if problem is not None:
            raise _Bad(problem)

    async def _ask(self, target: str, method: str) -> tuple[int, Any]:
        """One request's status and headers; the body is never read."""
        headers = {"Range": "bytes=0-0"} if method == "GET" else {}
        self.requests += 1
        try:
            async with self._http().request(
                method, URL(target), headers=headers, allow_redirects=False
            ) as response:
                status, found = response.status, response.headers.copy()
                response.close()  # drop the connection rather than read a body
                return status, found
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, _Refused):
                raise _Bad(str(exc.os_error)) from None
            raise _Bad(f"cannot resolve {urlsplit(target).hostname}") from None
        except TimeoutError:
            raise  # the URL's time is up: said once, by _probe
        except aiohttp.InvalidURL as exc:
            raise _Bad(f"not a usable URL ({exc})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _Bad(f"cannot be fetched: {type(exc).__name__} {exc}".rstrip()) from None

    def _media(self, url: str, headers: Any) -> Media:
        raw_type = headers.get("Content-Type", "")
        content_type = raw_type.split(";", 1)[0].strip().lower()
        if not content_type:
            raise _Bad("answered without a content type")
        if not (content_type.startswith(_TYPES) or content_type in _VCARD):
            raise _Bad(f"content type {content_type} is not image, audio, video or text/vcard")
        return Media(url, content_type, _size(headers))


def _size(headers: Any) -> int | None:
    """The file's size from a HEAD's Content-Length, or a ranged GET's Content-Range
    total (a 200 to the GET: its Content-Length); None when neither says."""
    ranged = headers.get("Content-Range", "")
    if ranged:
        total = ranged.rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = headers.get("Content-Length", "").strip()
    return int(length) if length.isdigit() else None


def _bytes(size: int) -> str:
    """A size for a person: 52,428,800 bytes (50.0 MB)."""
    if size >= 1024 * 1024:
        return f"{size:,} bytes ({size / (1024 * 1024):.1f} MB)"
    return f"{size:,} bytes"
