"""query_sm and cancel_sm (SMPP 3.4 sections 4.8 and 4.9), answered from the ledger.

A session sees only its account's messages: an id that names no message, or names
another account's, is answered ESME_RINVMSGID alike (a client cannot probe for other
accounts' ids). Redis unreachable: ESME_RQUERYFAIL / ESME_RCANCELFAIL.

query_sm_resp carries message_id, final_date (the final status's time, empty before),
message_state (1 ENROUTE while queued, scheduled, sending or sent; 2 DELIVERED;
3 EXPIRED; 5 UNDELIVERABLE for undelivered and failed; 8 REJECTED) and error_code (the
network error code when the record has a numeric one below 256, else 0).

cancel_sm cancels a message not handed to a connector yet (record `queued` or
`scheduled`): its record becomes `rejected` with error_code ``cancelled`` through the
ledger's transition (the same step the worker's per-entry path uses, with the record's
owner), so when its work entry comes up, the worker finds a final record and drops it.
Any other status: ESME_RCANCELFAIL. A message_id is required (the spec's "cancel all
messages of this source and destination" form is answered ESME_RINVMSGID);
service_type and the addresses are read but not matched: the account scoping already
limits a client to its own messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from redis.asyncio import Redis

from binds.smpp.pdu import PduError, read_c_string
from router.policy.accounts import Caller
from router.smpp_server.context import Context
from router.smpp_server.receipts import STATES
from router.store.ledger import Ledger, Transition
from router.store.outages import REDIS_ERRORS

__all__ = [
    "ESME_RCANCELFAIL",
    "ESME_RINVMSGID",
    "ESME_RQUERYFAIL",
    "CancelSm",
    "Queries",
    "QuerySm",
    "read_cancel_sm",
    "read_query_sm",
]

log = structlog.get_logger("router.smpp_server")

QUERY_SM: Final = 0x00000003
CANCEL_SM: Final = 0x00000008
ESME_RINVMSGID: Final = 0x0C
ESME_RCANCELFAIL: Final = 0x11
ESME_RQUERYFAIL: Final = 0x67
ENROUTE: Final = 1
CANCELLABLE: Final = frozenset({"queued", "scheduled"})
CANCELLED: Final = "cancelled"  # the error_code of a record cancel_sm rejected


@dataclass(frozen=True, slots=True)
class QuerySm:
    """A query_sm body."""

    message_id: str
    source_addr: str


@dataclass(frozen=True, slots=True)
class CancelSm:
    """A cancel_sm body."""

    service_type: str
    message_id: str
    source_addr: str
    destination_addr: str


def _address(body: bytes, index: int, name: str) -> tuple[str, int]:
    """A (ton, npi, addr) triple; the address and the index after it."""
    if index + 2 > len(body):
        raise PduError(f"{name}: body ends early")
    return read_c_string(body, index + 2, name, 21)


def read_query_sm(body: bytes) -> QuerySm:
    """A query_sm body; PduError naming the field."""
    message_id, index = read_c_string(body, 0, "message_id", 65)
    source, _index = _address(body, index, "source_addr")
    return QuerySm(message_id, source)


def read_cancel_sm(body: bytes) -> CancelSm:
    """A cancel_sm body; PduError naming the field."""
    service_type, index = read_c_string(body, 0, "service_type", 6)
    message_id, index = read_c_string(body, index, "message_id", 65)
    source, index = _address(body, index, "source_addr")
    destination, _index = _address(body, index, "destination_addr")
    return CancelSm(service_type, message_id, source, destination)


def smpp_time(seconds: float) -> str:
    """An absolute SMPP time in UTC (``YYMMDDhhmmss000+``, section 7.1.1)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%y%m%d%H%M%S") + "000+"


def message_state(status: str) -> int:
    """SMPP message_state (section 5.2.28) of a record status."""
    final = STATES.get(status)
    return final[1] if final is not None else ENROUTE


def error_code(value: Any) -> int:
    """The one-octet error_code of a record's error_code: numeric ones below 256."""
    text = str(value or "")
    return int(text) if text.isdigit() and int(text) < 256 else 0


def query_resp_body(message_id: str, record: dict[str, Any]) -> bytes:
    """A query_sm_resp body for `record`."""
    status = str(record.get("status", ""))
    final = status in STATES
    at = record.get("updated_at")
    final_date = smpp_time(float(at)) if final and at is not None else ""
    return b"".join(
        (
            message_id.encode("ascii", "replace") + b"\0",
            final_date.encode("ascii") + b"\0",
            bytes((message_state(status), error_code(record.get("error_code")))),
        )
    )


class Queries:
    """Answers query_sm and cancel_sm from the ledger."""

    def __init__(self, redis: Redis, ledger: Ledger, profiles: Callable[[], Sequence[str]]) -> None:
        """`profiles`: the configured profiles, in the configuration's order (read at
        each query, so a reload's are used)."""
        self.redis = redis
        self.ledger = ledger
        self._profiles = profiles

    @classmethod
    def of(cls, context: Context) -> Queries:
        """Queries on the Redis and ledger of the server's `Client` (the intake's), so
        a cancel's step waits for replicas as an enqueue does."""
        client = context.intake.client
        return cls(client.redis, client.ledger, lambda: list(context.settings.profiles))

    async def _own(self, caller: Caller, message_id: str) -> dict[str, Any] | None:
        """The record of `message_id` when it is `caller`'s (with its `profile`), else
        None. Looked for in the profiles the account may send through first (its
        messages are there), then in the other configured ones."""
        if not message_id:
            return None
        allowed = caller.account.profiles
        profiles = [*allowed, *(p for p in self._profiles() if p not in allowed)]
        record = await self.ledger.get(message_id, profiles=profiles)
        if record is None or record.get("account") != caller.name:
            return None
        return record

    async def query(self, caller: Caller, body: bytes) -> tuple[int, bytes]:
        """(command_status, body) of the query_sm_resp for `body`; PduError when it
        cannot be read."""
        request = read_query_sm(body)
        try:
            record = await self._own(caller, request.message_id)
        except REDIS_ERRORS as exc:
            log.warning("query_sm failed: Redis unreachable", error=type(exc).__name__)
            return ESME_RQUERYFAIL, b""
        if record is None:
            return ESME_RINVMSGID, b""
        return 0, query_resp_body(request.message_id, record)

    async def cancel(self, caller: Caller, body: bytes) -> int:
        """The command_status of the cancel_sm_resp for `body`; PduError when it
        cannot be read."""
        request = read_cancel_sm(body)
        try:
            record = await self._own(caller, request.message_id)
            if record is None:
                return ESME_RINVMSGID
            status = str(record.get("status", ""))
            if status not in CANCELLABLE or not record.get("profile") or not record.get("owner"):
                log.info("cancel_sm refused", id=request.message_id, status=status)
                return ESME_RCANCELFAIL
            result = await self._reject(request.message_id, record)
        except REDIS_ERRORS as exc:
            log.warning("cancel_sm failed: Redis unreachable", error=type(exc).__name__)
            return ESME_RCANCELFAIL
        if not result.ok:
            log.info("cancel_sm refused", id=request.message_id, status=result.previous)
            return ESME_RCANCELFAIL
        log.info("cancelled", id=request.message_id, was=status)
        return 0

    async def _reject(self, job_id: str, record: dict[str, Any]) -> Transition:
        """The ledger's transition of `record` to `rejected`, only if it is still
        queued or scheduled when the step runs (checked in the same script: a worker's
        `sending` in between makes it verdict ``done``)."""
        status = str(record["status"])
        return await self.ledger.transition(
            job_id,
            str(record["owner"]),
            "rejected",
            profile=str(record["profile"]),
            note=f"cancelled by the client (cancel_sm) while {status}",
            fields={"error_code": CANCELLED, "error": "cancelled by the client"},
            event=_event(record),
            only_unsent=True,
        )


def _event(record: dict[str, Any]) -> dict[str, str]:
    """The cancel's status event: as the worker's (`to`, `meta`), plus error_code."""
    event = {"to": str(record.get("to", "")), "error_code": CANCELLED}
    if record.get("meta"):
        event["meta"] = json.dumps(record["meta"], default=str)
    return event
