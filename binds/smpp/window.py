"""The send window of an SMPP session: where every message taken for sending is.

No I/O here: no socket, no timer, no clock. The session (`binds.smpp.session`) owns
those, tells the window the time, and acts on what it answers: the window only keeps
the state (queued, written and unanswered by sequence number, held until a time) and
decides what that state implies (which submits have timed out, how many in a row,
which waited too long for a bound session, when a later part of a long message is
tried again). So it can be tested on its own, with made-up times.

A message moves: queue -> outstanding (written) -> its outcome, or back to the queue
(its next part), or into the held heap (throttled, or a later part to try again) and
from there back to the queue when due.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from ..base import Done, Failed, OutboundMessage

__all__ = ["PART_RETRIES", "TIMEOUTS_TO_RECONNECT", "Job", "SubmitWindow"]

# Retries of a later part lost to a time-out or a dropped connection (throttled parts
# wait like any throttled submit): earlier parts already reached the SMSC.
PART_RETRIES = 3
# Submits timed out in a row (no answer to any between them) before the session is
# taken for dead and reconnected.
TIMEOUTS_TO_RECONNECT = 3
# Held messages due within this much of now are released together with those due now.
RELEASE_SLACK = 0.001


class Job:
    """One message on its way: its submit_sm bodies (one per part) and where it is."""

    __slots__ = (
        "began",
        "bodies",
        "cancelled",
        "deadline",
        "done",
        "ids",
        "index",
        "message",
        "sent_at",
        "since",
        "tries",
    )

    def __init__(
        self, message: OutboundMessage, done: Done, bodies: list[bytes], deadline: float, now: float
    ) -> None:
        self.message = message
        self.done = done
        self.bodies = bodies
        self.deadline = deadline  # loop time: hold a throttled part no longer than this
        self.began = now  # when the current part was first tried (throttle reasons say since)
        self.since = now  # when it last entered the queue (for "not bound" time-outs)
        self.sent_at = 0.0  # when its current part was written
        self.index = 0  # the part being sent
        self.tries = 0  # retries of the current (later) part after a time-out or lost session
        self.ids: list[str] | None = None  # the SMSC's ids of the parts taken so far
        self.cancelled = False  # its submit() was cancelled: write nothing more of it


class SubmitWindow:
    """The messages of one session not yet given their outcome, and where each is.

    The session reads and writes `queue`, `outstanding` and `messages` directly on its
    hot path (a method call per message would cost): a new message is a `Job` appended
    to `queue` and counted in `messages`, uncounted when given its outcome. The rest
    goes through the methods below. `outstanding` is replaced, not cleared, when the
    connection is lost (`lose_outstanding`), so a caller holding `outstanding.pop` takes
    it again after anything that may drop the connection.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # submits outstanding at once (1 when processing is sync)
        self.queue: deque[Job] = deque()  # waiting for the window (and the rate), in order
        self.outstanding: dict[int, Job] = {}  # written, by sequence number, in send order
        self.held: list[tuple[float, int, Job, bool]] = []  # heap: due, order, job, new try
        self._holds = itertools.count()
        self.messages = 0  # taken and without an outcome yet (the session counts)
        self.peak = 0  # most submits ever outstanding at once
        self.timeouts = 0  # submits timed out in a row (no answer to any between them)
        # Times of answers to submits since the last `expire` (one per chunk read): time-
        # outs are found late, and replayed among these to count "in a row".
        self.answers: list[float] = []

    def answered(self, now: float) -> None:
        """Submits were answered at `now` (the time-out count's "in a row" ends there)."""
        self.answers.append(now)

    # -- holds ------------------------------------------------------------------

    def hold(self, job: Job, due: float, *, new_try: bool) -> bool:
        """Put `job` aside until `due`; True when it is now the first due (the session's
        release timer must be set for it). `new_try`: its part starts a new try then."""
        heapq.heappush(self.held, (due, next(self._holds), job, new_try))
        return self.held[0][2] is job

    @property
    def next_release(self) -> float | None:
        """When the first held message is due; None when none is held."""
        return self.held[0][0] if self.held else None

    def release(self, now: float) -> list[Job]:
        """Put every held message due by `now` back in the queue, in the order due; the
        ones cancelled meanwhile are returned instead (to be given their outcome)."""
        held = self.held
        cancelled = []
        while held and held[0][0] <= now + RELEASE_SLACK:
            _, _, job, new_try = heapq.heappop(held)
            if job.cancelled:
                cancelled.append(job)
                continue
            if new_try:
                job.began = now
            job.since = now
            self.queue.append(job)
        return cancelled

    # -- parts ------------------------------------------------------------------

    def part_accepted(self, job: Job, message_id: str, now: float) -> list[str] | None:
        """The SMSC took `job`'s current part as `message_id`: the ids of all its parts
        when that was the last, else None and its next part queued (it waits its turn
        like any submit)."""
        if job.ids is None:
            job.ids = []
        job.ids.append(message_id)
        job.index += 1
        if job.index == len(job.bodies):
            return job.ids
        job.tries = 0
        job.began = job.since = now
        self.queue.append(job)
        return None

    @staticmethod
    def retry_part(job: Job, now: float) -> float | None:
        """A later part lost to a time-out or a dropped connection: when to try it again
        (the try counted), or None when it has had its `PART_RETRIES`."""
        if job.tries >= PART_RETRIES:
            return None
        job.tries += 1
        return now + 0.5 * 2.0**job.tries

    @staticmethod
    def partial(job: Job, reason: str) -> Failed:
        """The outcome of a message whose current (later) part will not be taken: the
        earlier parts were, so it is not handed back to be sent again."""
        index = job.index
        return Failed(
            f"part {index + 1} of {len(job.bodies)} not accepted ({reason}); parts 1-{index} were",
            code="partial",
            raw=" ".join(job.ids or ()),
        )

    # -- expiry -----------------------------------------------------------------

    def expire(self, now: float, timeout: float) -> tuple[list[Job], bool]:
        """Take out the submits written `timeout` or more before `now` and unanswered, in
        send order, and whether the session should reconnect: true when the last of them
        is the `TIMEOUTS_TO_RECONNECT`th in a row (those after it stay outstanding, to
        be lost with the connection)."""
        outstanding = self.outstanding
        expired = []
        for sequence, job in outstanding.items():  # in send order
            if job.sent_at + timeout > now:
                break
            expired.append(sequence)
        answers, self.answers = self.answers, []
        heard = 0  # answers replayed so far: those before the time-out at hand
        late = []
        reconnect = False
        for sequence in expired:
            job = outstanding.pop(sequence)
            late.append(job)
            expiry = job.sent_at + timeout
            if heard < len(answers) and answers[heard] <= expiry:
                self.timeouts = 0  # an answer came between the last time-out and this one
                while heard < len(answers) and answers[heard] <= expiry:
                    heard += 1
            self.timeouts += 1
            if self.timeouts >= TIMEOUTS_TO_RECONNECT:
                reconnect = True
                break
        if heard < len(answers):
            self.timeouts = 0  # answered since the last time-out
        return late, reconnect

    def expire_waiting(self, now: float, timeout: float, unbound_at: float) -> list[Job]:
        """Without a bound session (since `unbound_at`): take out of the queue the
        messages not sent at all that waited `timeout` (since they were queued or the
        session was lost, whichever is later), and the later parts past their deadline."""
        keep: deque[Job] = deque()
        late: list[Job] = []
        for job in self.queue:
            if job.index == 0:
                gone = now - max(job.since, unbound_at) >= timeout
            else:
                gone = now >= job.deadline
            (late if gone else keep).append(job)
        if late:
            self.queue = keep
        return late

    def lose_outstanding(self) -> list[Job]:
        """The connection is gone: every submit written and unanswered, in send order;
        `outstanding` starts again empty (a new dict)."""
        lost, self.outstanding = self.outstanding, {}
        return list(lost.values())

    def drain(self) -> list[Job]:
        """Closing: every message queued or held (none of them written), taken out."""
        waiting = [*self.queue, *(job for _, _, job, _ in self.held)]
        self.queue.clear()
        self.held.clear()
        return waiting
