"""One profile's running parts: its binds, its worker, its inbound poster, their tasks.

The daemon holds one `ProfileRuntime` per profile. Start-up builds and starts them;
a reload (SIGHUP) retires the ones whose profile went away or changed and builds
new ones, handing the binds over when their connection settings did not change so
SMPP sessions stay bound (`reusable_binds`); shutdown retires them all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from redis.asyncio import Redis

from binds.base import Bind
from binds.smpp import DeliverHandler, DeliverManyHandler, SmppBind
from binds.smpp.pdu import ESME_RX_T_APPN, ShortMessage
from router.api.providers import ProviderHooks, status_callback_url
from router.config import Connector, Profile, Settings, SmppSection
from router.engine.connectors import ConnectorRuntime
from router.engine.inbound import CallbackPoster, Inbound
from router.engine.keywords import Keywords
from router.engine.receipts import Reports
from router.engine.routing import Routing
from router.engine.shared import ProfileSide, Recent, SharedDeliveries
from router.engine.worker import ProfileWorker
from router.metrics import Metrics
from router.policy.routes import RouteTable
from router.store.health import QualityBoard
from router.store.ledger import Ledger
from router.store.outages import REDIS_DOWN, RedisOutages

log = structlog.get_logger("router.runtime")


class BindFactory(Protocol):
    """Builds a profile's binds (`build_binds` in router/daemon/wiring.py)."""

    def __call__(
        self,
        name: str,
        profile: Profile | Connector,
        settings: Settings,
        on_deliver: DeliverHandler | None = None,
        *,
        on_deliver_many: DeliverManyHandler | None = None,
        status_callback: str | None = None,
    ) -> list[Bind]: ...


@dataclass
class Shared:
    """What every profile's parts use: Redis, the ledger, who we are."""

    redis: Redis
    ledger: Ledger
    instance: str
    outages: RedisOutages
    # Profile -> what its provider's webhooks feed (the API's `PROVIDERS`).
    providers: dict[str, ProviderHooks] = field(default_factory=dict)
    api_port: int | None = None  # the API's bound port, once it listens
    metrics: Metrics | None = None
    # The ``[connectors]`` (an inline profile's own connector is its runtime's), the
    # route table, and each profile's receipt and inbound handlers (what arrives on a
    # shared connector finds its profile there).
    connectors: dict[str, ConnectorRuntime] = field(default_factory=dict)
    table: RouteTable | None = None
    sides: dict[str, ProfileSide] = field(default_factory=dict)
    settings: Settings | None = None  # the configuration now (a reload replaces it)
    quality: QualityBoard | None = None  # delivery ratios for `quality` routes


@dataclass
class ProfileRuntime:
    """A profile's binds, worker and inbound poster, and the tasks running them."""

    name: str
    profile: Profile
    binds: list[Bind]
    worker: ProfileWorker
    reports: Reports | None = None
    inbound: Inbound | None = None
    poster: CallbackPoster | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    poster_task: asyncio.Task[None] | None = None
    own: ConnectorRuntime | None = None  # an inline profile's own connector

    def run(self) -> list[asyncio.Task[None]]:
        """Start serving: the worker's read and maintenance loops, the poster, the
        watch over its own connector's health."""
        self.tasks = [
            asyncio.create_task(self.worker.serve(self.stop), name=f"serve {self.name}"),
            asyncio.create_task(self.worker.maintain(self.stop), name=f"maintain {self.name}"),
        ]
        if self.own is not None:
            self.tasks.append(asyncio.create_task(self.own.watch(self.stop)))
        if self.poster is not None:
            self.poster_task = asyncio.create_task(self.poster.run(self.stop))
        return self.all_tasks()

    def all_tasks(self) -> list[asyncio.Task[None]]:
        return self.tasks + ([self.poster_task] if self.poster_task is not None else [])

    def request_stop(self) -> None:
        self.stop.set()
        self.worker.wake()

    async def retire(self, grace: float, *, close_binds: bool) -> int:
        """Stop reading, let in-flight messages finish within `grace`, stop the poster;
        close the binds unless they are handed on. Returns entries left pending."""
        self.request_stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        left = await self.worker.drain(grace)
        if self.poster_task is not None:
            await asyncio.gather(self.poster_task, return_exceptions=True)
        if close_binds:
            await asyncio.gather(*(bind.close() for bind in self.binds), return_exceptions=True)
        return left


def deliver_handler(reports: Reports, inbound: Inbound, outages: RedisOutages) -> DeliverHandler:
    """What a session does with a deliver_sm: a receipt or an inbound message."""

    async def on_deliver(bind: str, message: ShortMessage) -> int:
        try:
            if message.is_receipt:
                return await reports.handle(message)
            return await inbound.handle(message)
        except REDIS_DOWN as exc:
            # Not stored: the SMSC resends it later. The outage is logged once, not per PDU.
            outages.down(f"storing deliver_sm of {bind}", exc)
            return ESME_RX_T_APPN

    return on_deliver


def deliver_many_handler(
    reports: Reports, inbound: Inbound, outages: RedisOutages
) -> DeliverManyHandler:
    """What a session does with the deliver_sm of one read: the receipts' reports go to
    Redis together (one task and one batch for them, not one each); inbound messages
    each on its own, as `deliver_handler` stores them. If Redis is down, all are refused
    for resend."""
    one = deliver_handler(reports, inbound, outages)

    async def on_deliver_many(bind: str, messages: list[ShortMessage]) -> list[int]:
        if not all(m.is_receipt for m in messages):
            # Inbound messages among them: each stored on its own, as they always were.
            return await asyncio.gather(*(one(bind, message) for message in messages))
        try:
            return await reports.handle_many(messages)
        except REDIS_DOWN as exc:
            outages.down(f"storing deliver_sm of {bind}", exc)
            return [ESME_RX_T_APPN] * len(messages)

    return on_deliver_many


def _provider_side(
    name: str, settings: Settings, shared: Shared
) -> tuple[Reports, Inbound | None, str | None]:
    """Reports (and, for Twilio or a Web-URL provider with ``http.inbound``, inbound
    messages) of a profile whose provider reports over HTTP, registered for the API's
    provider webhooks; and the StatusCallback URL a Twilio bind gives (None without the
    API)."""
    profile = settings.profiles[name]
    twilio = profile.twilio
    callback = None
    if twilio is not None and shared.api_port is not None:
        callback = status_callback_url(settings, name, shared.api_port)
    # Twilio reports every message it was given a StatusCallback for.
    wait = twilio.report_timeout if twilio is not None and callback is not None else 0.0
    metrics = shared.metrics.profile(name) if shared.metrics is not None else None
    reports = Reports(
        shared.redis,
        shared.ledger,
        name,
        id_format="as-is",
        report_timeout=wait,
        metrics=metrics,
    )
    inbound: Inbound | None = None
    if twilio is not None or (profile.http is not None and profile.http.inbound is not None):
        inbound = Inbound(
            shared.redis,
            name,
            forward=profile.direction == "both",
            reassembly_timeout=300.0,  # unused: webhooks deliver whole messages
            keywords=Keywords(name, profile, shared.ledger),
            events_maxlen=settings.queue.events_maxlen,
        )
    shared.providers[name] = ProviderHooks(reports, inbound)
    return reports, inbound, callback


def reusable_binds(old: Profile, new: Profile) -> bool:
    """Whether `new` can keep `old`'s binds: same protocol and the same connection and
    encoding settings (`window`, `tps` and `processing` are adjusted in place)."""
    return old.protocol == new.protocol == "smpp" and old.smpp == new.smpp


async def build(
    name: str,
    settings: Settings,
    shared: Shared,
    *,
    handed: ProfileRuntime | None = None,
    make_binds: BindFactory,
) -> ProfileRuntime:
    """A profile's parts, started (entries of this consumer taken back). With
    `handed`, its binds (and their receipt and inbound handlers) carry on. A profile
    without an inline protocol has no binds of its own: it sends over the shared
    connectors its routes name."""
    profile = settings.profiles[name]
    assert shared.table is not None
    reports, inbound, binds = await _own_binds(name, settings, shared, handed, make_binds)
    own: ConnectorRuntime | None = None
    connectors = shared.connectors
    if profile.protocol is None:
        reports, inbound = _routed_side(name, settings, shared)
    else:
        assert profile.connector is not None
        own = ConnectorRuntime(name, profile.connector, binds)
        connectors = {**connectors, name: own}
    if reports is not None:
        shared.sides[name] = ProfileSide(reports, inbound)
    poster = None
    if inbound is not None and profile.callback_url and profile.direction == "both":
        poster = CallbackPoster(
            shared.redis,
            name,
            profile.callback_url,
            consumer=shared.instance,
            inbound=inbound,
            timeout=settings.router.callback_timeout,
            outages=shared.outages,
            webhook_key=profile.webhook_key,
            routes=settings.inbound_routes,
        )
    worker = ProfileWorker(
        redis=shared.redis,
        name=name,
        settings=settings,
        routing=Routing(name, shared.table, connectors, quality=shared.quality),
        ledger=shared.ledger,
        consumer=shared.instance,
        reports=reports,
        outages=shared.outages,
        metrics=shared.metrics.profile(name) if shared.metrics is not None else None,
    )
    runtime = ProfileRuntime(name, profile, binds, worker, reports, inbound, poster, own=own)
    await worker.start()
    return runtime


async def _own_binds(
    name: str,
    settings: Settings,
    shared: Shared,
    handed: ProfileRuntime | None,
    make_binds: BindFactory,
) -> tuple[Reports | None, Inbound | None, list[Bind]]:
    """An inline profile's binds (started) and their receipt and inbound handlers;
    `handed` ones adjusted to the new settings. Nothing for a routed profile."""
    profile = settings.profiles[name]
    if profile.protocol is None:
        return None, None, []
    if handed is not None:
        if handed.inbound is not None:
            handed.inbound.forward = profile.direction == "both"
            handed.inbound.keywords = Keywords(name, profile, shared.ledger)
        for bind in handed.binds:
            if isinstance(bind, SmppBind):
                bind.adjust(
                    window=profile.window, tps=profile.tps, sync=profile.processing == "sync"
                )
        return handed.reports, handed.inbound, handed.binds
    handler: DeliverHandler | None = None
    many: DeliverManyHandler | None = None
    reports: Reports | None = None
    inbound: Inbound | None = None
    if profile.smpp is not None:
        reports, inbound = _smpp_side(name, settings, shared, profile.smpp)
        handler = deliver_handler(reports, inbound, shared.outages)
        many = deliver_many_handler(reports, inbound, shared.outages)
    status_callback: str | None = None
    if profile.twilio is not None or (
        profile.http is not None and (profile.http.reports or profile.http.inbound)
    ):
        reports, inbound, status_callback = _provider_side(name, settings, shared)
    binds = make_binds(
        name, profile, settings, handler, on_deliver_many=many, status_callback=status_callback
    )
    for bind in binds:
        await bind.start()
    return reports, inbound, binds


def _smpp_side(
    name: str, settings: Settings, shared: Shared, smpp: SmppSection | None
) -> tuple[Reports, Inbound]:
    """Receipts and inbound messages of `name` arriving over SMPP sessions `smpp`
    (None: over connectors that compare provider ids as they are, with no report due)."""
    profile = settings.profiles[name]
    reports = Reports(
        shared.redis,
        shared.ledger,
        name,
        id_format=smpp.message_id_format if smpp is not None else "as-is",
        report_timeout=smpp.report_wait if smpp is not None else 0.0,
        metrics=shared.metrics.profile(name) if shared.metrics is not None else None,
    )
    # Sessions that ask for no receipt (registered_delivery bits 1-0 and 4 clear): no
    # provider-id index for a report that never comes (~200 B a message for the whole
    # retention). Shared connectors (smpp None) may each ask differently: indexed.
    shared.ledger.index_provider_ids(name, smpp is None or smpp.registered_delivery & 0x13 != 0)
    inbound = Inbound(
        shared.redis,
        name,
        forward=profile.direction == "both",
        reassembly_timeout=smpp.reassembly_timeout if smpp is not None else 300.0,
        keywords=Keywords(name, profile, shared.ledger),
        events_maxlen=settings.queue.events_maxlen,
    )
    return reports, inbound


def _routed_side(name: str, settings: Settings, shared: Shared) -> tuple[Reports, Inbound]:
    """Receipt and inbound handlers of a profile without binds of its own, for what
    arrives for it on the shared connectors it routes to (the first SMPP one among
    them sets how provider ids are compared and how long a report is waited for)."""
    assert shared.table is not None
    connectors = [settings.all_connectors()[n] for n in shared.table.connectors_of(name)]
    smpp = next((c.smpp for c in connectors if c.smpp is not None), None)
    return _smpp_side(name, settings, shared, smpp)


async def build_connector(
    name: str, settings: Settings, shared: Shared, make_binds: BindFactory
) -> ConnectorRuntime:
    """A ``[connectors]`` entry's binds, started; what they receive finds its profile
    (router/engine/shared.py)."""
    connector = settings.connectors[name]
    assert shared.table is not None
    recent = Recent()

    def routed_here() -> list[str]:
        assert shared.table is not None
        return shared.table.profiles_of(name, list(shared.sides))

    handler = SharedDeliveries(
        name,
        redis=shared.redis,
        settings=lambda: shared.settings or settings,
        profiles=routed_here,
        sides=shared.sides,
        recent=recent,
    )

    async def on_deliver(bind: str, message: ShortMessage) -> int:
        try:
            return await handler(bind, message)
        except REDIS_DOWN as exc:
            shared.outages.down(f"storing deliver_sm of {bind}", exc)
            return ESME_RX_T_APPN

    status_callback: str | None = None
    web_inbound = connector.http is not None and connector.http.inbound is not None
    webhooks = (
        connector.twilio is not None
        or web_inbound
        or (connector.http is not None and connector.http.reports is not None)
    )
    if webhooks:
        # Its provider reports (and, Twilio or http.inbound, delivers inbound messages)
        # to /v1/providers/<connector>/…: the handler finds each one's profile.
        inbound = handler if connector.twilio is not None or web_inbound else None
        shared.providers[name] = ProviderHooks(handler, inbound)
        if connector.twilio is not None and shared.api_port is not None:
            status_callback = status_callback_url(settings, name, shared.api_port)
    binds = make_binds(name, connector, settings, on_deliver, status_callback=status_callback)
    for bind in binds:
        await bind.start()
    runtime = ConnectorRuntime(name, connector, binds)
    runtime.namespace = handler.namespace
    if len(shared.table.profiles_of(name, list(settings.profiles))) > 1:
        # Several profiles: remember which sent what (one added later by a reload
        # finds its reports through Redis instead).
        runtime.recent = recent
    return runtime
