"""A local Web-URL SMS provider for demos and benchmarks (`sms-router http-sim`).

It accepts ``POST``/``GET /send`` (form, JSON or query), answers
``{"id": "<provider id>"}``, optionally slowly or with a share of 503s, and
counts what it received by the router's reference (``ref``) so a benchmark can
tell exactly which messages arrived twice. ``GET /stats`` returns the counts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from typing import Any

from aiohttp import web


class ProviderSimulator:
    """State and handlers of the simulated provider."""

    def __init__(self, *, latency: float = 0.0, fail_rate: float = 0.0) -> None:
        self.latency = latency
        self.fail_rate = fail_rate
        self.received: Counter[str] = Counter()
        self.requests = 0
        self.in_flight = 0
        self.peak = 0
        self.inbound_count = 0
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/send", self.send)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/reset", self.reset)
        app.router.add_post("/inbound", self.inbound)
        return app

    async def inbound(self, request: web.Request) -> web.Response:
        """Plays an application's callback_url: prints each inbound message it is given."""
        body = await request.json()
        self.inbound_count += 1
        print(json.dumps({"inbound": body}, ensure_ascii=False), flush=True)
        return web.Response(status=204)

    async def send(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            fields = await _fields(request)
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.fail_rate and random.random() < self.fail_rate:
                return web.json_response({"error": "busy"}, status=503)
            if not fields.get("to") or not fields.get("text"):
                return web.json_response({"error": "to and text are required"}, status=400)
            self.received[str(fields.get("ref") or fields.get("id") or "")] += 1
            return web.json_response({"id": f"sim-{next(self._ids)}"}, status=201)
        finally:
            self.in_flight -= 1

    async def stats(self, _request: web.Request) -> web.Response:
        twice = sorted(ref for ref, n in self.received.items() if n > 1)
        return web.json_response(
            {
                "requests": self.requests,
                "accepted": sum(self.received.values()),
                "unique": len(self.received),
                "duplicates": twice,
                "peak_in_flight": self.peak,
                "inbound": self.inbound_count,
            }
        )

    async def reset(self, _request: web.Request) -> web.Response:
        self.received.clear()
        self.requests = self.peak = 0
        return web.json_response({"ok": True})


async def _fields(request: web.Request) -> dict[str, Any]:
    fields: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            fields.update(body)
    elif request.can_read_body:
        fields.update(await request.post())
    return fields


async def serve(host: str, port: int, *, latency: float, fail_rate: float) -> None:
    """Run the simulator until cancelled."""
    sim = ProviderSimulator(latency=latency, fail_rate=fail_rate)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(json.dumps({"http_sim": f"http://{host}:{port}/send"}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
