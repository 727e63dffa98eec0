"""The SMPP server: listens on `[smpp_server] listen` (TLS with `cert` and `key`),
one `Session` per connection, and stops cleanly: no new connections, every bound
client asked to unbind once its submits being enqueued are answered, then closed."""

from __future__ import annotations

import asyncio
import ssl

import structlog
from pydantic import SecretStr
from redis.asyncio import Redis

from router.client import Client
from router.config import Settings, SmppServerSettings
from router.policy.accounts import Caller
from router.smpp_server.context import Context
from router.smpp_server.intake import Intake
from router.smpp_server.reassembly import Reassembly
from router.smpp_server.receipts import ReceiptRelay, ReceiptSender
from router.smpp_server.session import Session
from router.store.limits import AccountLimits
from router.store.outages import RedisOutages

__all__ = ["SmppServer"]

log = structlog.get_logger("router.smpp_server")


def tls_context(server: SmppServerSettings) -> ssl.SSLContext | None:
    """The TLS context of `cert` and `key`, None without them."""
    if server.cert is None or server.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    return context


class SmppServer:
    """Client applications bind here and submit (see router/smpp_server/__init__.py)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        client: Client | None = None,
        limits: AccountLimits | None = None,
        outages: RedisOutages | None = None,
    ) -> None:
        """`client`: the doors' `Client` to enqueue with (default: one of its own);
        `outages`: the daemon's, which the receipt loops report Redis outages to."""
        intake = Intake(
            settings,
            client if client is not None else Client.from_settings(redis, settings),
            limits if limits is not None else AccountLimits(redis),
        )
        outages = outages if outages is not None else RedisOutages(redis)
        reassembly = Reassembly(intake, settings.smpp_server.reassembly_timeout, outages=outages)
        self.context = Context(settings, intake, reassembly)
        self._server: asyncio.Server | None = None
        self.port = 0
        consumer = settings.router.instance_name
        # Receipts: final statuses -> accounts' receipt streams -> bound sessions.
        self.relay = ReceiptRelay(redis, lambda: self.context.settings, outages, consumer)
        self.receipts = ReceiptSender(
            redis, self._receiving, self._receiving_accounts, self._window, outages, consumer
        )

    def _receiving(self, account: str) -> list[Session]:
        """The account's sessions that take deliver_sm now."""
        bound = self.context.bound.get(account, ())
        return sorted(
            (s for s in bound if isinstance(s, Session) and s.receiving), key=lambda s: s.peer
        )

    def _receiving_accounts(self) -> list[str]:
        return [name for name in list(self.context.bound) if self._receiving(name)]

    def _window(self, account: str) -> int:
        config = self.context.settings.accounts.get(account)
        return config.window if config is not None else 1

    @property
    def sessions(self) -> list[Session]:
        """Open connections."""
        return [s for s in self.context.sessions if isinstance(s, Session)]

    def health(self) -> dict[str, object]:
        """For the daemon's health record: the port, open connections, sessions bound
        per account, long messages' parts being stored now, receipts and inbound
        messages relayed and sent."""
        return {
            "port": self.port,
            "connections": len(self.context.sessions),
            "bound": {name: len(sessions) for name, sessions in self.context.bound.items()},
            "held_parts": self.context.reassembly.held,
            "receipts_relayed": self.relay.relayed,
            "receipts_sent": self.receipts.sent,
            "inbound_relayed": self.relay.inbound_relayed,
            "inbound_sent": self.receipts.inbound_sent,
        }

    async def start(self) -> None:
        """Listen on `[smpp_server] listen` (its port 0: any free one, see `port`)."""
        server = self.context.settings.smpp_server
        assert server.listen is not None, "[smpp_server] listen is not set"
        host, _, port = server.listen.rpartition(":")
        tls = tls_context(server)
        context = self.context
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Session(context), host.strip("[]"), int(port), ssl=tls, reuse_address=True
        )
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        log.info("smpp server listening", host=host, port=self.port, tls=tls is not None)
        self.relay.start()
        self.receipts.start()
        self.context.reassembly.start()  # sweeps long messages past their time-out

    def configure(self, settings: Settings) -> None:
        """Take a reloaded configuration: accounts, limits and checks apply to the next
        submit; a session whose account is gone or whose password changed is closed."""
        old = self.context.settings.accounts
        self.context.settings = settings
        self.context.intake.configure(settings)
        self.context.reassembly.timeout = settings.smpp_server.reassembly_timeout
        self.relay.configure()  # profiles added or removed
        for session in self.sessions:
            caller = session.caller
            if caller is None:
                continue
            account = settings.accounts.get(caller.name)
            if account is None:
                session.close_now("account removed from the configuration")
            elif _password(account.smpp_password) != _password(old[caller.name].smpp_password):
                session.close_now("account's smpp_password changed")
            else:
                session.caller = Caller(caller.name, account)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting connections, unbind every client (submits being enqueued
        get their answers first, for up to `grace` seconds), close."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        # Receipts first: those sent and not answered stay pending for a later session.
        await self.receipts.stop()
        await self.relay.stop()
        sessions = self.sessions
        if sessions:
            log.info("smpp server stopping: unbinding clients", sessions=len(sessions))
        await asyncio.gather(*(s.unbind(grace) for s in sessions), return_exceptions=True)
        await self.context.reassembly.close()
        await server.wait_closed()
        log.info("smpp server stopped")


def _password(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
