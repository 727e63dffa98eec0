"""``[router] redis`` URLs for Redis Sentinel and Redis Cluster.

``redis+sentinel://h1:26379,h2:26379/svc/0``: the sentinels' addresses, the monitored
service's name and the database number. ``redis+cluster://h1:7000,h2:7001``: seed
nodes of a Redis Cluster (any one that answers names the others; a cluster has only
database 0). No password in either URL: it would show wherever the URL is logged; the
data nodes' password is ``[router] redis_password`` (``env:NAME`` / ``file:PATH``).
"""

from __future__ import annotations

from dataclasses import dataclass

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


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
    sentinels, _, path = _split(value, SENTINEL_SCHEME, "sentinel")
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError("must name the service after the addresses: .../mymaster/0")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("must end with /<service> or /<service>/<db number>")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelUrl(sentinels, parts[0], db)


def _split(value: str, scheme: str, what: str) -> tuple[tuple[tuple[str, int], ...], str, str]:
    """A multi-host URL's addresses (each a `what`), then '/' (or '') and the path."""
    if not value.startswith(f"{scheme}://"):
        raise ValueError(f"must start with {scheme}://")
    rest = value.removeprefix(f"{scheme}://")
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query or fragment (the password is router.redis_password)")
    hosts, slash, path = rest.partition("/")
    if "@" in hosts:
        # Said without echoing the URL: it holds a password.
        raise ValueError("must not hold a password; set router.redis_password instead")
    return _addresses(hosts, what), slash, path


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """Seed nodes of a Redis Cluster: the client asks them for the slot map."""

    nodes: tuple[tuple[str, int], ...]


def is_cluster_url(value: str) -> bool:
    """Whether `value` names a Redis Cluster."""
    return value.startswith(f"{CLUSTER_SCHEME}://")


def parse_cluster_url(value: str) -> ClusterUrl:
    """Parse a ``redis+cluster://`` URL; ValueError says what is wrong (never a secret)."""
    nodes, slash, path = _split(value, CLUSTER_SCHEME, "cluster node")
    if slash and path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: end with the addresses or /0")
    return ClusterUrl(nodes)


def _addresses(hosts: str, what: str) -> tuple[tuple[str, int], ...]:
    """``h1:p1,h2:p2,[::1]:p3`` as (host, port) pairs; ValueError names the bad one."""
    found: list[tuple[str, int]] = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} address {address!r} must be host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)
