"""Inbound messages to SMPP clients: an inbound message that an inbound route gives to
an account (``[[inbound_routes]] account``) reaches that account's receiver or
transceiver sessions as a deliver_sm (esm_class 0, from the handset to our number, GSM
text in data_coding 0, other text in UCS2, a long one in message_payload), besides the
profile's own handling (stored, posted to its callback_url, opt-out keywords). Held in
Redis while no session is bound; a client bound later, or after a restart of the
server, gets what it missed; acked only on deliver_sm_resp OK.

Real Redis, the real daemon on our SMSC simulator (which sends the inbound messages as
a carrier would), the SMPP server, PyPI's smpplib (a client we did not write) and the
raw client; the profile's application is a real aiohttp receiver."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from binds.smpp import pdu
from binds.smpp.codec import decode_text, encode_text
from binds.smpp.pdu import ShortMessage, decode_short_message
from router.config import Settings, load_settings, parse_settings
from router.daemon.daemon import Daemon
from router.smpp_server import SmppServer, receipts
from router.smpp_server.inbound import KIND, inbound_body, inbound_entry
from router.smpp_server.receipts import ReceiptRelay, receipt_key
from router.store import keys
from router.store.outages import RedisOutages
from sims.smscsim import SmscSimulator

from ..conftest import NUMBERS, RunningDaemon, serve_app, wait_for
from ..daemon.test_process import write_config
from .conftest import door_config
from .raw import bound

PERSON = "+447911123456"
US_PERSON = "+15551230000"
GSM_TEXT = "Hello £5 @ home {ok}"  # GSM 03.38, £ @ and the extension table's braces
UCS2_TEXT = "Привет 👋 from abroad"
LONG_TEXT = "A long reply, " + "x" * 290  # 304 GSM characters: two parts on the way in


@dataclass
class App:
    """The profile's application: every inbound post's text."""

    url: str = ""
    texts: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.texts.append((await request.json())["text"])
        return web.Response(status=204)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    box = App()
    web_app = web.Application()
    web_app.router.add_post("/inbound", box.handle)
    runner, box.url = await serve_app(web_app)
    yield box
    await runner.cleanup()


def inbound_config(redis_url: str, tmp: Path, smsc_port: int, callback: str) -> dict[str, Any]:
    """The SMPP server's configuration, its profile receiving (``direction = "both"``),
    and routes: our first number's messages to `acme`, the second's from the US to
    `solo` (only for profile sms), the third's to no account."""
    data = door_config(redis_url, tmp, smsc_port)
    data["profiles"]["sms"].update(direction="both", callback_url=callback)
    data["inbound_routes"] = [
        {"to": [NUMBERS[0]], "account": "acme"},
        {"to": [NUMBERS[1]], "from": ["+1555"], "profiles": ["sms"], "account": "solo"},
        {"keywords": ["nothing"], "callback_url": f"{callback}/never"},
    ]
    return data


@dataclass
class Side:
    """A running daemon and its own SMPP server."""

    running: RunningDaemon
    server: SmppServer
    redis: Redis


StartSide = Callable[[], Awaitable[Side]]


@pytest.fixture
async def start_side(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    app: App,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> StartSide:
    """Start a daemon (bound to the simulator, receiving) with its SMPP server."""
    settings = parse_settings(
        inbound_config(redis_url, tmp_path, smsc.port, f"{app.url}/inbound"),
        env={},
        base_dir=tmp_path,
    )

    async def start() -> Side:
        running = run_daemon(settings)

        def listening() -> bool:
            server = running.daemon.smpp_server
            return server is not None and server.port != 0

        await wait_for(listening, 20, "the daemon's SMPP server listening")
        await wait_for(lambda: smsc.stats()["sessions"] >= 1, 10, "the daemon bound")
        assert running.daemon.smpp_server is not None
        return Side(running, running.daemon.smpp_server, redis)

    return start


async def _relay_ready(redis: Redis) -> None:
    """The relay's group on the profile's event stream (made at its end: `$`)."""

    async def grouped() -> bool:
        with contextlib.suppress(ResponseError):
            groups = await redis.xinfo_groups(keys.events("sms"))
            return any(g["name"] == receipts.EVENTS_GROUP.encode() for g in groups)
        return False

    await wait_for(grouped, 10, "the relay's group")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def smpplib_receive(port: int, *, count: int, listen: float, mode: str = "receiver") -> list[Any]:
    """Bind as `mode` (acme), take deliver_sm until `count` came or `listen` seconds
    passed (smpplib answers each ESME_ROK), unbind. Blocking: run it in a thread."""
    got: list[Any] = []
    client = smpplib.client.Client("127.0.0.1", port, timeout=0.5, allow_unknown_opt_params=True)

    def received(pdu: Any, **_: Any) -> int:
        got.append(pdu)
        return 0

    client.set_message_received_handler(received)
    client.connect()
    try:
        getattr(client, f"bind_{mode}")(system_id="acme", password="secret1")
        deadline = time.monotonic() + listen
        while len(got) < count and time.monotonic() < deadline:
            with contextlib.suppress(smpplib.exceptions.ConnectionError):
                client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return got


def _seen(message: Any) -> dict[str, Any]:
    """What a client reads in an smpplib deliver_sm: addresses, coding and the text
    (short_message, else message_payload) decoded by its data_coding."""
    octets = message.short_message or message.message_payload or b""
    text, binary = decode_text(octets, int(message.data_coding))
    return {
        "esm_class": int(message.esm_class),
        "source": (_str(message.source_addr), int(message.source_addr_ton)),
        "destination": (_str(message.destination_addr), int(message.dest_addr_ton)),
        "npis": (int(message.source_addr_npi), int(message.dest_addr_npi)),
        "data_coding": int(message.data_coding),
        "payload": bool(message.message_payload),
        "text": text,
        "binary": binary,
    }


async def _pending(redis: Redis, account: str) -> int:
    try:
        return int((await redis.xpending(receipt_key(account), receipts.RECEIPTS_GROUP))["pending"])
    except ResponseError:
        return -1  # no group yet


async def test_routed_inbound_messages_reach_the_bound_client(
    start_side: StartSide, smsc: SmscSimulator, app: App
) -> None:
    side = await start_side()
    await _relay_ready(side.redis)
    thread = asyncio.create_task(
        asyncio.to_thread(smpplib_receive, side.server.port, count=4, listen=40)
    )
    await wait_for(lambda: bool(side.server.context.bound.get("acme")), 10, "acme bound")
    await smsc.inject(PERSON, NUMBERS[0], GSM_TEXT)
    await smsc.inject(PERSON, NUMBERS[0], UCS2_TEXT)
    await smsc.inject(PERSON, NUMBERS[0], LONG_TEXT, parts=2)
    await smsc.inject(PERSON, NUMBERS[0], "STOP")  # an opt-out: the client hears of it too
    await smsc.inject(PERSON, NUMBERS[2], "to a number no account route names")
    await smsc.inject(PERSON, NUMBERS[1], "the second number, not from the US")
    got = [_seen(m) for m in await thread]
    by_text = {g["text"]: g for g in got}
    assert sorted(by_text) == sorted([GSM_TEXT, UCS2_TEXT, LONG_TEXT, "STOP"]), got
    for seen in got:
        assert seen["esm_class"] == 0  # a message, not a receipt
        assert seen["source"] == (PERSON[1:], 1)  # the handset, international
        assert seen["destination"] == (NUMBERS[0][1:], 1)  # our number
        assert seen["npis"] == (1, 1)
        assert not seen["binary"]
    assert by_text[GSM_TEXT]["data_coding"] == 0  # SMPP's default alphabet
    assert by_text[UCS2_TEXT]["data_coding"] == 8
    assert by_text[LONG_TEXT]["data_coding"] == 0 and by_text[LONG_TEXT]["payload"]
    assert not by_text[GSM_TEXT]["payload"]
    # The profile's own handling is unchanged: every message posted, STOP applied.
    await wait_for(lambda: len(app.texts) == 6, 20, "every message posted to the profile")
    assert await side.redis.sismember(keys.opt_outs("sms"), PERSON)

    # Each acked on its deliver_sm_resp; the unrouted ones went to no account.
    async def acked() -> bool:
        return await _pending(side.redis, "acme") == 0

    await wait_for(acked, 10, "every deliver_sm acked")
    assert int(await side.redis.xlen(receipt_key("acme"))) == 4
    assert not await side.redis.exists(receipt_key("solo"))
    assert side.server.receipts.inbound_sent == 4 and side.server.receipts.sent == 0


async def test_a_client_bound_later_gets_what_came_meanwhile_across_a_restart(
    start_side: StartSide, smsc: SmscSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receipts, "CLAIM_IDLE", 1.0)  # claimed again after 1 s, not 30
    side = await start_side()
    await _relay_ready(side.redis)
    # No client bound: held in the account's stream.
    await smsc.inject(PERSON, NUMBERS[0], "while nobody listens 1")
    await smsc.inject(US_PERSON, NUMBERS[1], "to solo, from the US")
    await smsc.inject(PERSON, NUMBERS[0], "while nobody listens 2")

    async def held() -> bool:
        return int(await side.redis.xlen(receipt_key("acme"))) == 2

    await wait_for(held, 20, "both held for acme")
    assert int(await side.redis.xlen(receipt_key("solo"))) == 1
    # The router restarts; a client binds, takes both and never answers, then drops:
    # nothing is acked.
    assert await side.running.stop() == 0
    await wait_for(lambda: smsc.stats()["sessions"] == 0, 10, "the old daemon gone")
    side = await start_side()
    silent = await bound(side.server.port, mode="transceiver")
    texts: list[str] = []
    while len(texts) < 2:
        got = await silent.read(timeout=20)
        assert got is not None
        if got.command_id == pdu.DELIVER_SM:
            message = decode_short_message(got.body)
            assert message.esm_class == 0
            texts.append(decode_text(message.text_bytes, message.data_coding)[0])
    assert sorted(texts) == ["while nobody listens 1", "while nobody listens 2"]
    await silent.close()
    assert await _pending(side.redis, "acme") == 2
    # Bound again as a receiver (smpplib): both come again, and are acked.
    again = await asyncio.to_thread(smpplib_receive, side.server.port, count=2, listen=30)
    assert sorted(_seen(m)["text"] for m in again) == texts

    async def acked() -> bool:
        return await _pending(side.redis, "acme") == 0

    await wait_for(acked, 10, "both acked")


async def test_a_reload_gives_an_account_the_messages_of_a_new_route(
    redis: Redis, tmp_path: Path, redis_url: str, smsc: SmscSimulator, app: App
) -> None:
    """`sms-router reload` (Daemon.reload) with an account route appended to the file:
    the next inbound message goes to the account's bound client; the one before went
    only to the profile's application."""
    data = inbound_config(redis_url, tmp_path, smsc.port, f"{app.url}/inbound")
    del data["inbound_routes"]
    path = write_config(tmp_path / "router.toml", data)
    daemon = Daemon(load_settings(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    client = None
    try:
        await wait_for(
            lambda: daemon.smpp_server is not None and daemon.smpp_server.port != 0, 20, "up"
        )
        await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound to the simulator")
        assert daemon.smpp_server is not None
        await _relay_ready(redis)
        client = await bound(daemon.smpp_server.port, mode="receiver")
        await smsc.inject(PERSON, NUMBERS[2], "before the reload")
        await wait_for(lambda: app.texts == ["before the reload"], 20, "posted")
        with path.open("a") as file:
            file.write(f'\n[[inbound_routes]]\nto = ["{NUMBERS[2]}"]\naccount = "acme"\n')
        assert await daemon.reload() is True
        await wait_for(lambda: smsc.stats()["sessions"] >= 1, 10, "bound")
        await smsc.inject(PERSON, NUMBERS[2], "after the reload")
        got = await client.read(timeout=20)
        while got is not None and got.command_id != pdu.DELIVER_SM:
            got = await client.read(timeout=20)
        assert got is not None
        message = decode_short_message(got.body)
        assert decode_text(message.text_bytes, message.data_coding)[0] == "after the reload"
        assert message.destination == NUMBERS[2][1:]
        client.send(pdu.DELIVER_SM | pdu.RESPONSE, b"\0", sequence=got.sequence)

        async def acked() -> bool:
            return await _pending(redis, "acme") == 0

        await wait_for(acked, 10, "acked")
        assert int(await redis.xlen(receipt_key("acme"))) == 1  # only the one after
    finally:
        if client is not None:
            await client.close()
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def test_relay_routes_each_inbound_event_and_follows_a_reload(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """The relay alone, fed `inbound` events as the inbound store writes them: the
    first route naming an account takes each (to, from, profiles, keywords); a message
    no such route matches and an unreadable event go nowhere, and are acked; a reload's
    routes apply to the next event."""
    data = inbound_config(redis_url, tmp_path, 1, "http://127.0.0.1:1/in")
    data["inbound_routes"].insert(0, {"keywords": ["join"], "account": "parts"})
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    current = [settings]
    relay = ReceiptRelay(redis, lambda: current[0], RedisOutages(redis), "test")
    relay.start()
    events = keys.events("sms")
    try:
        await _relay_ready(redis)

        async def inbound(source: str, to: str, text: str, *, ucs2: bool = False) -> None:
            entry = _event(source, to, text, ucs2=ucs2)
            await redis.xadd(events, entry)  # type: ignore[arg-type]

        await inbound(PERSON, NUMBERS[0], "hi acme")
        await inbound(PERSON, NUMBERS[0], "JOIN please")  # the keyword route comes first
        await inbound(US_PERSON, NUMBERS[1], "hi solo", ucs2=True)
        await inbound(PERSON, NUMBERS[1], "not from the US: nobody")
        await inbound(PERSON, NUMBERS[2], "no route: nobody")
        await redis.xadd(events, {"type": "inbound", "id": "in-bad", "message": "{not json"})
        await redis.xadd(events, {"id": "j-1", "profile": "sms", "status": "sent"})

        async def drained(count: int) -> bool:
            groups = await redis.xinfo_groups(events)
            read = int(groups[0]["entries-read"] or 0)
            return (
                read == count
                and int((await redis.xpending(events, "smpp-receipts"))["pending"]) == 0
            )

        await wait_for(lambda: drained(7), 10, "every event read and acked")
        assert await _texts(redis, "acme") == ["hi acme"]
        assert await _texts(redis, "parts") == ["JOIN please"]
        assert await _texts(redis, "solo") == ["hi solo"]
        assert relay.inbound_relayed == 3 and relay.relayed == 0
        # A reload: the second number's messages go to acme from now on.
        data["inbound_routes"] = [{"to": [NUMBERS[1]], "account": "acme"}]
        current[0] = parse_settings(data, env={}, base_dir=tmp_path)
        await inbound(PERSON, NUMBERS[1], "after the reload")
        await wait_for(lambda: drained(8), 10, "read after the reload")
        assert await _texts(redis, "acme") == ["hi acme", "after the reload"]
    finally:
        await relay.stop()


def _event(source: str, to: str, text: str, *, ucs2: bool = False) -> dict[str, str]:
    """An `inbound` event as lua/inbound_publish.lua writes it."""
    if ucs2:
        octets = text.encode("utf-16-be")
    else:  # GSM septets, one an octet, as an SMSC sends them
        segment = encode_text(text, encoding="gsm", long_mode="payload").segments[0]
        octets = segment.message_payload or segment.short_message
    head = {"from": source, "to": to, "data_coding": 8 if ucs2 else 0, "received_at": 1.5}
    return {
        "type": "inbound",
        "id": f"in-{abs(hash((source, to, text)))}",
        "profile": "sms",
        "message": json.dumps(head),
        "parts": json.dumps([base64.b64encode(octets).decode()]),
        "incomplete": "0",
    }


async def _texts(redis: Redis, account: str) -> list[str]:
    got = await redis.xrange(receipt_key(account))
    assert all(f[b"kind"] == KIND.encode() for _, f in got)
    return [f[b"text"].decode() for _, f in got]


def test_inbound_bodies() -> None:
    """The deliver_sm octets: addresses, data_coding, where the text goes."""
    routes = parse_settings(
        {
            **door_config("redis://127.0.0.1:1", Path("/tmp"), 1),
            "inbound_routes": [{"account": "acme"}],
        },
        env={},
    ).inbound_routes

    def body(text: str, *, ucs2: bool = False, **head: str) -> ShortMessage:
        event = _event(PERSON, NUMBERS[0], text, ucs2=ucs2)
        routed = inbound_entry(event, routes)
        assert routed is not None and routed[0] == "acme"
        return decode_short_message(inbound_body(routed[1] | head))

    gsm = body("£1 @ {x}")
    assert (gsm.source, gsm.source_ton, gsm.source_npi) == (PERSON[1:], 1, 1)
    assert (gsm.destination, gsm.dest_ton, gsm.dest_npi) == (NUMBERS[0][1:], 1, 1)
    assert (gsm.esm_class, gsm.data_coding) == (0, 0)
    assert gsm.short_message == b"\x011 \x00 \x1b(x\x1b)"  # unpacked septets
    # GSM holds these: data_coding 0, whatever coding the message arrived in.
    assert body("é ok €").data_coding == 0
    assert body("plain", ucs2=True).short_message == b"plain"
    cyrillic = body("Привет", ucs2=True)
    assert (cyrillic.data_coding, cyrillic.short_message) == (8, "Привет".encode("utf-16-be"))
    long = body("y" * 300)
    assert long.short_message == b"" and long.tlvs[pdu.TAG_MESSAGE_PAYLOAD] == b"y" * 300
    short_code = body("hi", to="12345", **{"from": "ACME"})
    assert (short_code.destination, short_code.dest_ton, short_code.dest_npi) == ("12345", 0, 1)
    assert (short_code.source, short_code.source_ton, short_code.source_npi) == ("ACME", 5, 0)
    # Binary (8-bit data) keeps its octets and data_coding; a long one goes in the payload.
    for octets in (b"\x00\x01\x02\xff", bytes(range(256)) * 2):
        event = _event(PERSON, NUMBERS[0], "")
        event["message"] = json.dumps({"from": PERSON, "to": NUMBERS[0], "data_coding": 4})
        event["parts"] = json.dumps([base64.b64encode(octets).decode()])
        routed = inbound_entry(event, routes)
        assert routed is not None and routed[1]["binary"] == "1"
        binary = decode_short_message(inbound_body(routed[1]))
        assert (binary.data_coding, binary.text_bytes) == (4, octets)
        assert (binary.short_message == b"") == (len(octets) > 254)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
