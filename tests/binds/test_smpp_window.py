"""The SMPP send window on its own: no socket, no loop, times made up."""

from __future__ import annotations

from binds.base import Failed, OutboundMessage, Outcome
from binds.smpp.window import PART_RETRIES, TIMEOUTS_TO_RECONNECT, Job, SubmitWindow

TIMEOUT = 10.0


def job(parts: int = 1, *, now: float = 0.0, deadline: float = 120.0, name: str = "m") -> Job:
    outcomes: list[Outcome] = []
    message = OutboundMessage(name, "12345", "+447911123456", "hi")
    return Job(message, outcomes.append, [b"body"] * parts, deadline, now)


def written(window: SubmitWindow, *sent: tuple[int, float]) -> list[Job]:
    """Jobs written as these (sequence number, time) pairs, in this order."""
    jobs = []
    for sequence, at in sent:
        item = job(name=f"m{sequence}")
        item.sent_at = at
        window.outstanding[sequence] = item
        jobs.append(item)
    return jobs


def test_expire_takes_out_the_submits_past_the_timeout_in_send_order() -> None:
    window = SubmitWindow(10)
    first, second, third = written(window, (7, 0.0), (8, 1.0), (9, 5.0))
    late, reconnect = window.expire(now=11.0, timeout=TIMEOUT)
    assert late == [first, second]
    assert not reconnect
    assert list(window.outstanding.values()) == [third]
    assert window.timeouts == 2


def test_three_time_outs_in_a_row_ask_for_a_reconnect_and_leave_the_rest_outstanding() -> None:
    window = SubmitWindow(10)
    jobs = written(window, (1, 0.0), (2, 0.1), (3, 0.2), (4, 0.3))
    late, reconnect = window.expire(now=20.0, timeout=TIMEOUT)
    assert TIMEOUTS_TO_RECONNECT == 3
    assert late == jobs[:3]
    assert reconnect
    assert list(window.outstanding.values()) == [jobs[3]]  # lost with the connection


def test_an_answer_between_two_time_outs_breaks_the_row() -> None:
    window = SubmitWindow(10)
    written(window, (1, 0.0), (2, 0.1), (3, 5.0), (4, 5.1))
    window.answered(10.5)  # after the second submit's time-out, before the third's
    late, reconnect = window.expire(now=20.0, timeout=TIMEOUT)
    assert len(late) == 4
    assert not reconnect  # two in a row, an answer, two in a row
    assert window.timeouts == 2
    # The count goes on across sweeps: the next time-out without an answer is the 4th.
    written(window, (5, 20.0))
    late, reconnect = window.expire(now=30.0, timeout=TIMEOUT)
    assert reconnect


def test_an_answer_after_the_last_time_out_resets_the_count() -> None:
    window = SubmitWindow(10)
    written(window, (1, 0.0), (2, 0.1))
    window.answered(10.5)
    late, _ = window.expire(now=11.0, timeout=TIMEOUT)
    assert len(late) == 2
    assert window.timeouts == 0
    assert window.answers == []  # replayed once


def test_holds_come_back_in_the_order_due_and_report_a_new_first() -> None:
    window = SubmitWindow(10)
    later, sooner, cancelled = job(name="later"), job(name="sooner"), job(name="cancelled")
    assert window.hold(later, 5.0, new_try=False)  # the first held: set the timer
    assert window.hold(sooner, 2.0, new_try=True)  # due before it: set the timer again
    assert not window.hold(cancelled, 3.0, new_try=False)
    cancelled.cancelled = True
    assert window.next_release == 2.0
    assert window.release(1.0) == []
    assert not window.queue
    assert window.release(3.0) == [cancelled]  # given its outcome by the session
    assert list(window.queue) == [sooner]
    assert (sooner.began, sooner.since) == (3.0, 3.0)  # a new try starts now
    assert window.next_release == 5.0
    assert window.release(4.9995) == []  # within a millisecond counts as due
    assert list(window.queue) == [sooner, later]
    assert (later.began, later.since) == (0.0, 4.9995)  # throttled: still "since" it began
    assert window.next_release is None


def test_the_parts_of_a_long_message_go_one_after_the_other() -> None:
    window = SubmitWindow(10)
    three = job(3)
    assert window.part_accepted(three, "a", 1.0) is None
    assert list(window.queue) == [three]
    assert (three.index, three.began, three.since) == (1, 1.0, 1.0)
    window.queue.clear()
    three.tries = 2  # a lost part's tries do not carry over to the next part
    assert window.part_accepted(three, "b", 2.0) is None
    assert three.tries == 0
    window.queue.clear()
    assert window.part_accepted(three, "c", 3.0) == ["a", "b", "c"]
    assert not window.queue


def test_a_lost_later_part_is_tried_again_with_back_off_then_fails_as_partial() -> None:
    window = SubmitWindow(10)
    two = job(2)
    window.part_accepted(two, "first", 0.0)
    dues = [SubmitWindow.retry_part(two, 100.0) for _ in range(PART_RETRIES)]
    assert dues == [101.0, 102.0, 104.0]
    assert SubmitWindow.retry_part(two, 100.0) is None
    outcome = SubmitWindow.partial(two, "timeout")
    assert isinstance(outcome, Failed)
    assert outcome.code == "partial"
    assert outcome.reason == "part 2 of 2 not accepted (timeout); parts 1-1 were"
    assert outcome.raw == "first"


def test_messages_waiting_for_a_session_expire_from_when_it_was_lost() -> None:
    window = SubmitWindow(10)
    old = job(name="old", now=0.0)  # queued long before the session was lost
    fresh = job(name="fresh", now=8.0)
    later_part = job(2, name="part", deadline=30.0)
    later_part.index = 1
    window.queue.extend([old, fresh, later_part])
    # Lost at 5: the old message counts from 5, not from 0.
    assert window.expire_waiting(now=14.0, timeout=TIMEOUT, unbound_at=5.0) == []
    assert window.expire_waiting(now=15.0, timeout=TIMEOUT, unbound_at=5.0) == [old]
    assert list(window.queue) == [fresh, later_part]
    # A later part waits until its own deadline (the SMSC has the earlier parts).
    assert window.expire_waiting(now=29.0, timeout=TIMEOUT, unbound_at=5.0) == [fresh]
    assert window.expire_waiting(now=30.0, timeout=TIMEOUT, unbound_at=5.0) == [later_part]
    assert not window.queue


def test_a_lost_connection_takes_everything_outstanding_and_starts_a_new_dict() -> None:
    window = SubmitWindow(10)
    jobs = written(window, (3, 0.0), (1, 0.0), (2, 0.0))
    before = window.outstanding
    assert window.lose_outstanding() == jobs  # in send order, not by sequence number
    assert window.outstanding == {}
    assert window.outstanding is not before  # a held `outstanding.pop` is stale


def test_closing_drains_the_queue_and_the_holds() -> None:
    window = SubmitWindow(10)
    queued, held = job(name="queued"), job(name="held")
    window.queue.append(queued)
    window.hold(held, 50.0, new_try=False)
    assert window.drain() == [queued, held]
    assert not window.queue
    assert window.next_release is None
