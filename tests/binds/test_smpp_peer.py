"""Against a peer we did not write: the npm `smpp` package (0.5.1) as the SMSC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from binds.smpp.codec import encode_text
from router import Client
from router.config import Settings

from ..conftest import NUMBERS, RunningDaemon, wait_for
from ..peers.peer import NodeSmsc
from .test_smpp_flow import Inbox, all_in, inbox, smpp_settings  # noqa: F401

Start = Callable[[Settings], RunningDaemon]


@pytest.mark.parametrize(
    ("bind", "processing"),
    [("transceiver", "async"), ("transceiver", "sync"), ("transmitter", "async")],
)
async def test_messages_reach_the_peer_and_reports_come_back(
    redis: Redis, redis_url: str, tmp_path: Path, node_smsc: NodeSmsc, run_daemon: Start,
    bind: str, processing: str,
) -> None:  # fmt: skip
    await node_smsc.configure(response_delay_ms=20)
    settings = smpp_settings(redis_url, tmp_path, node_smsc.smpp_port, processing=processing,
                             smpp={"bind": bind})  # fmt: skip
    texts = ["hello world", "Grüße ✓ Привет", "long message " * 20]
    jobs = [{"to": "+447911123456", "text": t, "from": NUMBERS[0]} for t in texts * 4]
    ids = await Client.from_settings(redis, settings).send_many(jobs)
    run_daemon(settings)
    wanted = {"delivered"} if bind == "transceiver" else {"sent"}
    await wait_for(lambda: all_in(redis, ids, wanted), 30, f"all {wanted}")

    submits = await node_smsc.submits()
    assert len(submits) == 4 * (1 + 1 + 2)
    first = submits[0]
    assert first["source_addr"] == NUMBERS[0].lstrip("+") and first["source_addr_ton"] == 1
    assert first["destination_addr"] == "447911123456"
    # Receipts asked for only where they can come back (a transmitter cannot receive them).
    assert first["registered_delivery"] == (1 if bind == "transceiver" else 0)
    by_coding = {s["data_coding"] for s in submits}
    assert by_coding == {0, 8}
    # The peer decoded what we encoded: the texts come back whole.
    singles = [s["message"] for s in submits if not s["udh"]]
    assert set(singles) == {"hello world", "Grüße ✓ Привет"}
    parts = [s for s in submits if s["udh"]]
    assert len(parts) == 8 and all(s["esm_class"] & 0x40 for s in parts)
    by_reference: dict[str, list[tuple[int, str]]] = {}
    for s in parts:
        ie = bytes.fromhex(s["udh"][0])  # 00 03 ref total seq
        by_reference.setdefault(ie[2:3].hex(), []).append((ie[4], s["message"]))
    assert len(by_reference) == 4
    for pieces in by_reference.values():
        assert "".join(m for _, m in sorted(pieces)) == texts[2]
    stats = await node_smsc.stats()
    limit = 1 if processing == "sync" else 10
    assert 1 <= stats["max_outstanding"] <= limit
    if processing == "async":
        assert stats["max_outstanding"] > 1
    if bind == "transceiver":
        assert stats["receipts_acked"] == stats["submits"]


async def test_inbound_from_the_peer_reaches_callback_in_any_order(
    redis: Redis, redis_url: str, tmp_path: Path, node_smsc: NodeSmsc, run_daemon: Start,
    inbox: Inbox,  # noqa: F811
) -> None:  # fmt: skip
    settings = smpp_settings(redis_url, tmp_path, node_smsc.smpp_port, callback=inbox.url)
    run_daemon(settings)
    await wait_for(lambda: _bound(node_smsc), 10, "bound")
    text = "Ünïcödé inbound message, long enough for three parts. " * 3
    encoded = encode_text(text, encoding="ucs2", reference=77)
    parts = [s.short_message for s in encoded.segments]
    assert len(parts) == 3
    reply = await node_smsc.inbound("+447911123456", NUMBERS[1], [parts[2], parts[0], parts[1]],
                                    udh=True, data_coding=8)  # fmt: skip
    assert reply["statuses"] == [0, 0, 0]
    await node_smsc.inbound("+447911123457", NUMBERS[1], [b"plain hello"], udh=False)
    await wait_for(lambda: len(inbox.messages) == 2, 20, "two inbound posts")
    by_text = {m["text"]: m for m in inbox.messages}
    assert set(by_text) == {text, "plain hello"}
    assert by_text[text]["parts"] == 3 and by_text[text]["to"] == NUMBERS[1]


async def _bound(peer: NodeSmsc) -> bool:
    return (await peer.stats())["binds"] >= 1
