"""``GET /metrics``: the daemon's Prometheus metrics (router/metrics.py).

Open by default, like the probes; with ``[api] metrics_auth = true`` it needs a
bearer token with the ``read`` scope. Redis is read at scrape time (bounded by
`REFRESH_TIMEOUT`): while Redis is away the answer still comes, with
``sms_router_redis_up 0`` and without the numbers kept in Redis.
"""

from __future__ import annotations

from aiohttp import web

from router.api.common import CONTEXT, ApiError, Handler, scoped
from router.api.forward import in_daemon
from router.metrics import Metrics

METRICS_KEY = "metrics"  # ApiContext.extras[METRICS_KEY]: the daemon's `Metrics`


@in_daemon  # the daemon's counters and the workers' processes
async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus' text format (or OpenMetrics when the Accept header asks for it)."""
    found = request.app[CONTEXT].extras.get(METRICS_KEY)
    if not isinstance(found, Metrics):
        raise ApiError(404, "metrics: not collected by this server")
    await found.refresh()
    body, content_type = found.render(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def add_routes(app: web.Application) -> None:
    """Register GET /metrics (scoped ``read`` when ``[api] metrics_auth`` is on)."""
    handler: Handler = metrics
    if app[CONTEXT].settings.api.metrics_auth:
        handler = scoped("read")(_guarded)
    app.router.add_get("/metrics", handler)


@in_daemon
async def _guarded(request: web.Request) -> web.StreamResponse:
    return await metrics(request)
