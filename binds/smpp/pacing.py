"""How fast an SMPP session may submit, from how the SMSC answers.

Two parts, both from `binds.flow`: the rate controller (`AdaptiveRate`), which slows
the session on ESME_RTHROTTLED and speeds it up again, and the queue probe
(`QueueProbe`), which takes over against an SMSC whose queue stays full (one submit in
flight at a time) so that it is not flooded. This module decides which hears of each
answer and logs the slow-downs and speed-ups, once per change. No I/O: the session
owns the timers and asks `rate` and `probe` when it may write.
"""

from __future__ import annotations

import random
from typing import Any

from ..flow import AdaptiveRate, QueueProbe

__all__ = ["Pacing"]


class Pacing:
    """The pace of one session: its rate controller and queue probe, and their log lines."""

    def __init__(self, tps: float, *, floor: float, log: Any) -> None:
        self._floor = floor
        self._log = log
        # Paces submits at the rate the SMSC accepts; the window stays as configured.
        self.rate = AdaptiveRate(tps, floor=floor, on_change=self._rate_moved)
        # Against a full SMSC queue: one submit in flight at a time (see QueueProbe).
        self.probe = QueueProbe()
        self.queue_full = False  # a queue-full answer since the last accepted submit
        self._refusal = "ESME_RTHROTTLED"  # the last throttling answer (why a slow-down)
        self._rate_logged = max(0.0, tps)  # the rate last logged (0 = unlimited)

    def retune(self, tps: float) -> None:
        """A new rate ceiling (a reload): a fresh rate measurement, unless it is the same."""
        if tps != self.rate.ceiling:
            self.rate = AdaptiveRate(tps, floor=self._floor, on_change=self._rate_moved)
            self._rate_logged = max(0.0, tps)

    def accepted(self, count: int, now: float, window: int) -> bool:
        """`count` submits accepted at loop time `now`; True when the rate changed."""
        rate = self.rate
        before = rate.rate
        if self.queue_full:
            self._room_again(count, now, window)
        else:
            rate.accepted(count, now)
        return rate.rate != before

    def refused(self, name: str, *, queue_full: bool, now: float, window: int) -> bool:
        """The SMSC answered `name` at `now`: its queue is full (`queue_full`), or "too
        fast" (ESME_RTHROTTLED, or a vendor status configured as retry). True when the
        rate changed."""
        rate = self.rate
        before = rate.rate
        if queue_full:
            # The probe's to judge (see QueueProbe): a queue that stays full whatever
            # the rate is not slowed for, or the session would crawl once it has room.
            self.queue_full = True
            probe = self.probe
            probing = probe.limit
            took = probe.full(now, window)
            if probe.limit and not probing:
                self._log.warning(
                    "slowing down: SMSC queue full; probing with one submit at a time",
                    reason=name,
                    refused_in_a_row=QueueProbe.TRIGGER,
                )
            if took:
                self._refusal = name
                rate.cap(took, now)
        else:
            self._refusal = name
            rate.throttled()
        return rate.rate != before

    def pause(self, now: float) -> float:
        """How long to hold a refused submit from `now`: the rate controller's pause,
        jittered (refused submits must not all come back at once), and while probing at
        least until the next probe may go."""
        pause = self.rate.pause() * random.uniform(0.5, 1.5)
        probe = self.probe
        if probe.limit:
            pause = max(pause, probe.not_before - now)
        return pause

    def _room_again(self, count: int, now: float, window: int) -> None:
        """Submits accepted while the queue probe watches (see QueueProbe): queue-full
        answers held back since the last accepted one were too fast after all (the rate
        controller hears of them now); while probing, each lets one more go."""
        probe = self.probe
        rate = self.rate
        if probe.in_row:
            self._refusal = "ESME_RMSGQFUL"
            for _ in range(probe.in_row):
                rate.throttled()
        rate.accepted(count, now)
        if probe.accepted(count, window):
            if probe.limit:
                self._log.info("speeding up: SMSC queue has room", in_flight=probe.limit)
            else:
                self._log.info("speeding up: SMSC queue takes the full window", window=window)
        self.queue_full = probe.watching

    def _rate_moved(self, before: float, after: float) -> None:
        """The rate controller changed the rate (at most about once a second): log the
        slow-downs, and the speed-ups that matter (back to the ceiling or unlimited, or
        half as fast again as last logged) so that a recovery is a few lines, not one
        per step."""
        del before
        logged = self._rate_logged
        if after == logged:
            return
        if after and (not logged or after < logged):
            self._rate_logged = after
            self._log.warning("slowing down", reason=self._refusal, rate=round(after, 1))
        elif not after or after >= self.rate.ceiling > 0 or after >= 1.5 * logged:
            self._rate_logged = after
            self._log.info("speeding up again", rate=round(after, 1) or "unlimited")
