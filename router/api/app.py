"""The daemon's HTTP application: the endpoint groups registered on one aiohttp app,
the liveness and readiness probes, and the server that runs it on `[api] listen`;
and Kannel's sendsms alone on `[sendsms] listen` (`SendsmsServer`), for applications
that expect Kannel's own port."""

from __future__ import annotations

import structlog
from aiohttp import web

from router import console
from router.api import (
    events,
    links,
    messages,
    metrics,
    profiles,
    providers,
    routes,
    sendsms,
    twilio,
)
from router.api.common import CONTEXT, ApiContext, json_response, middleware
from router.api.forward import in_daemon
from router.store.outages import REDIS_ERRORS

__all__ = ["ApiServer", "SendsmsServer", "build_app"]

log = structlog.get_logger("router.api")
# The longest request line taken (aiohttp's default is 8 KiB): Kannel's sendsms puts the
# whole text in the query string, and a long UCS-2 text written as %XX escapes passes 8 KiB.
MAX_LINE = 65_536


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answers."""
    return json_response({"status": "ok"})


@in_daemon  # the profiles' workers run in the daemon
async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis answers and every profile can send (a bound session or an
    HTTP sender)."""
    context = request.app[CONTEXT]
    problems: list[str] = []
    try:
        await context.redis.ping()
    except REDIS_ERRORS as exc:
        problems.append(f"redis: {type(exc).__name__}")
    for worker in context.workers:
        if not worker.ready:
            problems.append(f"profile {worker.name}: no bind ready")
    if problems:
        return json_response({"status": "unready", "problems": problems}, 503)
    return json_response({"status": "ready"})


def build_app(context: ApiContext) -> web.Application:
    """The application with every endpoint group registered."""
    app = web.Application(middlewares=[middleware], client_max_size=context.settings.api.max_body)
    app[CONTEXT] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    groups = (messages, profiles, routes, twilio, sendsms, providers, events, links, metrics)
    for group in groups:
        group.add_routes(app)
    console.add_routes(app)  # the operator's web console, /console
    return app


class ApiServer:
    """Runs the application on `[api] listen` until `stop`."""

    name = "api"

    def __init__(
        self,
        context: ApiContext,
        address: tuple[str, int] | None = None,
        *,
        reuse_port: bool = False,
        shutdown_timeout: float = 60.0,
    ) -> None:
        """`address`: where to listen instead of `[api] listen` (the daemon's private
        listener beside API workers); `reuse_port`: share the port with other
        processes (SO_REUSEPORT: API workers); `shutdown_timeout`: seconds `stop`
        lets requests in progress finish."""
        self.context = context
        self.app = self._build(context)
        self._runner: web.AppRunner | None = None
        self._given = address
        self._reuse_port = reuse_port
        self._shutdown_timeout = shutdown_timeout
        self.port = 0

    def _build(self, context: ApiContext) -> web.Application:
        return build_app(context)

    def _address(self) -> tuple[str, int]:
        return self._given or self.context.settings.api.address

    async def start(self) -> None:
        host, port = self._address()
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            max_line_size=MAX_LINE,
            shutdown_timeout=self._shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host, port, reuse_address=True, reuse_port=self._reuse_port or None
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info(f"{self.name} listening", host=host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class SendsmsServer(ApiServer):
    """Kannel's sendsms alone (``/cgi-bin/sendsms``; any other path is Kannel's 404
    ``Unknown request.``) on `[sendsms] listen`, sharing the API's context."""

    name = "sendsms"

    def _build(self, context: ApiContext) -> web.Application:
        return sendsms.build_sendsms_app(context)

    def _address(self) -> tuple[str, int]:
        listen = self.context.settings.sendsms.listen
        assert listen is not None
        host, _, port = listen.rpartition(":")
        return host.strip("[]"), int(port)
