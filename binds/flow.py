"""Flow control shared by every bind: an in-flight window and a token-bucket rate limiter.

Both are plain asyncio objects for one event loop. Neither polls: waiters sleep on
futures that are resolved exactly when they may proceed, and both hand out
capacity strictly in arrival order so no caller can be starved by later ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Window:
    """Limits how many operations are in flight at once; the limit can change at runtime.

    A slot freed (or added by raising `limit`) goes to the longest-waiting caller,
    never to a newcomer that happens to run first: the slot is counted as taken
    when the waiter is woken, not when it gets round to running.
    """

    def __init__(self, limit: int) -> None:
        self._limit = _check_limit(limit)
        self._in_flight = 0
        self._peak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """The most operations allowed in flight."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        # Shrinking never interrupts work already in flight; new acquirers simply
        # wait until enough of it has finished.
        self._limit = _check_limit(value)
        self._wake()

    @property
    def in_flight(self) -> int:
        """Slots currently held (including ones handed to waiters not yet resumed)."""
        return self._in_flight

    @property
    def peak(self) -> int:
        """The highest `in_flight` ever reached."""
        return self._peak

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        """Take a slot, waiting in FIFO order if none is free."""
        if not self._waiters and self._in_flight < self._limit:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just before the cancellation landed:
                # give it back or it leaks for good.
                self.release()
            else:
                self._discard(fut)
            raise

    def release(self) -> None:
        """Give a slot back and pass it on to the next waiter."""
        if self._in_flight <= 0:
            raise RuntimeError("Window.release() without a matching acquire()")
        self._in_flight -= 1
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _take(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._peak:
            self._peak = self._in_flight

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while queued
                continue
            self._take()
            fut.set_result(None)

    def _discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass


def _check_limit(value: int) -> int:
    if value < 1:
        raise ValueError(f"window limit must be >= 1, got {value}")
    return value


class RateLimiter:
    """A token bucket allowing `rate` operations per second on average.

    The bucket holds at most `burst` tokens and starts full, so after a quiet
    spell up to `burst` operations go out at once; over any one second no more
    than about ``rate + burst`` pass. The default burst is a tenth of a second's
    worth of tokens (at least 1): small enough that providers counting per second
    do not see spikes, large enough that timer jitter does not lower throughput.
    ``rate <= 0`` means unlimited.

    Callers are served one at a time under a lock, in arrival order, so a caller
    asking for many tokens is not overtaken forever by callers asking for one.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate = float(rate)
        self._burst_setting = burst
        self._lock = asyncio.Lock()
        self._tokens = self.burst
        self._stamp: float | None = None  # loop.time() of the last refill
        self._sleeper: asyncio.Future[None] | None = None

    @property
    def rate(self) -> float:
        """Operations per second; <= 0 means unlimited."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        # Credit what was earned at the old rate before switching.
        self._refill()
        was_unlimited = self.unlimited
        self._rate = float(value)
        # Coming from unlimited, start with a full bucket as a new limiter would.
        self._tokens = self.burst if was_unlimited else min(self._tokens, self.burst)
        if self._sleeper is not None and not self._sleeper.done():
            # Let the waiting caller recompute its wait at the new rate now.
            self._sleeper.set_result(None)

    @property
    def burst(self) -> float:
        """The bucket size: how many operations may go out back to back."""
        if self._burst_setting is not None:
            return max(1.0, float(self._burst_setting))
        return max(1.0, self._rate / 10.0)

    @property
    def unlimited(self) -> bool:
        """Whether the limiter lets everything through at once."""
        return self._rate <= 0

    async def acquire(self, n: int = 1) -> None:
        """Wait until `n` operations may proceed and account for them."""
        if n <= 0:
            return
        if self.unlimited:
            return
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                if self.unlimited:
                    return
                self._refill()
                # More than a full bucket can never be available at once: take what
                # a full bucket gives and go into debt, which delays later callers.
                need = min(float(n), self.burst)
                if self._tokens >= need:
                    self._tokens -= n
                    return
                delay = (need - self._tokens) / self._rate
                fut: asyncio.Future[None] = loop.create_future()
                self._sleeper = fut
                handle = loop.call_later(delay, _resolve, fut)
                try:
                    await fut
                finally:
                    handle.cancel()
                    self._sleeper = None

    def take(self, now: float | None = None) -> float:
        """Take a token without waiting: 0.0 when one was taken, else the seconds until
        one will be there (nothing taken). For callers that keep their own queue and
        arm one timer for its head instead of a waiting future per operation; do not
        mix with `acquire` on one limiter (waiters there would be overtaken). `now`:
        the loop's time, when the caller has it (asking the loop costs a system call
        on Python 3.11)."""
        if self._rate <= 0:
            return 0.0
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    def _refill(self, now: float | None = None) -> None:
        if now is None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:  # rate changed outside a running loop
                return
        if self._stamp is None or self._rate <= 0:
            if self._rate <= 0:
                self._tokens = self.burst
            self._stamp = now
            return
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AdaptiveRate:
    """A token bucket whose rate follows what the peer accepts: AIMD once per `interval`.

    The bind reports every answer: `accepted()` or `throttled()` (the peer said
    "too fast" or "queue full"). At the end of each interval:

    * throttles seen: the rate drops to ``decrease`` times the rate the peer
      accepted over that interval (never below `floor`). Starting unlimited
      (``ceiling <= 0``), the first throttle switches to this measured mode.
    * none seen, and callers had to wait for tokens: the rate grows by
      ``max(1, increase * rate)``; past the ceiling it returns to the ceiling
      (or to unlimited once it doubles the rate first measured).

    Unlimited, a throttle ends the interval early (after a fifth of it): an
    unpaced session would otherwise be refused hundreds of times in one interval.

    Some peers refuse a share of submits whatever the rate (random throttling).
    Lowering the rate then only lowers what gets through, so the two intervals
    after each decrease are checked: if in both the share accepted did not improve
    and the accepted rate fell with the rate, the decrease is undone and throttles are
    ignored for a while (8 measurements, doubling up to 64 while the pattern
    persists). A peer that throttles because of our rate shows the opposite
    (refusals gone, or a clearly larger share accepted), so the decrease
    stands; two intervals rather than one, because a peer that was just
    refusing may refuse a few more while its queue drains. While throttles are
    ignored the rate grows as if there were none, so a rate that was driven down
    (an outage, a burst of refusals) recovers instead of staying at the floor.

    `on_change` hears of every change of the rate (for logging); `cap` sets a rate
    the caller measured itself (see `QueueProbe`).

    A measurement needs `MIN_ANSWERS` answers (an interval is stretched up to
    `MAX_STRETCH` intervals to get them): at a few messages per second one
    interval holds one or two answers, and a share of refused ones measured on
    so few is noise that would push the rate down to the floor and keep it there.
    """

    CALM_MIN = 8
    CALM_MAX = 64
    MIN_ANSWERS = 10
    MAX_STRETCH = 10

    def __init__(
        self,
        ceiling: float,
        *,
        floor: float = 1.0,
        interval: float = 1.0,
        decrease: float = 0.7,
        increase: float = 0.1,
        on_change: Callable[[float, float], None] | None = None,
    ) -> None:
        if floor <= 0:
            raise ValueError(f"floor must be > 0, got {floor}")
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be between 0 and 1, got {decrease}")
        self.ceiling = max(0.0, float(ceiling))
        self.floor = min(float(floor), self.ceiling) if self.ceiling > 0 else float(floor)
        self.interval = interval
        self._decrease = decrease
        self._increase = increase
        self._bucket = RateLimiter(self.ceiling)
        self._gap_rate = -1.0  # the rate `_gap_value` is for (never a real one at first)
        self._gap_value = 0.0
        self._start: float | None = None
        self._last = 0.0  # loop time of the last event (an acquire or an answer)
        self._accepted = 0
        self._throttled = 0
        self._waited = False
        self._unlimited_at = 0.0  # with no ceiling: the rate from which we go unlimited again
        # (rate before, accepted rate, refused share, intervals since) of the last decrease.
        self._probe: tuple[float, float, float, int] | None = None
        self._calm_left = 0  # measurements left in which throttles are ignored
        self._calm = self.CALM_MIN
        self._at_floor = 0  # intervals in a row refused while already at the floor
        self.decreases = 0
        self.reverts = 0
        self.caps = 0
        # Told (rate before, rate after; 0 = unlimited) of every change, at most about
        # once per interval: the place to log speed-ups as well as slow-downs.
        self._on_change = on_change

    @property
    def rate(self) -> float:
        """The current rate in operations per second; 0 means unlimited."""
        return self._bucket._rate

    @property
    def limited(self) -> bool:
        return self._bucket._rate > 0

    def pause(self) -> float:
        """How long a throttled operation should wait before going again (before jitter).

        A limited bucket paces the retry itself; the pause only spreads retries
        so that they do not all queue for the same token.
        """
        if self.limited:
            return min(0.5, 1.0 / self.rate)
        return 0.01

    async def acquire(self) -> None:
        """Wait for a token at the current rate."""
        loop = asyncio.get_running_loop()
        self._tick(loop.time())
        if self._bucket.unlimited:
            return
        began = loop.time()
        await self._bucket.acquire(1)
        if loop.time() - began > 0.0005:
            self._waited = True

    def take(self, now: float | None = None) -> float:
        """`acquire` without waiting: 0.0 when the operation may go now (counted), else
        the seconds to wait before asking again. `now`: the loop's time, if known."""
        if now is None:
            now = asyncio.get_running_loop().time()
        self._tick(now)
        if self._bucket._rate <= 0:
            return 0.0
        wait = self._bucket.take(now)
        if wait > 0.0:
            self._waited = True  # callers had to wait: a reason to grow the rate
        return wait

    def accepted(self, count: int = 1, now: float | None = None) -> None:
        """The peer took one operation (or `count` answered at the same moment, `now`)."""
        self._tick(asyncio.get_running_loop().time() if now is None else now)
        self._accepted += count

    def throttled(self) -> None:
        """The peer refused one operation as too fast (it will be retried)."""
        self._throttled += 1
        if self._bucket.unlimited and self._start is not None:
            now = asyncio.get_running_loop().time()
            if now - self._start >= self.interval / 5:
                self._tick(now, early=True)

    def cap(self, rate: float, now: float) -> None:
        """The peer was measured to take about `rate` operations/s at most (its queue
        fills beyond): go no faster from loop time `now` (not below the floor), and
        measure afresh. The caller knows this is a rate, so it is not second-guessed
        as random throttling (no check, calm over); growth resumes as usual."""
        target = max(self.floor, rate)
        if self.limited and target >= self.rate:
            return
        self.caps += 1
        self._probe = None
        self._calm_left = 0
        if self._bucket.unlimited and self.ceiling <= 0:
            self._unlimited_at = max(2 * rate, 10 * self.floor)
        self._set(target)
        self._start, self._accepted, self._throttled, self._waited = now, 0, 0, False
        self._last = now

    def _tick(self, now: float, *, early: bool = False) -> None:
        if self._start is None or now - self._last > self._gap:
            # The start, or an idle spell: rates over it mean nothing, measure afresh.
            self._start, self._accepted, self._throttled, self._waited = now, 0, 0, False
            self._last = now
            return
        self._last = now
        span = now - self._start
        answers = self._accepted + self._throttled
        if not early and (
            span < self.interval
            or (answers < self.MIN_ANSWERS and span < self.MAX_STRETCH * self.interval)
        ):
            return
        accepted, throttled, waited = self._accepted, self._throttled, self._waited
        self._start, self._accepted, self._throttled, self._waited = now, 0, 0, False
        self._close(now, accepted / span, throttled / max(1, accepted + throttled), waited)

    def _idle_gap(self) -> float:
        """Longer than this between two events is a pause in the traffic, not a rate."""
        return 3 * max(self.interval, 1.0 / self.rate if self.limited else 0.0)

    @property
    def _gap(self) -> float:
        # `_idle_gap` for the rate it was last worked out for: a tick happens for every
        # answer a bind reads, the rate changes about once a second at most.
        if self._gap_rate != self._bucket._rate:
            self._gap_rate = self._bucket._rate
            self._gap_value = self._idle_gap()
        return self._gap_value

    def _close(self, now: float, accept_rate: float, share: float, waited: bool) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            before_rate, before_accept, before_share, since = probe
            # The accepted fraction of what was sent did not improve (and less got through).
            same = share > 0 and (1 - share) <= 1.25 * (1 - before_share)
            if same and accept_rate < 0.9 * before_accept:
                if since == 1:
                    self._probe = (before_rate, before_accept, before_share, 2)
                    return  # perhaps the tail of the old rate: look once more
                # Slower sending cut what got through, not what was refused: the peer
                # refuses regardless of our rate, so slowing down only hurts.
                self.reverts += 1
                self._calm_down()
                self._set(before_rate)
                return
            self._calm = self.CALM_MIN  # the decrease cut the refusals: it was right
        calm = self._calm_left > 0
        if calm:
            self._calm_left -= 1
            share = 0.0  # refusals that do not depend on our rate: grow as if none came
        if share > 0:
            base = accept_rate if self._bucket.unlimited else min(self.rate, accept_rate)
            target = max(self.floor, base * self._decrease)
            if self.limited and target >= self.rate:
                # Already at the floor: no slower rate can show whether the refusals
                # come from our rate. Refused here twice running, they do not (or the
                # peer takes less than the floor, which the floor says to ignore).
                self._at_floor += 1
                if self._at_floor >= 2:
                    self._at_floor = 0
                    self._calm_down()
                return
            self._at_floor = 0
            if self._bucket.unlimited and self.ceiling <= 0:
                self._unlimited_at = max(2 * accept_rate, 10 * self.floor)
            self._probe = (self.rate, accept_rate, share, 1)
            self.decreases += 1
            self._set(target)
        elif waited and self.limited:
            # Calm: the refusals are known not to come from our rate, so win back
            # quickly what a misread spell took (slow start), else probe gently.
            step = self.rate * 0.5 if calm else self._increase * self.rate
            grown = self.rate + max(1.0, step)
            if self.ceiling > 0:
                grown = min(grown, self.ceiling)
            elif grown >= self._unlimited_at:
                grown = 0.0
            self._set(grown)

    def _calm_down(self) -> None:
        """Ignore throttles for some measurements (more each time the pattern returns)."""
        self._calm_left = self._calm
        self._calm = min(self.CALM_MAX, self._calm * 2)

    def _set(self, rate: float) -> None:
        before = self._bucket.rate
        if rate != before:
            self._bucket.rate = rate
            if self._on_change is not None:
                self._on_change(before, rate)


class QueueProbe:
    """How many submits may be in flight while the peer's queue is full.

    An SMSC whose queue fills answers "queue full" to whatever it is sent, at any rate,
    until it has room again, which may be a minute away. Slowing the rate does not
    help, and a session that sends a full window again and again into a full queue
    collects thousands of refusals, for which an SMSC may block the account.

    After `TRIGGER` queue-full answers in a row (nothing accepted between), the
    session probes: one submit in flight, and after a refusal a pause before the
    next (doubling from `FIRST_PAUSE` up to `MAX_PAUSE`). Each submit accepted
    allows one more in flight, so the allowance doubles per round trip (1, 2, 4,
    ...) until it reaches the window, where probing ends. While the queue stays
    full there is about one refusal per pause, plus what was in flight when it
    filled.

    What the rate controller should hear of (it slows the session down to what the
    peer takes): queue-full answers between accepted submits (a queue that takes a
    certain rate and no more); and, when a run starts probing again soon after the
    last probing ended (less than `QUICK` windows accepted between), the rate the
    peer took from the start of the last probing to this one: its queue fills as
    soon as it gets a full window, so that rate is what it drains at. A run after a
    long spell of accepted submits is a congested queue, which no rate would have
    avoided; nor are the refusals of probes a rate.
    """

    TRIGGER = 3
    FIRST_PAUSE = 0.1
    MAX_PAUSE = 2.0
    QUICK = 10

    def __init__(self) -> None:
        self.limit = 0  # submits allowed in flight; 0 = not probing (the window applies)
        self.not_before = 0.0  # loop time before which no probe goes out
        self.probes = 0  # times probing started (metrics, tests)
        self.in_row = 0  # queue-full answers since the last accepted one, not yet probing
        self._since: int | None = None  # accepted since probing last ended (None: many)
        self._started = 0.0  # loop time probing last started
        self._taken = 0  # accepted since then
        self._pause = self.FIRST_PAUSE
        self._logged = 0  # the allowance last reported as a change

    @property
    def watching(self) -> bool:
        """Whether `accepted` has anything to do (callers on a hot path skip it if not)."""
        return bool(self.limit or self.in_row or self._since is not None)

    def full(self, now: float, window: int) -> float:
        """The peer answered "queue full" at loop time `now`. Returns 0.0, or the rate
        (submits/s) the peer took since the last probing started, when this answer
        starts probing again soon after the last probing ended: faster fills its queue.
        Probing started when `limit` goes from 0 to 1 (the caller logs it)."""
        if self.limit:
            # One refusal per pause counts: the others were in flight with it.
            if now >= self.not_before:
                self.limit = 1
                self.not_before = now + self._pause
                self._pause = min(self.MAX_PAUSE, 2 * self._pause)
            return 0.0
        self.in_row += 1
        if self.in_row < self.TRIGGER:
            return 0.0
        self.in_row = 0
        took = 0.0
        if self._since is not None and self._since < self.QUICK * window and now > self._started:
            took = self._taken / (now - self._started)
        self._since = None
        self._started, self._taken = now, 0
        self.probes += 1
        self.limit = self._logged = 1
        self.not_before = now + self.FIRST_PAUSE
        self._pause = min(self.MAX_PAUSE, 2 * self.FIRST_PAUSE)
        return took

    def accepted(self, count: int, window: int) -> bool:
        """`count` submits accepted. While probing: one more in flight for each; True
        when the allowance has doubled since last reported, or probing ended (`limit`
        back to 0 at the full `window`): a change worth one log line. Call `in_row`
        first: queue-full answers between accepted ones were too fast."""
        self.in_row = 0
        self._taken += count
        if not self.limit:
            if self._since is not None:
                self._since += count
                if self._since >= self.QUICK * window:
                    self._since = None  # a long spell: the next run is congestion
            return False
        self.limit += count
        if self.limit >= window:
            self.limit = self._logged = 0
            self._pause = self.FIRST_PAUSE
            self._since = 0
            return True
        if self.limit >= 2 * self._logged:
            self._logged = self.limit
            return True
        return False
