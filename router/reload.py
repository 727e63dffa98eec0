"""Reload (SIGHUP): apply a new configuration to a running daemon, profile by profile.

The new file is validated before anything changes (router/daemon.py). Then:
profiles removed are retired (in-flight messages finish, binds close); profiles
added are built and started; a profile whose own table, or a table every profile
reads (campaigns, numbers, templates, queue), changed gets a new worker. Its binds
carry on when their connection settings are the same (`runtime.reusable_binds`): an
SMPP session stays bound, taking the new window, rate and processing mode in place;
otherwise they are closed after the old worker drained and new ones are bound.
What only a restart can change (`[router]`, `[api] listen`) is logged and kept.
"""

from __future__ import annotations

import structlog

from .config import Settings
from .runtime import BindFactory, ProfileRuntime, Shared, build, reusable_binds

log = structlog.get_logger("router.reload")

_SHARED_TABLES = ("campaigns", "numbers", "templates", "queue")


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
        self.settings = self._effective(old, new)

    def _effective(self, old: Settings, new: Settings) -> Settings:
        """`new`, except what only a restart applies (kept as it was, with a warning)."""
        if new.router != old.router:
            log.warning("reload: [router] changes need a restart; kept as they were")
        api = new.api
        if api.listen != old.api.listen:
            log.warning("reload: api.listen changes need a restart; kept as it was")
            api = api.model_copy(update={"listen": old.api.listen})
        return new.model_copy(update={"router": old.router, "api": api})

    async def apply(self) -> None:
        """Retire, rebuild and start what changed; leave the rest running untouched."""
        new, old = self.settings, self.old
        grace = new.router.shutdown_grace
        everything = any(getattr(new, t) != getattr(old, t) for t in _SHARED_TABLES)
        for name in [n for n in self.runtimes if n not in new.profiles]:
            runtime = self.runtimes.pop(name)
            left = await runtime.retire(grace, close_binds=True)
            self.shared.providers.pop(name, None)
            log.info("reload: profile removed", profile=name, left_pending=left)
        for name, profile in new.profiles.items():
            current = self.runtimes.get(name)
            if current is None:
                runtime = await build(name, new, self.shared, make_binds=self.make_binds)
                self.runtimes[name] = runtime
                runtime.run()
                log.info("reload: profile added", profile=name)
                continue
            if profile == old.profiles[name] and not everything:
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
        log.info("configuration reloaded", profiles=list(self.runtimes))
