"""Long messages from clients put together again before they become one job.

Parts are held here, in memory, keyed by account, source, destination, reference and
total; parts of one message may come over any of the account's sessions on this
instance. No part is answered until the whole message is enqueued: then every part's
submit_sm_resp carries the one job id. Holding in memory is safe because nothing held
has been acknowledged: if the process dies, the client sees no response for those
parts and sends them again. When the rest does not come within `reassembly_timeout`
seconds, the held parts are answered ESME_RSUBMITFAIL. A session that closes takes
its held parts with it (never acknowledged; the client sends them again).

A client must allow as many unanswered submits as a long message has parts (its
window), and the account's `window` counts held parts too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from binds.smpp import pdu
from router.policy.accounts import Caller
from router.smpp_server.intake import Intake
from router.smpp_server.statuses import ESME_RSUBMITFAIL, Refused
from router.smpp_server.submit import Part, text_of

__all__ = ["Answer", "Reassembly"]

log = structlog.get_logger("router.smpp_server")

# Answers one held part's submit: (command_status, message_id).
Answer = Callable[[int, str], None]
Key = tuple[str, str, str, int, int, int, bool]  # account, source, to, reference, bits, total, SAR


@dataclass(slots=True)
class _Held:
    part: Part
    waiters: list[tuple[object, Answer]]  # (session, its answer), one per copy received


@dataclass(slots=True)
class _Group:
    caller: Caller
    total: int
    parts: dict[int, _Held] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class Reassembly:
    """Long messages being put together, on this instance."""

    def __init__(self, intake: Intake, timeout: float) -> None:
        self.intake = intake
        self.timeout = timeout
        self._groups: dict[Key, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        """Parts held now."""
        return sum(len(group.parts) for group in self._groups.values())

    def add(self, owner: object, caller: Caller, part: Part, answer: Answer) -> None:
        """Hold `part` (its `concat` set) from session `owner`; `answer` is called
        once, when the message is enqueued, refused or timed out."""
        concat = part.concat
        assert concat is not None
        key = (
            caller.name,
            part.source_addr,
            part.destination,
            concat.reference,
            concat.ref_bits,
            concat.total,
            part.sar,
        )
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(caller, concat.total)
            loop = asyncio.get_running_loop()
            group.timer = loop.call_later(self.timeout, self._expire, key)
        held = group.parts.get(concat.seq)
        if held is None:
            group.parts[concat.seq] = _Held(part, [(owner, answer)])
        else:  # sent again (the client timed out waiting): the newest copy counts
            held.part = part
            held.waiters.append((owner, answer))
        if len(group.parts) == group.total:
            del self._groups[key]
            if group.timer is not None:
                group.timer.cancel()
            task = asyncio.create_task(self._complete(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def forget(self, owner: object) -> None:
        """Session `owner` is gone: drop the parts only it sent (never answered)."""
        for key, group in list(self._groups.items()):
            for seq, held in list(group.parts.items()):
                held.waiters = [w for w in held.waiters if w[0] is not owner]
                if not held.waiters:
                    del group.parts[seq]
            if not group.parts:
                del self._groups[key]
                if group.timer is not None:
                    group.timer.cancel()

    async def close(self) -> None:
        """Stop: messages being enqueued finish (and are answered); parts still
        waiting for the rest are dropped unanswered (never acknowledged)."""
        for group in self._groups.values():
            if group.timer is not None:
                group.timer.cancel()
        self._groups.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _complete(self, group: _Group) -> None:
        parts = [group.parts[seq] for seq in range(1, group.total + 1)]
        waiters = [answer for held in parts for _owner, answer in held.waiters]
        first = parts[0].part
        status, message_id = pdu.ESME_ROK, ""
        try:
            codings = {held.part.data_coding for held in parts}
            if len(codings) == 1:
                text = text_of(b"".join(held.part.octets for held in parts), first.data_coding)
            else:
                text = "".join(text_of(held.part.octets, held.part.data_coding) for held in parts)
            message_id = await self.intake.enqueue(group.caller, first, text)
        except Refused as exc:
            status = exc.status
            log.info(
                "long message refused",
                account=group.caller.name,
                parts=group.total,
                status=pdu.status_name(status),
                reason=exc.reason,
            )
        except Exception:
            status = pdu.ESME_RSYSERR
            log.exception("long message not enqueued", account=group.caller.name)
        for answer in waiters:
            answer(status, message_id)

    def _expire(self, key: Key) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        log.warning(
            "long message incomplete; its parts answered ESME_RSUBMITFAIL",
            account=group.caller.name,
            source=key[1],
            reference=key[3],
            parts=sorted(group.parts),
            total=group.total,
            waited=self.timeout,
        )
        for held in group.parts.values():
            for _owner, answer in held.waiters:
                answer(ESME_RSUBMITFAIL, "")
