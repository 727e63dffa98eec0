"""Clients we did not write, driven from the tests: PyPI's smpplib (blocking sockets,
run in a thread) and the npm `smpp` package (tests/peers/client.js, run by node)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.exceptions

from .mix import Message, node_part

PEERS = Path(__file__).resolve().parent.parent / "peers"

# (command_status, message_id) of each part of each message, in order.
Results = list[list[tuple[int, str]]]


def smpplib_submit(
    port: int,
    system_id: str,
    password: str,
    messages: list[Message],
    *,
    window: int = 50,
    on_resp: Callable[[int, str], None] | None = None,
) -> Results:
    """Bind as transceiver, submit every part of `messages` with at most `window`
    unanswered, read every submit_sm_resp (`on_resp(status, message_id)` as each is
    read), unbind. Blocking: run it in a thread."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=30, allow_unknown_opt_params=True)
    results: Results = [[(-1, "")] * len(m.parts) for m in messages]
    where: dict[int, tuple[int, int]] = {}
    answered = 0

    def sent(pdu: Any, **_: Any) -> None:
        nonlocal answered
        m, p = where.pop(pdu.sequence)
        raw = pdu.message_id
        message_id = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        results[m][p] = (int(pdu.status), message_id)
        answered += 1
        if on_resp is not None:
            on_resp(int(pdu.status), message_id)

    client.set_message_sent_handler(sent)
    client.set_error_pdu_handler(lambda pdu: None)  # errors are results too
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password=password)
        for m, message in enumerate(messages):
            for p, fields in enumerate(message.parts):
                while len(where) >= window:
                    client.read_once()
                pdu = client.send_message(**fields)
                where[pdu.sequence] = (m, p)
        while where:
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return results


def smpplib_bind_status(port: int, system_id: str, password: str) -> int:
    """The command_status of a bind_transceiver (0 when bound; then unbound)."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=10, allow_unknown_opt_params=True)
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password=password)
        client.unbind()
        return 0
    except smpplib.exceptions.PDUError as exc:
        return int(exc.args[1])
    finally:
        client.disconnect()


async def node_submit(
    port: int,
    system_id: str,
    password: str,
    messages: list[Message],
    *,
    window: int = 50,
    tls: bool = False,
) -> dict[str, Any]:
    """tests/peers/client.js's report: bind status, each part's (status, message_id)
    in `results`, unbind status."""
    node = shutil.which("node")
    if node is None or not (PEERS / "node_modules" / "smpp").is_dir():
        pytest.fail("node and tests/peers/node_modules are missing; run the tests with `make test`")
    job = {
        "port": port,
        "system_id": system_id,
        "password": password,
        "window": window,
        "tls": tls,
        "messages": [[node_part(p) for p in m.parts] for m in messages],
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(PEERS / "client.js"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(job).encode()), 300)
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report
