"""The npm `smpp` package's server (tests/peers/smsc.js) as a pytest fixture."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

HERE = Path(__file__).resolve().parent


class NodeSmsc:
    """A running `node smsc.js`: its SMPP port and its control API."""

    def __init__(self, process: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.process = process
        self.smpp_port = ports["smpp_port"]
        self.http_port = ports["http_port"]
        self._base = f"http://127.0.0.1:{self.http_port}"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self._base + path, json=body) as reply:
                return await reply.json()

    async def submits(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/submits"))

    async def stats(self) -> dict[str, int]:
        return dict(await self._call("GET", "/stats"))

    async def configure(self, **settings: Any) -> None:
        await self._call("POST", "/config", settings)

    async def inbound(self, source: str, destination: str, parts: list[bytes], *, udh: bool,
                      data_coding: int = 0) -> dict[str, Any]:  # fmt: skip
        body = {"from": source, "to": destination, "parts": [p.hex() for p in parts],
                "udh": udh, "data_coding": data_coding}  # fmt: skip
        return dict(await self._call("POST", "/inbound", body))

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


@pytest.fixture
async def node_smsc() -> AsyncIterator[NodeSmsc]:
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "smpp").is_dir():
        pytest.fail("node and tests/peers/node_modules are missing; run the tests with `make test`")
    process = await asyncio.create_subprocess_exec(
        node, str(HERE / "smsc.js"), "0", "0", stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 15)
    peer = NodeSmsc(process, json.loads(line))
    try:
        yield peer
    finally:
        await peer.stop()
