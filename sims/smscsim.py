"""`sms-router smsc-sim`: an SMPP 3.4 SMSC for demos, benchmarks and fault tests.

It checks credentials, answers submit_sm with message ids, sends delivery
receipts (a configurable share undelivered, after a delay, with 10- or 12-digit
dates), injects inbound messages, and injects faults on demand: throttling,
a capacity limit (a queue that drains at `max_rate` submits/s and answers
ESME_RMSGQFUL while full), a queue that stays full for `queue_full_for` seconds
and then has room for `queue_room` submits, over and over (ESME_RMSGQFUL while
full, whatever the rate: a congested route), dropped or delayed responses, a disconnect every N
PDUs, receipts before their submit_sm_resp, vendor status codes. Everything it
sees is counted at the SMSC side (`stats`), including the most submit_sm ever
outstanding on one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from binds.smpp import pdu
from binds.smpp.codec import encode_text
from binds.smpp.pdu import FrameDecoder, FramingError, Pdu, PduError, ShortMessage

__all__ = ["SimConfig", "SmscSimulator"]

BINDS = {
    pdu.BIND_TRANSMITTER: "transmitter",
    pdu.BIND_TRANSCEIVER: "transceiver",
    pdu.BIND_RECEIVER: "receiver",
}


@dataclass
class SimConfig:
    """What the simulated SMSC does; faults can change at runtime (`faults` / POST /faults)."""

    accounts: dict[str, str] = field(default_factory=lambda: {"smppclient1": "password"})
    message_id_style: str = "hex"
    # How receipts write the id, as SMSCs differ from their submit_sm_resp: "same",
    # "decimal" (10-digit zero-padded), "hex" (upper case) or "padded" (leading zeros).
    receipt_id_style: str = "same"
    receipts: bool = True
    delivered_ratio: float = 1.0
    receipt_delay: float = 0.05
    date_digits: int = 10
    throttle_ratio: float = 0.0
    max_rate: float = 0.0  # submits/s taken; beyond, ESME_RMSGQFUL (0 = no limit)
    # A congested queue: room for `queue_room` submits, then full (ESME_RMSGQFUL to every
    # submit) for `queue_full_for` seconds, then room again, and so on. 0 = off.
    queue_full_for: float = 0.0
    queue_room: int = 0
    drop_response_ratio: float = 0.0
    response_delay: float = 0.0
    disconnect_every: int = 0
    report_before_response: bool = False
    vendor_status: int = 0x401
    vendor_ratio: float = 0.0
    seed: int | None = None


class _Session:
    def __init__(self, writer: asyncio.StreamWriter, number: int) -> None:
        self.writer = writer
        self.number = number
        self.mode = ""
        self.system_id = ""
        self.received = 0
        self.outstanding = 0
        self.sequence = 0
        self.waiting: dict[int, tuple[str, ShortMessage]] = {}  # our deliver_sm, by sequence

    def send(self, command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(Pdu(command_id, status, sequence, body).encode())

    def next_sequence(self) -> int:
        self.sequence = self.sequence % 0x7FFFFFFF + 1
        return self.sequence


class SmscSimulator:
    """A small SMSC on asyncio; `start` returns the port it listens on."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self._random = random.Random(self.config.seed)
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Ids differ from one simulator run to the next, as a real SMSC's do not repeat soon.
        self._next_id = int(time.time() * 1000) % 10**12 * 1000
        self._count = 0
        # deliver_sm not acknowledged when their session ended, by system_id: sent again
        # when it binds again, as an SMSC keeps receipts for a client that went away.
        self._held: dict[str, list[tuple[str, ShortMessage]]] = {}
        # The capacity limit: a queue of max_rate places draining at max_rate/s.
        self._room = 0.0
        self._room_at = 0.0
        # The congested queue: submits it still has room for (None: mode off), and the
        # monotonic time its full spell ends.
        self._cycle_room: int | None = None
        self._full_until = 0.0
        self.submits: deque[dict[str, Any]] = deque(maxlen=1000)
        self.reset()

    def reset(self) -> None:
        """Zero the counters (sessions stay bound)."""
        self.counters = dict.fromkeys(
            (
                "binds",
                "bind_rejected",
                "submits",
                "segments",
                "throttled",
                "queue_full",
                "dropped",
                "vendor",
                "receipts_sent",
                "receipts_acked",
                "inbound_sent",
                "inbound_acked",
                "disconnects",
                "max_outstanding",
                "generic_nacks",
            ),
            0,
        )
        self.submits.clear()

    def stats(self) -> dict[str, Any]:
        bound = [s for s in self._sessions if s.mode]
        return {
            **self.counters,
            "sessions": len(bound),
            "outstanding": sum(s.outstanding for s in bound),
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """The control API: GET /stats, POST /reset, POST /inbound, POST /faults."""
        app = web.Application()
        app.router.add_get("/stats", self._http_stats)
        app.router.add_post("/reset", self._http_reset)
        app.router.add_post("/inbound", self._http_inbound)
        app.router.add_post("/faults", self._http_faults)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server: Any = site._server  # aiohttp keeps the bound port only here
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # -- inbound injection ----------------------------------------------------------

    async def inject(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        parts: int = 0,
        order: list[int] | None = None,
        coding: str = "auto",
    ) -> int:
        """Send an inbound message to a bound receiver/transceiver; returns PDUs sent."""
        session = next((s for s in self._sessions if s.mode in ("transceiver", "receiver")), None)
        if session is None:
            raise LookupError("no transceiver or receiver session is bound")
        if coding == "binary":
            segments = [(4, False, text.encode())]
        else:
            encoded = encode_text(
                text,
                encoding="ucs2" if coding == "ucs2" else "auto",
                reference=self._random.randrange(256),
            )
            segments = [(encoded.data_coding, s.udhi, s.short_message) for s in encoded.segments]
        if parts and len(segments) != parts:
            raise ValueError(f"text makes {len(segments)} parts, not {parts}")
        for index in order or range(len(segments)):
            coding_value, udhi, body = segments[index]
            message = ShortMessage(
                source=source.lstrip("+"),
                source_ton=1,
                source_npi=1,
                destination=destination.lstrip("+"),
                dest_ton=1,
                dest_npi=1,
                esm_class=pdu.ESM_UDHI if udhi else 0,
                data_coding=coding_value,
                short_message=body,
            )
            self._deliver(session, "inbound", message)
            self.counters["inbound_sent"] += 1
        return len(segments)

    # -- the SMPP side ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        session = _Session(writer, self._count)
        self._sessions.add(session)
        decoder = FrameDecoder()
        try:
            while not writer.is_closing():
                data = await reader.read(65536)
                if not data:
                    break
                for frame in decoder.feed(data):
                    session.received += 1
                    await self._handle(session, frame)
                    every = self.config.disconnect_every
                    if every and session.received % every == 0:
                        self.counters["disconnects"] += 1
                        writer.close()
                        break
        except (FramingError, ConnectionError):
            pass
        finally:
            self._sessions.discard(session)
            writer.close()
            if session.waiting and session.system_id:
                self._held.setdefault(session.system_id, []).extend(session.waiting.values())

    async def _handle(self, session: _Session, frame: Pdu) -> None:
        command = frame.command_id
        if command in BINDS:
            await self._bind(session, frame)
        elif command == pdu.ENQUIRE_LINK:
            session.send(command | pdu.RESPONSE, 0, frame.sequence)
        elif command == pdu.UNBIND:
            session.send(command | pdu.RESPONSE, 0, frame.sequence)
            session.writer.close()
        elif command == pdu.SUBMIT_SM and session.mode in ("transmitter", "transceiver"):
            self._submit(session, frame)
        elif command == pdu.DELIVER_SM | pdu.RESPONSE:
            kind, message = session.waiting.pop(frame.sequence, ("", ShortMessage()))
            if kind and frame.status == 0:
                self.counters["receipts_acked" if kind == "receipt" else "inbound_acked"] += 1
            elif kind:  # refused for now: offer it again a little later
                asyncio.get_running_loop().call_later(0.5, self._again, session, kind, message)
        elif frame.is_response:
            pass
        elif command == pdu.SUBMIT_SM:
            session.send(command | pdu.RESPONSE, pdu.ESME_RINVBNDSTS, frame.sequence)
        else:
            self.counters["generic_nacks"] += 1
            session.send(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, frame.sequence)

    async def _bind(self, session: _Session, frame: Pdu) -> None:
        try:
            system_id, index = pdu.read_c_string(frame.body, 0, "system_id", 16)
            password, _ = pdu.read_c_string(frame.body, index, "password", 9)
        except PduError:
            session.send(frame.command_id | pdu.RESPONSE, pdu.ESME_RINVCMDLEN, frame.sequence)
            return
        status = pdu.ESME_ROK
        if system_id not in self.config.accounts:
            status = pdu.ESME_RINVSYSID
        elif self.config.accounts[system_id] != password:
            status = pdu.ESME_RINVPASWD
        elif session.mode:
            status = pdu.ESME_RALYBND
        body = b"smsc-sim\0"
        session.send(frame.command_id | pdu.RESPONSE, status, frame.sequence, body)
        if status == pdu.ESME_ROK:
            session.mode, session.system_id = BINDS[frame.command_id], system_id
            self.counters["binds"] += 1
            if session.mode != "transmitter":
                for kind, message in self._held.pop(system_id, []):
                    self._deliver(session, kind, message)
        else:
            self.counters["bind_rejected"] += 1

    def _submit(self, session: _Session, frame: Pdu) -> None:
        self.counters["submits"] += 1
        session.outstanding += 1
        self.counters["max_outstanding"] = max(
            self.counters["max_outstanding"], session.outstanding
        )
        try:
            message = pdu.decode_short_message(frame.body)
        except PduError:
            session.outstanding -= 1
            session.send(pdu.SUBMIT_SM | pdu.RESPONSE, pdu.ESME_RINVMSGLEN, frame.sequence)
            return
        self.submits.append(
            {
                "source": message.source,
                "source_ton": message.source_ton,
                "source_npi": message.source_npi,
                "destination": message.destination,
                "esm_class": message.esm_class,
                "data_coding": message.data_coding,
                "registered_delivery": message.registered_delivery,
                "short_message": message.short_message.hex(),
                "tlvs": {f"0x{k:04X}": v.hex() for k, v in message.tlvs.items()},
            }
        )
        task = asyncio.create_task(self._answer(session, frame.sequence, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, session: _Session, sequence: int, message: ShortMessage) -> None:
        config = self.config
        answered = False
        try:
            if config.response_delay:
                await asyncio.sleep(config.response_delay)
            if self._random.random() < config.drop_response_ratio:
                self.counters["dropped"] += 1
                return
            if not self._take_room():
                self.counters["queue_full"] += 1
                session.send(pdu.SUBMIT_SM | pdu.RESPONSE, pdu.ESME_RMSGQFUL, sequence)
                return
            if self._random.random() < config.throttle_ratio:
                self.counters["throttled"] += 1
                session.send(pdu.SUBMIT_SM | pdu.RESPONSE, pdu.ESME_RTHROTTLED, sequence)
                return
            if self._random.random() < config.vendor_ratio:
                self.counters["vendor"] += 1
                session.send(pdu.SUBMIT_SM | pdu.RESPONSE, config.vendor_status, sequence)
                return
            self._next_id += 1
            message_id = (
                format(self._next_id, "X")
                if config.message_id_style == "hex"
                else str(self._next_id)
            )
            self.counters["segments"] += 1
            wants = config.receipts and message.registered_delivery & 1
            if wants and config.report_before_response:
                self._receipt(session, message_id, message)
            session.send(pdu.SUBMIT_SM | pdu.RESPONSE, 0, sequence, message_id.encode() + b"\0")
            session.outstanding -= 1
            answered = True
            if wants and not config.report_before_response:
                await asyncio.sleep(config.receipt_delay)
                self._receipt(session, message_id, message)
        finally:
            if not answered:
                session.outstanding -= 1

    def _take_room(self) -> bool:
        """A place in the SMSC's queue for one submit; False: ESME_RMSGQFUL."""
        rate = self.config.max_rate
        if rate > 0:
            now = time.monotonic()
            self._room = min(rate, self._room + (now - self._room_at) * rate)
            self._room_at = now
            if self._room < 1:
                return False
        if not self._take_cycle_room():
            return False
        if rate > 0:
            self._room -= 1
        return True

    def _take_cycle_room(self) -> bool:
        """The congested queue (`queue_room` / `queue_full_for`): False while full."""
        room = self.config.queue_room
        if room <= 0:
            self._cycle_room = None  # off (or switched off through /faults)
            return True
        left = self._cycle_room
        if left is None or left > room:
            left = room  # just switched on, or given less room through /faults
        if left <= 0:
            if time.monotonic() < self._full_until:
                self._cycle_room = left
                return False
            left = room  # the full spell is over
        left -= 1
        if left <= 0:
            self._full_until = time.monotonic() + self.config.queue_full_for
        self._cycle_room = left
        return True

    def _receipt_id(self, message_id: str) -> str:
        style = self.config.receipt_id_style
        number = int(message_id, 16 if self.config.message_id_style == "hex" else 10)
        if style == "decimal":
            return str(number).zfill(10)
        if style == "hex":
            return format(number, "X")
        if style == "padded":
            return message_id.zfill(len(message_id) + 4)
        return message_id

    def _receipt(self, session: _Session, message_id: str, submitted: ShortMessage) -> None:
        message_id = self._receipt_id(message_id)
        delivered = self._random.random() < self.config.delivered_ratio
        stat, err, state = ("DELIVRD", "000", 2) if delivered else ("UNDELIV", "001", 5)
        stamp = time.strftime("%y%m%d%H%M%S" if self.config.date_digits == 12 else "%y%m%d%H%M")
        text = (
            f"id:{message_id} sub:001 dlvrd:{'001' if delivered else '000'} "
            f"submit date:{stamp} done date:{stamp} stat:{stat} err:{err} text:"
        )
        receipt = ShortMessage(
            source=submitted.destination,
            source_ton=submitted.dest_ton,
            source_npi=submitted.dest_npi,
            destination=submitted.source,
            dest_ton=submitted.source_ton,
            dest_npi=submitted.source_npi,
            esm_class=pdu.ESM_RECEIPT,
            short_message=text.encode(),
            tlvs={
                pdu.TAG_RECEIPTED_MESSAGE_ID: message_id.encode() + b"\0",
                pdu.TAG_MESSAGE_STATE: bytes((state,)),
            },
        )
        self.counters["receipts_sent"] += 1
        receivers = [
            s
            for s in self._sessions
            if s.mode in ("transceiver", "receiver")
            and s.system_id == session.system_id
            and not s.writer.is_closing()
        ]
        target = session if session in receivers else (receivers[0] if receivers else None)
        if target is None:
            self._held.setdefault(session.system_id, []).append(("receipt", receipt))
        else:
            self._deliver(target, "receipt", receipt)

    def _again(self, session: _Session, kind: str, message: ShortMessage) -> None:
        if session in self._sessions and not session.writer.is_closing():
            self._deliver(session, kind, message)
        else:
            self._held.setdefault(session.system_id, []).append((kind, message))

    def _deliver(self, session: _Session, kind: str, message: ShortMessage) -> None:
        sequence = session.next_sequence()
        session.waiting[sequence] = (kind, message)
        session.send(pdu.DELIVER_SM, 0, sequence, pdu.encode_short_message(message))

    # -- the HTTP control side ----------------------------------------------------------

    async def _http_stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _http_reset(self, _: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())

    async def _http_faults(self, request: web.Request) -> web.Response:
        changes = await request.json()
        if not isinstance(changes, dict):
            return web.json_response({"error": "expected a JSON object of faults"}, status=400)
        known = set(asdict(self.config))
        unknown = set(changes) - known
        if unknown:
            return web.json_response({"error": f"unknown fault(s): {sorted(unknown)}"}, status=400)
        for name, value in changes.items():
            problem = _fault_problem(getattr(self.config, name), value)
            if problem:
                return web.json_response({"error": f"{name}: {problem}"}, status=400)
        for name, value in changes.items():
            setattr(self.config, name, value)
        return web.json_response({k: v for k, v in asdict(self.config).items() if k != "accounts"})

    async def _http_inbound(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            sent = await self.inject(
                str(body["from"]),
                str(body["to"]),
                str(body["text"]),
                parts=int(body.get("parts", 0)),
                order=body.get("order"),
                coding=str(body.get("coding", "auto")),
            )
        except (KeyError, ValueError, LookupError, IndexError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"sent": sent})


def _fault_problem(current: object, value: object) -> str:
    """Why `value` cannot replace a fault setting now `current` ("" when it can): the
    simulator would otherwise fail later, at a submit, far from the bad request."""
    if isinstance(current, bool):
        return "" if isinstance(value, bool) else "must be true or false"
    if not isinstance(current, int | float):
        return ""
    whole = isinstance(current, int)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, kinds) and not isinstance(value, bool) and value >= 0:
        return ""
    return "must be a whole number >= 0" if whole else "must be a number >= 0"


async def serve(config: SimConfig, host: str, port: int, http_port: int | None) -> None:
    """Run until cancelled (the CLI's `smsc-sim`)."""
    sim = SmscSimulator(config)
    bound = await sim.start(host, port)
    where = f"SMSC simulator: smpp://{host}:{bound}"
    if http_port is not None:
        control = await sim.start_http(host, http_port)
        where += f", control http://{host}:{control} (/stats /inbound /faults /reset)"
    print(where, json.dumps(sorted(sim.config.accounts)), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.close()
