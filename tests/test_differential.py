"""Every conformance check, played on both implementations, must look the same.

Each check of :mod:`pike.testing` runs once on the pure-Python path and once
on the C path (on a fresh poller of the same kind each time), while every
callback of every :class:`~pike.testing.RecordingTransport` is logged per
transport, and so is the outcome (passed, skipped, or the exception). The
two must be equal: each transport's callbacks in the same order (a run of
one callback counted once), and the same outcome. (The interleaving of different transports within one batch is
the kernel's ready-list order, not pike's, so it is not compared.)

Checks whose callback sequence depends on the kernel's timing rather than on
pike (how many read events a large transfer takes, when a slow reader's
timer fires) are compared on their outcome and on which callbacks ran on
each transport (flow control's pause/resume aside), not on the exact
sequence; :data:`TIMING_DEPENDENT` names them and says why.
"""

import pytest

import pike
from pike import _impl, testing
from pike.testing import CHECKS, CheckSkipped

#: Checks whose exact callback sequence depends on kernel timing.
TIMING_DEPENDENT = {
    "large_transfer": "how many reads a transfer takes depends on the kernel's pacing",
    "flow_control": "pause/resume cycles follow the peer's reading pace",
    "send_would_block": "how many sends fit before EAGAIN varies with buffer autotuning",
    "write_eof_after_queued": "the number of write events follows the peer's reads",
    "close_when_done": "the number of write events follows the peer's reads",
    "eof_sends_queued_data": "the number of write events follows the peer's reads",
    "deferred_close_no_spin": "the number of write events follows the peer's reads",
    "reset_mid_write": "when the reset is noticed depends on the kernel",
    "accept_out_of_fds": "the retry timer races the poll slices",
    "connect_then_data": "connect and data may arrive in one event or two",
    "idle_blocks": "nothing to compare: it asserts the absence of events",
}


_FLOW_CONTROL = {"pause_writing", "resume_writing"}


class _Log:
    """Collects each RecordingTransport's callbacks, in order."""

    def __init__(self):
        self._by_transport = {}
        self._seen = []  # kept alive, so that no id() is reused in a check

    def note(self, transport, name):
        names = self._by_transport.get(id(transport))
        if names is None:
            names = self._by_transport[id(transport)] = []
            self._seen.append(transport)
        names.append(name)

    def sequences(self):
        """Each transport's callbacks, a run of one callback counted once.

        (How many reads a stream takes is the kernel's segmentation; the
        model tests compare exact counts on Unix sockets.)
        """
        return sorted(
            tuple(name for i, name in enumerate(names) if i == 0 or names[i - 1] != name)
            for names in self._by_transport.values()
        )

    def callback_sets(self):
        """Which callbacks ran on each transport, flow control aside."""
        return sorted(
            tuple(sorted(set(names) - _FLOW_CONTROL))
            for names in self._by_transport.values()
        )


def _play(check, poller_name, implementation, monkeypatch):
    _impl.select_implementation(implementation)
    log = _Log()
    original = testing.RecordingTransport._note

    def noting(self, name):
        log.note(self, name)
        original(self, name)

    monkeypatch.setattr(testing.RecordingTransport, "_note", noting)
    poller = pike.make_poller(poller_name)
    previous = pike.set_poller(poller)
    try:
        check(poller)
        outcome = "passed"
    except CheckSkipped as exc:
        outcome = f"skipped: {exc}"
    except AssertionError as exc:
        outcome = f"failed: {exc}"
    finally:
        pike.set_poller(previous)
        for channel in poller.channels():
            channel.close()
        poller.close()
        monkeypatch.setattr(testing.RecordingTransport, "_note", original)
    return outcome, log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("check_name", list(CHECKS))
def test_check_behaves_the_same_on_c_and_python(poller_name, check_name, monkeypatch):
    if "c" not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    previous = _impl.IMPLEMENTATION
    try:
        python = _play(CHECKS[check_name], poller_name, "python", monkeypatch)
        c = _play(CHECKS[check_name], poller_name, "c", monkeypatch)
    finally:
        _impl.select_implementation(previous)
    assert python[0] == "passed" or python[0].startswith("skipped"), python[0]
    assert c[0] == python[0], f"outcomes differ: python {python[0]!r}, c {c[0]!r}"
    if check_name in TIMING_DEPENDENT:
        assert c[1].callback_sets() == python[1].callback_sets(), (
            "different callbacks ran on python and c"
        )
    else:
        assert c[1].sequences() == python[1].sequences(), (
            "the callbacks differ between python and c"
        )


def test_timing_exemptions_name_real_checks():
    assert set(TIMING_DEPENDENT) <= set(CHECKS)
