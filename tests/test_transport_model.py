"""Transport against a model of a byte stream: property and differential tests.

Hypothesis draws a sequence of operations on one connection -- writes of
every size, polls, reads by the peer, pause/resume, water marks,
``write_eof``, ``close_when_done``, ``close`` (an abort), the peer's
half-close and the peer's reset -- and :func:`run_ops` plays it against a
real Transport over a socket pair, checking after every step and at the
end what a byte stream promises:

* what the peer received is always a prefix of what was written;
* everything written arrives, unless the connection was aborted
  (``close()`` with data queued) or reset;
* after ``write_eof``, ``close_when_done`` or the peer's EOF, the peer sees
  EOF once everything has arrived;
* no callback runs after ``close``, ``handle_close`` runs at most once, and
  ``handle_error`` never (nothing here is a programming error).

The property test runs on every poller x implementation. The differential
test plays the same sequence on the pure-Python and the C implementation and
requires the same trace: every operation's result or exception, the
callbacks in order, and the bytes on the wire.
"""

import hashlib
import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pike
from pike import _impl
from pike.testing import RecordingTransport, socket_pair

FAMILIES = ["unix", "tcp"]

# Small socket buffers, so that a few hundred KiB fill them and writes queue.
_SNDBUF = 16384
_RCVBUF = 16384
_DRAIN_SECONDS = 15.0

_sizes = st.one_of(
    st.integers(1, 64), st.integers(65, 4096), st.integers(4097, 300_000)
)
_operations = st.one_of(
    st.tuples(st.just("write"), _sizes),
    st.tuples(st.just("writelines"), st.lists(_sizes, min_size=1, max_size=4)),
    st.tuples(st.just("poll"), st.integers(1, 3)),
    st.tuples(st.just("peer_read"), st.sampled_from([1, 1000, 65536, 1 << 20])),
    st.tuples(st.just("peer_send"), st.integers(1, 50_000)),
    st.tuples(st.just("pause_reading")),
    st.tuples(st.just("resume_reading")),
    st.tuples(st.just("limits"), st.sampled_from([(0, 0), (1024, 0), (65536, 16384)])),
    st.tuples(st.just("write_eof")),
    st.tuples(st.just("close_when_done")),
    st.tuples(st.just("close")),
    st.tuples(st.just("peer_shutdown")),
    st.tuples(st.just("peer_reset")),
)
operation_lists = st.lists(_operations, min_size=1, max_size=25)


class ModelTransport(RecordingTransport):
    """A RecordingTransport whose callbacks also go into the shared ``trace``."""

    read_size = 8192

    def __init__(self, trace, **kwargs):
        self.trace = trace
        super().__init__(**kwargs)

    def _note(self, name):
        self.trace.append(("callback", name))
        super()._note(name)

    def handle_read_eof(self):
        self._note("read_eof")


def _stream(seed):
    """A deterministic byte source: ``take(n)`` gives the next ``n`` bytes."""
    counter = [0]

    def take(n):
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(b"%d:%d" % (seed, counter[0])).digest()
            counter[0] += 1
        return bytes(out[:n])

    return take


def _pair(family):
    a, b = socket_pair(socket.AF_UNIX if family == "unix" else socket.AF_INET)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
    b.setblocking(False)
    return a, b


class _Run:
    """One play of an operation list: the transport, the peer and the model."""

    def __init__(self, poller, family):
        self.poller = poller
        self.family = family
        self.trace = []
        a, self.peer = _pair(family)
        self.t = ModelTransport(self.trace, alternate_poller=poller, sock=a)
        self.written = bytearray()  # what write()/writelines() accepted
        self.peer_got = bytearray()  # what the peer read
        self.peer_eof = False
        self.peer_sent = bytearray()
        self.peer_open = True  # the peer socket exists (no reset)
        self.peer_shut = False
        self.lossy = False  # aborted or reset: only the prefix rule holds
        self.ending = False  # write_eof / close_when_done: EOF must follow
        self.close_asked = False  # close() or close_when_done() was called
        self.take = _stream(1)
        self.take_peer = _stream(2)

    # -- operations ------------------------------------------------------

    def write(self, size):
        data = self.take(size)
        self.t.write(data)
        self.written += data

    def writelines(self, sizes):
        pieces = [self.take(size) for size in sizes]
        self.t.writelines(pieces)
        self.written += b"".join(pieces)

    def poll(self, times):
        for _ in range(times):
            self.poller.poll(0)

    def peer_read(self, size):
        if not self.peer_open or self.peer_eof:
            return
        try:
            chunk = self.peer.recv(size)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.peer_eof = True
            return
        if chunk:
            self.peer_got += chunk
        else:
            self.peer_eof = True

    def peer_send(self, size):
        if not self.peer_open or self.peer_shut:
            return
        data = self.take_peer(size)
        try:
            sent = self.peer.send(data)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            return
        self.peer_sent += data[:sent]

    def pause_reading(self):
        self.t.pause_reading()

    def resume_reading(self):
        self.t.resume_reading()

    def limits(self, marks):
        high, low = marks
        self.t.set_write_buffer_limits(high, low)

    def write_eof(self):
        if not self.t.closed:
            self.ending = True
        self.t.write_eof()

    def close_when_done(self):
        if not self.t.closed:
            self.ending = True
        self.close_asked = True
        self.t.close_when_done()

    def close(self):
        if self.t.get_write_buffer_size():
            self.lossy = True  # an abort drops what is queued
        self.close_asked = True
        self.t.close()

    def peer_shutdown(self):
        if self.peer_open and not self.peer_shut:
            try:
                self.peer.shutdown(socket.SHUT_WR)
            except OSError:  # the transport already closed (and reset) it
                return
            self.peer_shut = True

    def peer_reset(self):
        if not self.peer_open:
            return
        if self.family == "tcp":
            self.peer.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.peer.close()
        self.peer_open = False
        self.lossy = True

    # -- playing and checking -------------------------------------------

    def play(self, op):
        name, *args = op
        try:
            getattr(self, name)(*args)
        except (BrokenPipeError, RuntimeError) as exc:
            # write after close / after write_eof: the documented refusals.
            result = type(exc).__name__
        else:
            result = "ok"
        self.trace.append((name, result, len(self.peer_got), self.t.get_write_buffer_size(), self.t.closed))
        self.check_step()

    def check_step(self):
        t = self.t
        if t.closed and len(t.received) < len(self.peer_sent) and self.family == "tcp":
            # TCP resets a connection closed with input unread, and the
            # reset may discard what the kernel had not yet sent: the
            # application's choice, not a loss by the transport.
            self.lossy = True
        assert self.written.startswith(self.peer_got), "the peer got bytes never written"
        assert self.peer_sent.startswith(t.received), "the transport got bytes never sent"
        assert not t.late, f"callbacks after close: {t.late}"
        assert t.events.count("close") <= 1, t.events
        assert "error" not in t.events, t.events
        assert t.events.count("read_eof") <= 1, t.events
        if t._write_direct:
            # write() skips its checks only while every one would pass.
            assert not (t._write_state or t.closed or t.socket is None), "write's gate open"
            assert not (t.connecting or t._queue), "write's gate open with a queue"

    def drain(self):
        """Let everything settle; then check that nothing was lost."""
        t = self.t
        deadline = time.monotonic() + _DRAIN_SECONDS
        t.resume_reading()
        while time.monotonic() < deadline:
            self.poller.poll(0.001)
            self.peer_read(1 << 20)
            settled_open = not t.closed and not t.get_write_buffer_size() and (
                len(self.peer_got) == len(self.written)
            ) and not self.ending and not self.peer_shut
            if not self.peer_open:
                if t.closed:  # the transport noticed the reset (or EOF)
                    break
            elif (self.peer_eof or settled_open) and (t.closed or not self.peer_shut):
                break  # (the peer's EOF must reach the transport too)
        self.check_step()
        if not self.peer_open:
            assert t.closed, "the transport never noticed that its peer was gone"
        if not self.lossy:
            assert len(self.peer_got) == len(self.written), (
                f"{len(self.written) - len(self.peer_got)} of {len(self.written)} "
                f"bytes never arrived; events {t.events[-8:]}"
            )
            assert self.peer_got == self.written
            if self.ending or self.peer_shut:
                assert self.peer_eof, "no EOF after write_eof / close_when_done / peer EOF"
            if self.peer_shut:
                assert t.closed, "the peer's EOF did not end the connection"
                if not self.close_asked:
                    assert t.events.count("close") == 1, t.events
        self.trace.append(("end", len(self.peer_got), bytes(t.received) == bytes(self.peer_sent[: len(t.received)])))

    def close_all(self):
        self.t.close()
        if self.peer_open:
            self.peer.close()


def run_ops(ops, poller_name, family):
    """Play ``ops`` on a fresh poller; check the model; return the trace."""
    poller = pike.make_poller(poller_name)
    run = _Run(poller, family)
    try:
        for op in ops:
            run.play(op)
        run.drain()
        return run.trace
    finally:
        run.close_all()
        for channel in poller.channels():
            channel.close()
        poller.close()


# PIKE_MODEL_EXAMPLES=300 (say) for a longer hunt than the CI run's.
_SETTINGS = settings(
    max_examples=int(os.environ.get("PIKE_MODEL_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("family", FAMILIES)
@_SETTINGS
@given(ops=operation_lists)
def test_transport_keeps_the_stream_model(poller_name, implementation, family, ops):
    run_ops(ops, poller_name, family)


@pytest.mark.timeout(240)
@_SETTINGS
@given(ops=operation_lists)
def test_c_and_python_do_the_same(poller_name, ops):
    """Same operations, same trace: callbacks, results, bytes on the wire."""
    if "c" not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    previous = _impl.IMPLEMENTATION
    try:
        traces = {}
        for name in ("python", "c"):
            _impl.select_implementation(name)
            traces[name] = run_ops(ops, poller_name, "unix")
    finally:
        _impl.select_implementation(previous)
    assert traces["c"] == traces["python"]


@pytest.mark.parametrize(
    "ops",
    [
        # The echo-server truncation: data queued when the peer half-closes.
        [("write", 300_000), ("peer_shutdown",), ("poll", 3)],
        # close_when_done with megabytes queued, then the peer's EOF.
        [("write", 300_000), ("write", 300_000), ("close_when_done",), ("peer_shutdown",)],
        # Flow control around the EOF.
        [("limits", (1024, 0)), ("writelines", [300_000, 10]), ("peer_shutdown",), ("pause_reading",), ("poll", 2)],
        # write_eof with data queued, then the peer's EOF.
        [("write", 200_000), ("write_eof",), ("peer_shutdown",)],
    ],
    ids=["eof-with-queue", "close-when-done-then-eof", "marks-then-eof", "write-eof-then-eof"],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_known_cases(poller_name, implementation, family, ops):
    """The cases a fault campaign found, as fixed examples."""
    run_ops(ops, poller_name, family)


def test_reset_is_lossy_but_clean(poller_name, implementation):
    trace = run_ops([("write", 300_000), ("peer_reset",), ("poll", 3)], poller_name, "tcp")
    assert ("callback", "close") in trace
    assert ("callback", "error") not in trace
    assert trace.count(("callback", "close")) == 1
