"""Fixtures that run tests over every available poller x implementation.

``poller`` is a fresh poller of each kind the platform has, also installed
as the default for the test, on each implementation ("c" is skipped when
the accelerator is not built). When the test ends every channel left on it
is closed, the poller is closed, and no fd may have leaked.
"""

import gc
import os

import pytest

import pike
from pike import _impl

POLLER_NAMES = pike.available_pollers()
IMPLEMENTATIONS = ["python", "c"]


@pytest.fixture
def pike_env():
    """The environment for a subprocess that must import the pike under test.

    The pike this process imported, wherever it comes from (the source tree,
    an editable or a regular install), comes first on PYTHONPATH. Run such a
    subprocess from a directory of its own (``tmp_path``): ``python -m`` and
    ``python -c`` put the current directory before PYTHONPATH, where a source
    tree would shadow an installed pike.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(pike.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def open_fds():
    """The set of fds open in this process (Linux and macOS)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return set(int(name) for name in os.listdir(path))
    return set()


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    name = request.param
    if name not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    previous = _impl.IMPLEMENTATION
    _impl.select_implementation(name)
    yield name
    _impl.select_implementation(previous)


@pytest.fixture(params=POLLER_NAMES)
def poller_name(request):
    return request.param


@pytest.fixture
def poller(poller_name, implementation):
    fds_before = open_fds()
    p = pike.make_poller(poller_name)
    previous = pike.set_poller(p)
    try:
        yield p
    finally:
        pike.set_poller(previous)
        # Until none is left: closing one may hand its socket to another
        # channel (a TLS close lingers to send close_notify).
        for _ in range(10):
            channels = p.channels()
            if not channels:
                break
            for channel in channels:
                channel.close()
        p.close()
    leaked = open_fds() - fds_before
    if leaked:  # perhaps garbage not collected yet: collect, then look again
        gc.collect()
        leaked = open_fds() - fds_before
    # An fd that vanished in between is fine; a new one still open is a leak.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked by the test: {sorted(leaked)}"


@pytest.fixture
def data_file(tmp_path):
    """A regular file of a little over 3 MiB of random bytes, open for
    reading: ``(file, payload)`` (the sendfile tests)."""
    payload = os.urandom(3 << 20) + b"the end"
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        yield f, payload


@pytest.fixture
def wait_counts(monkeypatch):
    """``spy(poller)`` makes each of the poller's kernel waits append how
    many events it returned to a list, and returns that list (the tests
    that a poller is not woken for nothing)."""

    def spy(poller):
        counts = []
        real_wait = poller._wait
        batched = type(poller).__name__ == "BatchedEpollPoller"

        def counting_wait(timeout):
            events = real_wait(timeout)
            if batched:  # None, or the C collect's (received, others) records
                received, others = events or (None, None)
                counts.append(len(received or ()) + len(others or ()))
            else:
                events = list(events)
                counts.append(len(events))
            return events

        monkeypatch.setattr(poller, "_wait", counting_wait)
        return counts

    return spy
