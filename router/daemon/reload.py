"""Reload (SIGHUP): apply a new configuration to a running daemon, profile by profile.

The new file is validated before anything changes (router/daemon/daemon.py). Then:
profiles removed are retired (in-flight messages finish, binds close); profiles
added are built and started; a profile whose own table, or a table every profile
reads (campaigns, numbers, templates, queue; `[links]` for the profiles that shorten
their URLs), changed gets a new worker. Its binds
carry on when their connection settings are the same (`runtime.reusable_binds`): an
SMPP session stays bound, taking the new window, rate and processing mode in place;
otherwise they are closed after the old worker drained and new ones are bound.
What only a restart can change (`[router]`, `[api] listen`) is logged and kept.

Each reload's verdict (applied, with what changed, or refused, with the problems) is
published in Redis under `verdict_key(instance)`, where `sms-router reload` waits for
it: the command line then says what the daemon did instead of only sending a signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis

from router.config import Settings
from router.daemon.runtime import BindFactory, ProfileRuntime, Shared, build, reusable_binds
from router.policy.routes import RouteTable
from router.store.outages import REDIS_ERRORS

log = structlog.get_logger("router.reload")

_SHARED_TABLES = ("campaigns", "numbers", "templates", "queue", "inbound_routes", "routes")
VERDICT_TTL = 86_400  # seconds a verdict is kept (the last one per instance)


def verdict_key(instance: str) -> str:
    """Where an instance publishes the verdict of its last reload (one per instance)."""
    return f"sms:reload:{instance}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one reload did: `applied`, else the `problems` that refused it. `began` is
    the wall-clock time the daemon started it (read the file), `changes` what changed
    (profiles added, removed, updated; what waits for a restart)."""

    instance: str
    pid: int
    began: float
    config: str | None
    applied: bool
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Verdict:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            instance=str(data["instance"]),
            pid=int(data["pid"]),
            began=float(data["began"]),
            config=data.get("config"),
            applied=bool(data["applied"]),
            problems=[str(p) for p in data.get("problems", [])],
            changes=[str(c) for c in data.get("changes", [])],
        )


async def publish_verdict(
    redis: Redis,
    instance: str,
    *,
    began: float,
    config: str | None,
    problems: list[str],
    changes: list[str] | None = None,
) -> None:
    """Store the verdict of a reload (applied when there are no `problems`) for
    `sms-router reload`; a Redis outage only costs the command line its answer."""
    verdict = Verdict(
        instance, os.getpid(), began, config, not problems, list(problems), list(changes or [])
    )
    try:
        await redis.set(verdict_key(instance), json.dumps(asdict(verdict)), ex=VERDICT_TTL)
    except REDIS_ERRORS as exc:
        log.warning("reload verdict not stored (Redis)", error=repr(exc))


async def read_verdict(redis: Redis, instance: str) -> Verdict | None:
    """The last reload verdict an instance published, if any."""
    raw = await redis.get(verdict_key(instance))
    return Verdict.from_json(raw) if raw else None


async def wait_for_verdict(
    redis: Redis, instance: str, pid: int, since: float, within: float
) -> Verdict | None:
    """The verdict of a reload daemon `pid` began at or after `since` (wall clock),
    or None when none came within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        verdict = await read_verdict(redis, instance)
        if verdict is not None and verdict.pid == pid and verdict.began >= since:
            return verdict
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.1)


class Reloader:
    """Moves `runtimes` from the `old` settings to the `new` ones."""

    def __init__(
        self,
        old: Settings,
        new: Settings,
        runtimes: dict[str, ProfileRuntime],
        shared: Shared,
        make_binds: BindFactory,
    ) -> None:
        self.old = old
        self.runtimes = runtimes
        self.shared = shared
        self.make_binds = make_binds
        self.changes: list[str] = []  # what changed, for the verdict (`publish_verdict`)
        self.settings = self._effective(old, new)

    def _effective(self, old: Settings, new: Settings) -> Settings:
        """`new`, except what only a restart applies (kept as it was, with a warning)."""
        if new.router != old.router:
            log.warning("reload: [router] changes need a restart; kept as they were")
            self.changes.append("[router] changed: needs a restart, kept as it was")
        api = new.api
        if api.listen != old.api.listen:
            log.warning("reload: api.listen changes need a restart; kept as it was")
            self.changes.append("api.listen changed: needs a restart, kept as it was")
            api = api.model_copy(update={"listen": old.api.listen})
        if api.workers != old.api.workers:
            log.warning("reload: api.workers changes need a restart; kept as it was")
            self.changes.append("api.workers changed: needs a restart, kept as it was")
            api = api.model_copy(update={"workers": old.api.workers})
        sendsms = new.sendsms
        if sendsms.listen != old.sendsms.listen:
            log.warning("reload: sendsms.listen changes need a restart; kept as it was")
            self.changes.append("sendsms.listen changed: needs a restart, kept as it was")
            sendsms = sendsms.model_copy(update={"listen": old.sendsms.listen})
        smpp_server = new.smpp_server
        if smpp_server != old.smpp_server:
            # The listener, its TLS files and timers; accounts reload (SmppServer.configure).
            log.warning("reload: [smpp_server] changes need a restart; kept as they were")
            self.changes.append("[smpp_server] changed: needs a restart, kept as it was")
            smpp_server = old.smpp_server
        connectors = new.connectors
        if connectors != old.connectors:
            # Their sessions are shared by profiles that go on sending meanwhile.
            log.warning("reload: [connectors] changes need a restart; kept as they were")
            self.changes.append("[connectors] changed: needs a restart, kept as they were")
            connectors = old.connectors
        return new.model_copy(
            update={
                "router": old.router,
                "api": api,
                "connectors": connectors,
                "sendsms": sendsms,
                "smpp_server": smpp_server,
            }
        )

    async def apply(self) -> None:
        """Retire, rebuild and start what changed; leave the rest running untouched."""
        new, old = self.settings, self.old
        grace = new.router.shutdown_grace
        everything = any(getattr(new, t) != getattr(old, t) for t in _SHARED_TABLES)
        # `[links]` is read by the profiles that shorten (their compose stage): those
        # get a new worker when it changes; links already made keep working (a code
        # resolves whatever base_url is now).
        links = new.links != old.links
        self.shared.table = RouteTable(new)
        for name in [n for n in self.runtimes if n not in new.profiles]:
            runtime = self.runtimes.pop(name)
            left = await runtime.retire(grace, close_binds=True)
            self.shared.providers.pop(name, None)
            self.shared.sides.pop(name, None)
            log.info("reload: profile removed", profile=name, left_pending=left)
            self.changes.append(f"profile {name} removed")
        for name, profile in new.profiles.items():
            current = self.runtimes.get(name)
            if current is None:
                runtime = await build(name, new, self.shared, make_binds=self.make_binds)
                self.runtimes[name] = runtime
                runtime.run()
                log.info("reload: profile added", profile=name)
                self.changes.append(f"profile {name} added")
                continue
            shortens = profile.shorten or old.profiles[name].shorten
            if profile == old.profiles[name] and not everything and not (links and shortens):
                continue
            keep = reusable_binds(old.profiles[name], profile)
            left = await current.retire(grace, close_binds=not keep)
            runtime = await build(
                name,
                new,
                self.shared,
                handed=current if keep else None,
                make_binds=self.make_binds,
            )
            self.runtimes[name] = runtime
            runtime.run()
            log.info(
                "reload: profile updated",
                profile=name,
                binds="kept" if keep else "rebuilt",
                left_pending=left,
            )
            binds = "binds kept" if keep else "binds rebuilt"
            self.changes.append(f"profile {name} updated ({binds})")
        log.info("configuration reloaded", profiles=list(self.runtimes))
