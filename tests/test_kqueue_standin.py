"""Tests of the kqueue stand-in itself (tests/kqueue_standin.py).

Every wait is bounded by an explicit small timeout (or by a thread join with a
timeout), and every socket is closed by a fixture.
"""

import errno
import os
import signal
import socket
import struct
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kqueue_standin as kqs  # noqa: E402
from kqueue_standin import (  # noqa: E402
    KQ_EV_ADD, KQ_EV_CLEAR, KQ_EV_DELETE, KQ_EV_DISABLE, KQ_EV_ENABLE,
    KQ_EV_EOF, KQ_EV_ERROR, KQ_EV_ONESHOT, KQ_FILTER_READ, KQ_FILTER_WRITE,
    kevent, kqueue, kqueue_module,
)

R, W = KQ_FILTER_READ, KQ_FILTER_WRITE


@pytest.fixture
def kq():
    q = kqueue()
    try:
        yield q
    finally:
        q.close()


@pytest.fixture
def socks():
    """Factory of socket pairs (and other sockets) closed at teardown."""
    opened = []

    def make(kind="pair"):
        if kind == "pair":
            pair = socket.socketpair()
            opened.extend(pair)
            return pair
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(s)
        return s

    make.opened = opened
    try:
        yield make
    finally:
        for s in opened:
            try:
                s.close()
            except OSError:
                pass


def add(kq, sock, filt, flags=KQ_EV_ADD, udata=0):
    assert kq.control([kevent(sock, filt, flags, udata=udata)], 0) == []


def poll(kq, n=8, timeout=0):
    return kq.control(None, n, timeout)


def keys(events):
    return sorted((e.ident, e.filter) for e in events)


# --------------------------------------------------------------------------
# kevent / module surface
# --------------------------------------------------------------------------
def test_constants_have_bsd_values():
    assert (kqs.KQ_FILTER_READ, kqs.KQ_FILTER_WRITE) == (-1, -2)
    assert (KQ_EV_ADD, KQ_EV_DELETE, KQ_EV_ENABLE, KQ_EV_DISABLE) == (
        1, 2, 4, 8)
    assert (KQ_EV_ONESHOT, KQ_EV_CLEAR) == (0x10, 0x20)
    assert (KQ_EV_EOF, KQ_EV_ERROR) == (0x8000, 0x4000)


def test_kevent_fields_defaults_fileno_and_comparison(socks):
    a, _ = socks()
    ev = kevent(a)
    assert (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata) == (
        a.fileno(), R, KQ_EV_ADD, 0, 0, 0)
    ev2 = kevent(a.fileno(), R, KQ_EV_ADD)
    assert ev == ev2 and not ev != ev2
    ev3 = kevent(a.fileno(), W, KQ_EV_ADD, udata=7)
    assert ev != ev3 and ev3 < ev  # filter -2 < -1
    assert ev3.udata == 7
    with pytest.raises(TypeError):
        hash(ev)
    assert repr(ev) == ("<select.kevent ident=%d filter=-1 flags=0x1 "
                        "fflags=0x0 data=0x0 udata=0x0>" % a.fileno())
    with pytest.raises(OverflowError):
        kevent(-1)
    with pytest.raises(TypeError):
        kevent("x")
    ev.data = 5
    assert ev.data == 5


def test_kqueue_module_bundle():
    for name in ("kqueue", "kevent", "KQ_FILTER_READ", "KQ_FILTER_WRITE",
                 "KQ_EV_ADD", "KQ_EV_DELETE", "KQ_EV_ENABLE", "KQ_EV_DISABLE",
                 "KQ_EV_ONESHOT", "KQ_EV_CLEAR", "KQ_EV_EOF", "KQ_EV_ERROR"):
        assert getattr(kqueue_module, name) is getattr(kqs, name)
    assert not hasattr(kqueue_module, "epoll")
    ns = kqs.install_into({})
    assert ns["kqueue"] is kqueue


def test_argument_checks_close_and_fileno(kq):
    with pytest.raises(ValueError):
        kq.control(None, 1, -1)
    with pytest.raises(ValueError):
        kq.control(None, -1, 0)
    with pytest.raises(TypeError):
        kq.control(None, 1, "1")
    with pytest.raises(TypeError):
        kq.control([1], 0)
    with pytest.raises(TypeError):
        kq.control(5, 0)
    assert isinstance(kq.fileno(), int)
    assert not kq.closed
    kq.close()
    kq.close()  # idempotent
    assert kq.closed
    with pytest.raises(ValueError):
        kq.control(None, 1, 0)
    with pytest.raises(ValueError):
        kq.fileno()


# --------------------------------------------------------------------------
# readiness
# --------------------------------------------------------------------------
def test_read_readiness(kq, socks):
    a, b = socks()
    add(kq, a, R, udata=42)
    assert poll(kq) == []
    b.send(b"hello")
    evs = poll(kq)
    assert len(evs) == 1
    ev = evs[0]
    assert (ev.ident, ev.filter, ev.data, ev.udata) == (a.fileno(), R, 5, 42)
    assert not ev.flags & (KQ_EV_EOF | KQ_EV_ERROR)


def test_read_and_write_are_separate_events(kq, socks):
    a, b = socks()
    add(kq, a, R)
    add(kq, a, W)
    evs = poll(kq)
    assert keys(evs) == [(a.fileno(), W)]
    assert evs[0].data > 0  # room in the send buffer
    b.send(b"x")
    evs = poll(kq)
    assert keys(evs) == [(a.fileno(), W), (a.fileno(), R)]
    # deleting one filter leaves the other
    assert kq.control([kevent(a, W, KQ_EV_DELETE)], 0) == []
    assert keys(poll(kq)) == [(a.fileno(), R)]


def test_level_triggered_until_drained(kq, socks):
    a, b = socks()
    add(kq, a, R)
    b.send(b"abcdef")
    for _ in range(3):
        evs = poll(kq)
        assert keys(evs) == [(a.fileno(), R)]
    a.recv(2)
    assert poll(kq)[0].data == 4
    a.recv(100)
    assert poll(kq) == []


def test_blocking_wait_wakes_on_data_and_timeout_elapses(kq, socks):
    a, b = socks()
    add(kq, a, R)
    t0 = time.monotonic()
    assert poll(kq, timeout=0.2) == []
    assert time.monotonic() - t0 >= 0.18
    timer = threading.Timer(0.05, b.send, (b"late",))
    timer.start()
    try:
        t0 = time.monotonic()
        evs = kq.control(None, 4, 5.0)
        assert keys(evs) == [(a.fileno(), R)]
        assert time.monotonic() - t0 < 2.0
    finally:
        timer.cancel()
        timer.join(5)


def test_timeout_zero_returns_at_once(kq, socks):
    a, _ = socks()
    add(kq, a, R)
    t0 = time.monotonic()
    assert kq.control(None, 4, 0) == []
    assert time.monotonic() - t0 < 0.1


def test_max_events_zero_applies_changes_without_waiting(kq, socks):
    a, b = socks()
    b.send(b"x")
    result = []
    # timeout=None would block forever if control() waited
    t = threading.Thread(
        target=lambda: result.append(kq.control([kevent(a, R)], 0, None)),
        daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert result == [[]]
    assert keys(poll(kq)) == [(a.fileno(), R)]  # the change was applied


def test_max_events_limit_and_round_robin(kq, socks):
    pairs = [socks() for _ in range(3)]
    for a, b in pairs:
        add(kq, a, R)
        b.send(b"x")
    first = poll(kq, n=2)
    assert len(first) == 2
    second = poll(kq, n=2)
    assert len(second) == 2
    seen = {e.ident for e in first} | {e.ident for e in second}
    assert seen == {a.fileno() for a, _ in pairs}  # nobody starved
    assert len(poll(kq, n=1)) == 1


# --------------------------------------------------------------------------
# change list semantics
# --------------------------------------------------------------------------
def test_delete_missing_raises_filenotfound(kq, socks):
    a, _ = socks()
    with pytest.raises(FileNotFoundError) as info:
        kq.control([kevent(a, R, KQ_EV_DELETE)], 0)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        kq.control([kevent(a, R, KQ_EV_ENABLE)], 0)


def test_change_errors_are_returned_as_events_when_there_is_room(kq, socks):
    a, b = socks()
    add(kq, a, R)
    b.send(b"x")  # a is readable, yet the error events come back alone
    evs = kq.control([kevent(a, W, KQ_EV_DELETE, udata=3)], 4, 0)
    assert len(evs) == 1
    ev = evs[0]
    assert ev.flags & KQ_EV_ERROR and ev.data == errno.ENOENT
    assert (ev.ident, ev.filter, ev.udata) == (a.fileno(), W, 3)
    # with room for one error only, a second error raises
    with pytest.raises(FileNotFoundError):
        kq.control([kevent(a, W, KQ_EV_DELETE),
                    kevent(a, W, KQ_EV_DELETE)], 1, 0)


def test_add_bad_fd_raises_ebadf(kq, socks):
    a, _ = socks()
    fd = a.fileno()
    a.close()
    with pytest.raises(OSError) as info:
        kq.control([kevent(fd, R)], 0)
    assert info.value.errno == errno.EBADF


def test_add_existing_modifies_without_error(kq, socks):
    a, b = socks()
    add(kq, a, R, udata=1)
    add(kq, a, R, udata=2)
    b.send(b"x")
    evs = poll(kq)
    assert len(evs) == 1 and evs[0].udata == 2


def test_oneshot(kq, socks):
    a, b = socks()
    add(kq, a, R, KQ_EV_ADD | KQ_EV_ONESHOT)
    b.send(b"x")
    evs = poll(kq)
    assert keys(evs) == [(a.fileno(), R)]
    assert evs[0].flags & KQ_EV_ONESHOT
    assert poll(kq) == []  # deleted after delivery, data still unread
    with pytest.raises(FileNotFoundError):
        kq.control([kevent(a, R, KQ_EV_DELETE)], 0)


def test_disable_enable(kq, socks):
    a, b = socks()
    add(kq, a, R, KQ_EV_ADD | KQ_EV_DISABLE)
    b.send(b"x")
    assert poll(kq) == []
    add(kq, a, R, KQ_EV_ENABLE)
    assert keys(poll(kq)) == [(a.fileno(), R)]
    add(kq, a, R, KQ_EV_DISABLE)
    assert poll(kq) == []
    # FreeBSD: a plain EV_ADD does not re-enable a disabled registration
    add(kq, a, R, KQ_EV_ADD)
    assert poll(kq) == []
    add(kq, a, R, KQ_EV_ADD | KQ_EV_ENABLE)
    assert keys(poll(kq)) == [(a.fileno(), R)]


def test_clear_reports_once_until_new_data(kq, socks):
    a, b = socks()
    add(kq, a, R, KQ_EV_ADD | KQ_EV_CLEAR)
    b.send(b"abc")
    evs = poll(kq)
    assert keys(evs) == [(a.fileno(), R)] and evs[0].data == 3
    assert poll(kq) == []
    assert poll(kq, timeout=0.05) == []  # no busy loop, no report
    b.send(b"de")
    evs = poll(kq)
    assert keys(evs) == [(a.fileno(), R)] and evs[0].data == 5
    a.recv(100)
    assert poll(kq) == []
    b.send(b"f")
    evs = poll(kq, timeout=1.0)
    assert keys(evs) == [(a.fileno(), R)] and evs[0].data == 1


def test_clear_wakes_blocked_wait_on_new_data(kq, socks):
    a, b = socks()
    add(kq, a, R, KQ_EV_ADD | KQ_EV_CLEAR)
    b.send(b"abc")
    assert len(poll(kq)) == 1
    timer = threading.Timer(0.05, b.send, (b"more",))
    timer.start()
    try:
        evs = kq.control(None, 4, 5.0)
        assert keys(evs) == [(a.fileno(), R)] and evs[0].data == 7
    finally:
        timer.cancel()
        timer.join(5)


# --------------------------------------------------------------------------
# EOF, errors, closed descriptors
# --------------------------------------------------------------------------
def test_eof_on_peer_close_with_data_count(kq, socks):
    a, b = socks()
    add(kq, a, R)
    add(kq, a, W)
    b.send(b"tail")
    b.close()
    evs = {e.filter: e for e in poll(kq)}
    assert set(evs) == {R, W}
    assert evs[R].flags & KQ_EV_EOF and evs[R].data == 4
    assert evs[W].flags & KQ_EV_EOF
    assert evs[R].fflags == 0
    a.recv(100)
    evs = {e.filter: e for e in poll(kq)}
    assert evs[R].flags & KQ_EV_EOF and evs[R].data == 0


def test_eof_on_peer_shutdown_write_only(kq, socks):
    a, b = socks()
    add(kq, a, R)
    add(kq, a, W)
    b.shutdown(socket.SHUT_WR)
    evs = {e.filter: e for e in poll(kq)}
    assert evs[R].flags & KQ_EV_EOF and evs[R].data == 0
    assert not evs[W].flags & KQ_EV_EOF  # a can still write to b


def test_tcp_reset_reports_eof_with_socket_error(kq, socks):
    srv = socks("tcp")
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    add(kq, srv, R)
    cli = socks("tcp")
    cli.connect(srv.getsockname())
    evs = poll(kq, timeout=2.0)
    assert keys(evs) == [(srv.fileno(), R)] and evs[0].data >= 1
    conn, _ = srv.accept()
    socks.opened.append(conn)
    add(kq, cli, R)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    conn.close()  # sends a RST
    deadline = time.monotonic() + 2.0
    evs = []
    while not evs and time.monotonic() < deadline:
        evs = [e for e in poll(kq, timeout=0.1) if e.ident == cli.fileno()]
    assert evs and evs[0].flags & KQ_EV_EOF
    assert evs[0].fflags == errno.ECONNRESET
    # repeated level-triggered reports keep the error
    ev = [e for e in poll(kq) if e.ident == cli.fileno()][0]
    assert ev.fflags == errno.ECONNRESET


def test_closed_fd_registration_dropped_silently(kq, socks):
    a, b = socks()
    fd = a.fileno()
    add(kq, a, R)
    add(kq, a, W)
    b.send(b"x")
    a.close()
    assert poll(kq) == []
    assert poll(kq, timeout=0.05) == []
    with pytest.raises(OSError) as info:
        kq.control([kevent(fd, R, KQ_EV_DELETE)], 0)
    assert info.value.errno == errno.EBADF


def test_reused_fd_not_reported(kq, socks):
    a, b = socks()
    fd = a.fileno()
    add(kq, a, R)
    a.close()
    b.close()
    # the lowest free descriptor is reused by the next socketpair
    c, d = socks()
    assert fd in (c.fileno(), d.fileno())
    new = c if c.fileno() == fd else d
    peer = d if new is c else c
    peer.send(b"data for the new socket")
    assert poll(kq) == []
    assert poll(kq, timeout=0.05) == []
    with pytest.raises(FileNotFoundError):
        kq.control([kevent(fd, R, KQ_EV_DELETE)], 0)
    # registering the new file works normally
    add(kq, new, R)
    assert keys(poll(kq)) == [(fd, R)]


def test_eintr_is_retried_with_remaining_timeout(kq, socks):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    a, _ = socks()
    add(kq, a, R)
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *args: hits.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        assert kq.control(None, 4, 0.3) == []
        elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits == [1]
    assert 0.25 <= elapsed < 2.0


def test_control_in_forked_child_fails_with_ebadf(kq):
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            kq.control(None, 1, 0)
        except OSError as exc:
            code = 0 if exc.errno == errno.EBADF else 2
        except BaseException:
            code = 3
        os._exit(code)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("child did not exit")
    assert os.waitstatus_to_exitcode(status) == 0
