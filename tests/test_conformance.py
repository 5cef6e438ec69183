"""The pike.testing conformance battery, over every poller x implementation.

Also tests of the battery itself: check_all's reporting, the helpers'
bounded waits, and that a misbehaving poller is caught.
"""

import time

import pytest

import pike
from pike import testing
from pike.testing import CHECKS, CheckSkipped, check_all, run_until


@pytest.mark.timeout(30)
@pytest.mark.parametrize("check_name", list(CHECKS))
def test_conformance(poller, check_name):
    try:
        CHECKS[check_name](poller)
    except CheckSkipped as exc:
        pytest.skip(str(exc))


def test_every_check_is_documented_and_registered():
    assert len(CHECKS) >= 25
    for name, check in CHECKS.items():
        assert check.__name__ == f"check_{name}"
        assert getattr(testing, check.__name__) is check
        assert check.__doc__ and check.__doc__.strip(), f"{name} has no docstring"


def test_check_all_runs_on_fresh_default_pollers(poller):
    made = []

    def factory():
        p = pike.make_poller(poller.name)
        made.append(p)
        return p

    def uses_default(p):
        assert pike.get_poller() is p, "check_all did not install the poller"

    checks = {"idle_blocks": CHECKS["idle_blocks"], "default": uses_default}
    assert check_all(factory, checks) == {"idle_blocks": "passed", "default": "passed"}
    assert len(made) == 2 and made[0] is not made[1]
    assert all(p.closed for p in made)
    assert pike.get_poller() is poller, "check_all did not restore the default"


def test_check_all_reports_failures_and_skips(poller):
    def passes(p):
        assert True

    def fails(p):
        raise AssertionError("it broke")

    def skips(p):
        raise CheckSkipped("not here")

    leftover = []

    def leaves_a_channel_open(p):
        t = pike.Transport(alternate_poller=p)
        t.create_socket()
        leftover.append(t)

    checks = {"a": passes, "b": fails, "c": skips, "d": leaves_a_channel_open}
    with pytest.raises(AssertionError) as info:
        check_all(lambda: pike.make_poller(poller.name), checks)
    message = str(info.value)
    assert "1 of 4 checks failed" in message
    assert "b: AssertionError: it broke" in message
    assert "a:" not in message and "c:" not in message
    assert leftover[0].closed, "check_all did not close a leftover channel"

    assert check_all(lambda: pike.make_poller(poller.name), {"c": skips}) == {
        "c": "skipped: not here"
    }


def test_run_until_is_bounded_and_says_what_it_waited_for(poller):
    start = time.monotonic()
    with pytest.raises(AssertionError, match="timed out after 0.2s .* waiting for the moon"):
        run_until(poller, lambda: False, timeout=0.2, what="the moon")
    assert time.monotonic() - start < 2.0
    assert run_until(poller, lambda: True) == 0


def test_helpers_clean_up_unix_listeners(poller):
    if not testing.has_family(testing.AF_UNIX):
        pytest.skip("no Unix sockets")
    import os

    listener = testing.tcp_listener(poller, testing.AF_UNIX)
    directory = os.path.dirname(listener.address)
    assert os.path.isdir(directory)
    listener.close()
    listener.close()
    assert not os.path.exists(directory)


def test_a_spinning_poller_is_caught(poller):
    """The battery has teeth: a poller that never blocks fails the no-spin checks."""
    base = type(poller)
    if not hasattr(base, "_wait"):
        pytest.skip("not a pure-Python poller")

    class Spinning(base):
        def _wait(self, timeout):
            return super()._wait(0)

    spinning = Spinning()
    try:
        with pytest.raises(AssertionError, match="spins"):
            CHECKS["idle_blocks"](spinning)
    finally:
        for channel in spinning.channels():
            channel.close()
        spinning.close()


def test_a_poller_that_forgets_closed_fds_is_caught(poller):
    """A poller that dispatches to a channel it no longer watches fails the batch checks."""
    base = type(poller)
    if not hasattr(base, "_dispatch"):
        pytest.skip("not a pure-Python poller")
    if base.__name__ == "BatchedEpollPoller":
        pytest.skip("its batches are C records; the plain pollers show the battery's teeth")

    class Forgetful(base):
        """Keeps dispatching events to channels that were closed in the batch."""

        def _dispatch(self, events):
            count = 0
            snapshot = dict(self._channels)
            for fd, bits in events:
                channel = snapshot.get(fd)
                if channel is None:
                    if fd == self._waker_fd:
                        self._waker.clear()
                    continue
                if bits & self._READ_EVENTS:
                    count += 1
                    try:
                        channel.handle_read_event()
                    except Exception:
                        channel.handle_error()
            return count

    forgetful = Forgetful()
    try:
        with pytest.raises(AssertionError, match="exactly one of two|after close"):
            CHECKS["close_other_in_batch"](forgetful)
    finally:
        for channel in forgetful.channels():
            channel.close()
        forgetful.close()
