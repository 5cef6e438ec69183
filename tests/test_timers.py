"""Timers: Poller.call_later over every poller, and TimerQueue alone with a fake clock."""

import logging
import math
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike import Transport
from pike.timers import TimerHandle, TimerQueue


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


# -- call_later on real pollers --------------------------------------------------


def test_timers_run_in_due_order(poller):
    ran = []
    poller.call_later(0.03, ran.append, "c")
    poller.call_later(0.01, ran.append, "a")
    poller.call_later(0.02, ran.append, "b")
    poller.call_later(0, ran.append, "first")
    poller.loop(timeout=5)
    assert ran == ["first", "a", "b", "c"]


def test_same_deadline_runs_first_in_first_out(poller, monkeypatch):
    # Freeze the clock so the deadlines are exactly equal.
    frozen = poller.time()
    monkeypatch.setattr(poller._timers, "clock", lambda: frozen)
    ran = []
    for i in range(50):
        poller.call_later(0, ran.append, i)
    assert poller.poll(0) == 50
    assert ran == list(range(50))


def test_zero_delay_timers_keep_scheduling_order(poller):
    ran = []
    for i in range(200):
        poller.call_later(0, ran.append, i)
    poller.loop(timeout=5)
    assert ran == list(range(200))


def test_cancelled_timer_does_not_run(poller):
    ran = []
    handle = poller.call_later(0.01, ran.append, "cancelled")
    poller.call_later(0.02, ran.append, "kept")
    handle.cancel()
    assert handle.cancelled
    poller.loop(timeout=5)
    assert ran == ["kept"]


def test_cancel_from_an_earlier_timer_of_the_same_batch(poller):
    ran = []
    handles = {}

    def first():
        ran.append("first")
        handles["second"].cancel()

    poller.call_later(0, first)
    handles["second"] = poller.call_later(0, ran.append, "second")
    poller.call_later(0, ran.append, "third")
    assert poller.poll(0) == 2  # first and third; second was cancelled mid-batch
    assert ran == ["first", "third"]
    assert poller.loop(timeout=1) == 0  # nothing is left to wait for


def test_cancel_is_idempotent(poller):
    ran = []
    a = poller.call_later(10, ran.append, "a")
    poller.call_later(10, ran.append, "b")
    a.cancel()
    a.cancel()
    a.cancel()
    assert len(poller._timers) == 1


def test_cancel_after_it_ran_is_harmless(poller):
    ran = []
    a = poller.call_later(0, ran.append, "a")
    poller.poll(0)
    assert ran == ["a"]
    poller.call_later(10, ran.append, "b")
    a.cancel()
    a.cancel()
    assert len(poller._timers) == 1  # the live timer still counts


def test_cancel_from_its_own_callback_is_harmless(poller):
    ran = []
    handles = []

    def me():
        ran.append("me")
        handles[0].cancel()

    handles.append(poller.call_later(0, me))
    poller.call_later(10, lambda: None)
    poller.poll(0)
    assert ran == ["me"]
    assert len(poller._timers) == 1


def test_schedule_and_cancel_does_not_grow_the_heap(poller):
    poller.call_later(3600, lambda: None)  # one live, far timer
    for _ in range(10_000):
        poller.call_later(60, lambda: None).cancel()
    assert len(poller._timers) == 1
    assert len(poller._timers.heap) < 200
    # The same with all handles kept until a mass cancel.
    handles = [poller.call_later(60, lambda: None) for _ in range(10_000)]
    for h in handles:
        h.cancel()
    assert len(poller._timers) == 1
    assert len(poller._timers.heap) < 200


def test_nan_delay_is_refused(poller):
    with pytest.raises(ValueError):
        poller.call_later(math.nan, lambda: None)
    assert len(poller._timers) == 0


def test_negative_delay_runs_on_the_next_iteration(poller):
    ran = []
    poller.call_later(-5, ran.append, "late")
    assert poller.poll(0) == 1
    assert ran == ["late"]


def test_timer_scheduled_by_a_timer_waits_for_the_next_iteration(poller):
    ran = []

    def again(n):
        ran.append(n)
        if n < 3:
            poller.call_later(0, again, n + 1)

    poller.call_later(0, again, 0)
    assert poller.poll(0) == 1
    assert poller.poll(0) == 1
    assert ran == [0, 1]
    poller.loop(timeout=5)
    assert ran == [0, 1, 2, 3]


@pytest.mark.timeout(10)
def test_a_timer_keeps_loop_alive_until_it_fires(poller):
    ran = []
    poller.call_later(0.1, ran.append, "fired")
    iterations = poller.loop()  # no channels: only the timer keeps it going
    assert ran == ["fired"]
    assert 1 <= iterations <= 5


@pytest.mark.timeout(10)
def test_poll_none_with_only_a_timer_returns_when_it_is_due(poller):
    ran = []
    delay = 0.1
    start = time.monotonic()
    poller.call_later(delay, ran.append, "due")
    count = poller.poll(None)
    elapsed = time.monotonic() - start
    # The wait is rounded up, never down: one poll(None) is enough.
    assert count == 1 and ran == ["due"]
    granularity = max(time.get_clock_info("monotonic").resolution, 0.001)
    assert elapsed >= delay - granularity
    assert elapsed < 5.0


@pytest.mark.timeout(10)
def test_timer_is_not_run_early_with_channels_too(poller):
    a, b = socket.socketpair()
    try:
        Transport(poller, a)
        ran = []
        poller.call_later(0.05, ran.append, "due")
        polls = 0
        while not ran and polls < 20:
            poller.poll(None)
            polls += 1
        assert ran == ["due"]
        assert polls <= 2  # the idle channel adds no wake-ups
    finally:
        b.close()


def test_timer_exception_is_logged_and_the_loop_survives(poller, caplog):
    ran = []

    def broken():
        raise ValueError("timer failure")

    poller.call_later(0, broken)
    poller.call_later(0, ran.append, "same batch")
    poller.call_later(0.02, ran.append, "later")
    with caplog.at_level(logging.ERROR, logger="pike"):
        poller.loop(timeout=5)
    assert ran == ["same batch", "later"]
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(failures) == 1
    assert "timer failure" in str(failures[0].exc_info[1])


def test_keyboard_interrupt_from_a_timer_propagates(poller):
    def interrupt():
        raise KeyboardInterrupt

    poller.call_later(0, interrupt)
    with pytest.raises(KeyboardInterrupt):
        poller.loop(timeout=5)
    # The poller is still usable afterwards.
    ran = []
    poller.call_later(0, ran.append, "after")
    poller.loop(timeout=5)
    assert ran == ["after"]


def test_keyboard_interrupt_keeps_the_rest_of_the_batch(poller):
    ran = []

    def interrupt():
        raise KeyboardInterrupt

    poller.call_later(0, interrupt)
    poller.call_later(0, ran.append, "B")
    with pytest.raises(KeyboardInterrupt):
        poller.loop(timeout=5)
    assert len(poller._timers) == 1, "the rest of the interrupted batch was lost"
    poller.loop(timeout=5)
    assert ran == ["B"]


def test_system_exit_from_a_timer_propagates(poller):
    def leave():
        raise SystemExit(3)

    poller.call_later(0, leave)
    with pytest.raises(SystemExit):
        poller.poll(0)


@pytest.mark.timeout(10)
def test_far_timer_does_not_overflow_the_wait(poller):
    # Beyond what epoll/poll take in milliseconds (~24.8 days).
    far = poller.call_later(30 * 86400, lambda: None)
    stopper = threading.Timer(0.2, poller.stop)
    stopper.start()
    try:
        poller.loop()  # must block (then be stopped), not raise OverflowError
    finally:
        stopper.cancel()
        stopper.join(5)
        far.cancel()


@pytest.mark.timeout(10)
def test_infinite_delay(poller):
    never = []
    handle = poller.call_later(math.inf, never.append, "never")
    stopper = threading.Timer(0.2, poller.stop)
    stopper.start()
    try:
        poller.loop()
    finally:
        stopper.cancel()
        stopper.join(5)
    assert never == []
    handle.cancel()
    assert poller.loop() == 0


@pytest.mark.timeout(10)
def test_long_loop_timeout_does_not_overflow_the_wait(poller):
    a, b = socket.socketpair()
    try:
        Transport(poller, a)
        stopper = threading.Timer(0.2, poller.stop)
        stopper.start()
        try:
            poller.loop(timeout=30 * 86400)
        finally:
            stopper.cancel()
            stopper.join(5)
    finally:
        b.close()


def test_timer_args_are_passed(poller):
    got = []
    poller.call_later(0, lambda *a: got.append(a), 1, "two", None)
    poller.poll(0)
    assert got == [(1, "two", None)]


def test_time_is_monotonic_seconds(poller):
    assert abs(poller.time() - time.monotonic()) < 1.0


# -- TimerQueue with a fake clock -----------------------------------------------------


def test_queue_orders_by_due_time():
    clock = FakeClock()
    q = TimerQueue(clock)
    for delay in (5, 1, 3, 2, 4):
        q.schedule(delay, None, (delay,))
    assert len(q) == 5
    assert q.next_delay() == 1
    clock.advance(3)
    assert [h._args for h in q.pop_due()] == [(1,), (2,), (3,)]
    assert len(q) == 2
    assert q.next_delay() == 1
    clock.advance(10)
    assert [h._args for h in q.pop_due()] == [(4,), (5,)]
    assert q.next_delay() is None
    assert q.pop_due() == ()


def test_queue_same_deadline_is_fifo():
    clock = FakeClock()
    q = TimerQueue(clock)
    for i in range(100):
        q.schedule(1.0, None, (i,))
    clock.advance(1.0)
    assert [h._args[0] for h in q.pop_due()] == list(range(100))


def test_queue_nothing_due_before_its_time():
    clock = FakeClock()
    q = TimerQueue(clock)
    q.schedule(1.0, None, ())
    clock.advance(0.999)
    assert list(q.pop_due()) == []
    assert q.next_delay() == pytest.approx(0.001)
    clock.advance(0.001)
    assert len(q.pop_due()) == 1


def test_queue_next_delay_is_never_negative_and_skips_cancelled():
    clock = FakeClock()
    q = TimerQueue(clock)
    first = q.schedule(1, None, ())
    q.schedule(2, None, ())
    first.cancel()
    assert q.next_delay() == 2
    clock.advance(5)
    assert q.next_delay() == 0.0


def test_queue_negative_and_zero_delays_are_due_now():
    clock = FakeClock()
    q = TimerQueue(clock)
    q.schedule(-3, None, ("neg",))
    q.schedule(0, None, ("zero",))
    assert q.next_delay() == 0.0
    assert [h._args[0] for h in q.pop_due()] == ["neg", "zero"]


def test_queue_nan_refused():
    q = TimerQueue(FakeClock())
    with pytest.raises(ValueError):
        q.schedule(math.nan, None, ())
    assert len(q) == 0


def test_queue_cancel_counts_once():
    clock = FakeClock()
    q = TimerQueue(clock)
    a = q.schedule(1, None, ())
    q.schedule(1, None, ())
    a.cancel()
    a.cancel()
    assert len(q) == 1
    clock.advance(1)
    assert len(q.pop_due()) == 1
    assert len(q) == 0


def test_queue_cancel_after_pop_does_not_count():
    clock = FakeClock()
    q = TimerQueue(clock)
    a = q.schedule(0, None, ())
    q.schedule(5, None, ())
    assert q.pop_due() == [a]
    a.cancel()
    assert len(q) == 1


def test_queue_handle_runs_once_and_drops_references():
    q = TimerQueue(FakeClock())
    got = []
    payload = object()
    h = q.schedule(0, got.append, (payload,))
    (due,) = q.pop_due()
    due._run()
    assert got == [payload]
    assert h._callback is None and h._args is None
    assert "when=" in repr(h)
    h.cancel()
    assert "cancelled" in repr(h)


def test_queue_cancel_drops_references():
    q = TimerQueue(FakeClock())
    h = q.schedule(1, print, ("x",))
    h.cancel()
    assert h._callback is None and h._args is None


def test_queue_purges_cancelled_handles():
    q = TimerQueue(FakeClock())
    keep = [q.schedule(100, None, ()) for _ in range(10)]
    for _ in range(10_000):
        q.schedule(50, None, ()).cancel()
    assert len(q) == 10
    assert len(q.heap) <= 10 + 2 * TimerQueue._MIN_CANCELLED_TO_PURGE
    assert all(not h.cancelled for h in keep)


def test_handle_ordering():
    a = TimerHandle(1.0, 0, None, (), None)
    b = TimerHandle(1.0, 1, None, (), None)
    c = TimerHandle(0.5, 2, None, (), None)
    assert a < b and c < a and not b < a


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("schedule"), st.floats(-5, 50, allow_nan=False)),
            st.tuples(st.just("cancel"), st.integers(0, 1000)),
            st.tuples(st.just("advance"), st.floats(0, 20, allow_nan=False)),
        ),
        max_size=120,
    )
)
def test_queue_matches_a_simple_model(ops):
    """Whatever the mix of schedule / cancel / time passing, the queue pops the
    live timers that are due, each once, ordered by (due time, scheduling order)."""
    clock = FakeClock(0.0)
    q = TimerQueue(clock)
    handles = []  # (when, seq, handle)
    popped = []
    for op, arg in ops:
        if op == "schedule":
            seq = len(handles)
            h = q.schedule(arg, None, (seq,))
            handles.append((clock.now + max(arg, 0.0), seq, h))
        elif op == "cancel" and handles:
            handles[arg % len(handles)][2].cancel()
        elif op == "advance":
            clock.advance(arg)
            due = q.pop_due()
            popped.extend(h._args[0] for h in due)
            assert all(not h.cancelled and h.when <= clock.now for h in due)
            keys = [(h.when, h._seq) for h in due]
            assert keys == sorted(keys)
            after = q.next_delay()
            assert after is None or after > 0  # everything due was taken
        live = [x for x in handles if not x[2].cancelled and x[1] not in popped]
        assert len(q) == len(live)
        nd = q.next_delay()
        if live:
            assert nd == pytest.approx(max(min(w for w, _, _ in live) - clock.now, 0.0))
        else:
            assert nd is None
    clock.advance(1000)
    popped.extend(h._args[0] for h in q.pop_due())
    # Each live timer popped exactly once, in order within every batch.
    never_cancelled = {seq for _, seq, h in handles if not h.cancelled or seq in popped}
    assert sorted(popped) == sorted(never_cancelled)
    assert len(set(popped)) == len(popped)
