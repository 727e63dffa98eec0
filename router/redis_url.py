"""``[router] redis`` URLs for Redis Sentinel: ``redis+sentinel://h1:26379,h2:26379/svc/0``.

The sentinels' addresses, the monitored service's name and the database number. No
password in the URL: it would show wherever the URL is logged; the data nodes'
password is ``[router] redis_password`` (``env:NAME`` / ``file:PATH``).
"""

from __future__ import annotations

from dataclasses import dataclass

SENTINEL_SCHEME = "redis+sentinel"


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """Where the sentinels are and which service (master) they watch."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0


def is_sentinel_url(value: str) -> bool:
    """Whether `value` names a Sentinel-watched master."""
    return value.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(value: str) -> SentinelUrl:
    """Parse a ``redis+sentinel://`` URL; ValueError says what is wrong (never a secret)."""
    if not is_sentinel_url(value):
        raise ValueError(f"must start with {SENTINEL_SCHEME}://")
    rest = value.removeprefix(f"{SENTINEL_SCHEME}://")
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query or fragment (the password is router.redis_password)")
    hosts, _, path = rest.partition("/")
    if "@" in hosts:
        # Said without echoing the URL: it holds a password.
        raise ValueError("must not hold a password; set router.redis_password instead")
    sentinels: list[tuple[str, int]] = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {address!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError("must name the service after the addresses: .../mymaster/0")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("must end with /<service> or /<service>/<db number>")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelUrl(tuple(sentinels), parts[0], db)
