"""Web console sessions, kept in Redis so every instance (and API worker) knows them.

A session is made when a token signs in: its id (`secrets.token_urlsafe(32)`) is the
cookie's value and is never stored; Redis keeps a hash under the SHA-256 of the id
(`keys.console_session`) with the caller's name and kind (``key`` or ``account``),
the scopes it had, a fingerprint of the token, the CSRF token and the created and
last-seen times, and expires it `ttl` seconds after sign-in. Each request checks the
session against the configuration as it is now (`current`): a key or account that was
removed, or whose token changed, ends its sessions; its scopes are the configured ones.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from router.api.common import Who, who
from router.config import Scope, Settings
from router.store import keys
from router.store.connections import as_text

__all__ = ["Session", "end", "end_all", "find", "start"]

# The last-seen time is written at most this often (seconds), not on every poll.
_SEEN_EVERY: Final = 30.0


@dataclass(frozen=True)
class Session:
    """One signed-in operator: `id` (the cookie's value), who signed in and what
    they may do, the CSRF token each change must carry, and when it expires."""

    id: str
    name: str
    kind: str  # "key" or "account"
    scopes: tuple[Scope, ...]
    csrf: str
    created: float
    expires: float

    def holds(self, scope: Scope) -> bool:
        """Whether the session may do what `scope` allows (``admin`` implies all)."""
        return scope in self.scopes or "admin" in self.scopes

    def csrf_ok(self, given: str | None) -> bool:
        """Whether `given` is this session's CSRF token (constant-time)."""
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _token_of(settings: Settings, kind: str, name: str) -> str | None:
    """The token `name` signs in with now (None: no such key or account any more)."""
    if kind == "key":
        key = settings.api.keys.get(name)
        return None if key is None else key.token.get_secret_value()
    account = settings.accounts.get(name)
    if account is None or account.api_token is None:
        return None
    return account.api_token.get_secret_value()


def _scopes_of(settings: Settings, kind: str, name: str) -> tuple[Scope, ...]:
    if kind == "key":
        return tuple(settings.api.keys[name].scopes)
    return tuple(settings.accounts[name].scopes)


async def start(redis: Redis, settings: Settings, token: str, ttl: int) -> Session | None:
    """A new session for `token`, or None when the token is unknown (no key and no
    account has it). Any scope may sign in; pages check theirs."""
    found: Who | None = who(settings, token)
    if found is None:
        return None
    now = time.time()
    session = Session(
        id=secrets.token_urlsafe(32),
        name=found.name,
        kind="key" if found.caller is None else "account",
        scopes=found.scopes,
        csrf=secrets.token_urlsafe(32),
        created=now,
        expires=now + ttl,
    )
    key = keys.console_session(_digest(session.id))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            key,
            mapping={
                "name": session.name,
                "kind": session.kind,
                "scopes": ",".join(session.scopes),
                "token": _digest(token.strip()),
                "csrf": session.csrf,
                "created": f"{now:.3f}",
                "seen": f"{now:.3f}",
            },
        )
        pipe.expire(key, ttl)
        await pipe.execute()
    return session


async def find(redis: Redis, settings: Settings, session_id: str | None) -> Session | None:
    """The live session whose cookie value is `session_id`, or None (none, expired,
    ended, or its key or account was removed or given another token since)."""
    if not session_id or len(session_id) > 128:
        return None
    key = keys.console_session(_digest(session_id))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(key)
        pipe.ttl(key)
        raw, ttl = await pipe.execute()
    if not raw or int(ttl) <= 0:
        return None
    fields = {as_text(k): as_text(v) for k, v in raw.items()}
    kind, name = fields.get("kind", ""), fields.get("name", "")
    token = _token_of(settings, kind, name)
    if token is None or not hmac.compare_digest(_digest(token.strip()), fields.get("token", "")):
        await redis.delete(key)  # the key or account is gone or has another token
        return None
    now = time.time()
    if now - float(fields.get("seen", "0")) > _SEEN_EVERY:
        await redis.hset(key, "seen", f"{now:.3f}")
    return Session(
        id=session_id,
        name=name,
        kind=kind,
        scopes=_scopes_of(settings, kind, name),
        csrf=fields["csrf"],
        created=float(fields.get("created", "0")),
        expires=now + int(ttl),
    )


async def end(redis: Redis, session: Session) -> None:
    """End `session` (sign-out): its cookie is refused from now on, everywhere."""
    await redis.delete(keys.console_session(_digest(session.id)))


async def end_all(redis: Redis) -> int:
    """End every console session; returns how many there were."""
    found = [k async for k in redis.scan_iter(match=keys.console_sessions_pattern(), count=500)]
    if not found:
        return 0
    return int(await redis.delete(*found))
