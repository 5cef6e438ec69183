"""pike.spiro: a keyless flood does not lock key holders out.

Connections still authenticating are capped in all and per peer address,
the oldest giving way to the newest; sessions are capped; the log stays
bounded. Every flood here goes to 127.0.0.1 only, with bounded counts.
"""

import collections
import logging
import socket
import threading
import time

import pytest

from pike import spiro
from pike.spiro.admission import DropLog, PendingConnections

from spiro_support import (
    KEY,
    authenticate_raw,
    open_raw,
    raw_connect,
    start_server,
    stop,
    wait_until,
)

try:
    import resource
except ImportError:
    resource = None


def _source_available(host):
    """True when this machine can send from ``host`` (all of 127/8 on Linux)."""
    probe = socket.socket()
    try:
        probe.bind((host, 0))
        return True
    except OSError:
        return False
    finally:
        probe.close()


needs_second_loopback = pytest.mark.skipif(
    not _source_available("127.0.0.2"), reason="only 127.0.0.1 is configured"
)


def pre_auth(address, count, source=None):
    """``count`` connections that read the server's hello and say nothing."""
    src = None if source is None else (source, 0)
    return [raw_connect(address, authenticate=False, source=src) for _ in range(count)]


def hung_up(sock, timeout=5.0):
    """True when the server closed ``sock`` cleanly (EOF, not a reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except OSError:
        return False


def close_all(socks):
    for sock in socks:
        sock.close()


def pending_count(server):
    return len(server.pending)


# -- the bookkeeping on its own -----------------------------------------------------------


def test_pending_evicts_the_oldest_of_the_peer():
    pending = PendingConnections(limit=10, per_peer=3)
    for name in "abc":
        assert pending.add(name, "p1") == []
    assert pending.add("d", "p1") == ["a"]
    assert pending.add("x", "p2") == []
    assert pending.count("p1") == 3 and len(pending) == 4
    pending.discard("c", "p1")
    pending.discard("c", "p1")           # twice is harmless
    pending.discard("unknown", "p9")
    assert pending.count("p1") == 2 and len(pending) == 3


def test_pending_at_the_global_cap_the_busiest_peer_gives_way():
    pending = PendingConnections(limit=4, per_peer=3)
    for name in ("a1", "a2", "a3"):
        pending.add(name, "a")
    pending.add("b1", "b")
    assert pending.add("c1", "c") == ["a1"]
    assert pending.add("c2", "c") == ["a2"]
    assert pending.add("c3", "c") == ["c1"]        # c now holds the most
    assert len(pending) == 4
    with pytest.raises(ValueError):
        PendingConnections(limit=0, per_peer=1)


@pytest.mark.parametrize("limit", ["max_sessions", "max_pending", "max_pending_per_peer",
                                   "max_nesting", "max_frame_size"])
def test_limits_below_one_are_refused(limit):
    with pytest.raises(ValueError, match="at least 1"):
        spiro.SpiroServer(authkey=KEY, **{limit: 0})


def test_drop_log_is_bounded():
    now = [0.0]
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("pike.spiro.test-drop-log")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    try:
        log = DropLog(logger, interval=10.0, clock=lambda: now[0])
        for i in range(1000):
            log.note("timeouts", logging.ERROR, "peer %d timed out", i)
            log.note("bad keys", logging.WARNING, "peer %d had a bad key", i)
            now[0] += 0.001
        assert records == ["peer 0 timed out", "peer 0 had a bad key"]
        now[0] += 10.0
        log.note("timeouts", logging.ERROR, "peer %d timed out", 1000)
        assert records[2] == "spiro: also turned away: 999 bad keys, 999 timeouts"
        assert records[3] == "peer 1000 timed out"
        log.flush()
        assert len(records) == 4
        assert log.totals == {"timeouts": 1001, "bad keys": 1000}
    finally:
        logger.removeHandler(handler)


# -- floods against a server ---------------------------------------------------------------


@pytest.fixture
def make_server():
    made = []

    def make(**kwargs):
        kwargs.setdefault("auth_timeout", 10.0)
        srv = spiro.SpiroServer(authkey=KEY, **kwargs).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.close()


def test_flood_from_one_address_leaves_room_for_a_login(poller, make_server, caplog):
    srv = make_server(poller=poller, max_pending=8, max_pending_per_peer=4)
    with caplog.at_level(logging.WARNING, logger="pike.spiro"):
        flood = pre_auth(srv.address, 12)           # three times the per-peer cap
        try:
            # the oldest 8 were closed cleanly to make room; the newest 4 wait
            assert all(hung_up(sock) for sock in flood[:8])
            assert wait_until(lambda: pending_count(srv) == 4)
            with spiro.connect(srv.address, KEY) as s:
                assert s.eval("'logged in'") == "logged in"
            assert sum(hung_up(sock, timeout=0.2) for sock in flood[8:]) == 1
        finally:
            close_all(flood)
    assert caplog.text.count("evicted") == 1          # one line, not nine
    assert wait_until(lambda: pending_count(srv) == 0)


@needs_second_loopback
def test_flood_cannot_evict_another_address(make_server):
    srv = make_server(max_pending=6, max_pending_per_peer=3)
    slow, hello = open_raw(srv.address, source=("127.0.0.2", 0))
    with slow:
        flood = pre_auth(srv.address, 20)           # from 127.0.0.1
        try:
            assert wait_until(lambda: pending_count(srv) == 4)
            assert srv.pending.count("127.0.0.2") == 1
            authenticate_raw(slow, hello)           # the slow client still gets in
            assert wait_until(lambda: len(srv.sessions) == 1)
        finally:
            close_all(flood)


@needs_second_loopback
def test_global_cap_over_many_addresses(make_server):
    srv = make_server(max_pending=4, max_pending_per_peer=2)
    flood = []
    try:
        for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            flood += pre_auth(srv.address, 2, source=host)
            assert pending_count(srv) <= 4
        assert wait_until(lambda: pending_count(srv) == 4)
        with spiro.connect(srv.address, KEY) as s:
            assert s.eval("'in'") == "in"
        assert sum(hung_up(sock, timeout=0.2) for sock in flood) >= 5
    finally:
        close_all(flood)


def test_session_cap_refuses_clearly_and_frees_up(make_server):
    srv = make_server(max_sessions=2)
    first = spiro.connect(srv.address, KEY)
    with first, spiro.connect(srv.address, KEY) as second:
        with pytest.raises(ConnectionRefusedError, match="all the sessions"):
            spiro.connect(srv.address, KEY)
        assert second.eval("1") == 1
        first.close()
        assert wait_until(lambda: len(srv.sessions) == 1)
        with spiro.connect(srv.address, KEY) as third:
            assert third.eval("3") == 3


def test_failed_logins_are_logged_boundedly(make_server, caplog):
    srv = make_server()
    with caplog.at_level(logging.WARNING, logger="pike.spiro"):
        for _ in range(30):
            with pytest.raises(spiro.AuthenticationError):
                spiro.connect(srv.address, b"a wrong key that is long enough")
        with spiro.connect(srv.address, KEY) as s:
            assert s.eval("1") == 1
    assert caplog.text.count("failed authentication") == 1
    srv.close()
    assert "29 failed authentications" in caplog.text


def test_low_open_file_limit_is_warned_about(make_server, caplog):
    if resource is None:
        pytest.skip("no resource module")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit")
    with caplog.at_level(logging.WARNING, logger="pike.spiro"):
        make_server(max_sessions=soft)
    assert "open-file limit" in caplog.text


# -- the reported case: a 256-fd server under a replacing flood ------------------------------


def _limit_fds():
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_keyless_flood_under_a_256_fd_limit(tmp_path):
    if resource is None:
        pytest.skip("no resource module")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1024:
        pytest.skip("this test opens about 350 sockets itself")
    server, address = start_server(tmp_path, "--auth-timeout", "1", preexec_fn=_limit_fds)
    # from another loopback address the flood runs while the logins happen;
    # from the same one, it comes in bursts between them (the server cannot
    # tell a flood connection from a login's on one address)
    concurrent = _source_available("127.0.0.2")
    source = ("127.0.0.2", 0) if concurrent else None
    held = collections.deque()
    stop_flood = threading.Event()
    opened = [0]

    def flood(limit, deadline):
        while not stop_flood.is_set() and opened[0] < limit and time.monotonic() < deadline:
            try:
                held.append(socket.create_connection(address, timeout=5, source_address=source))
            except OSError:
                time.sleep(0.01)
                continue
            opened[0] += 1
            if len(held) > 300:                    # ~300 at once, replaced as they go
                held.popleft().close()

    try:
        if concurrent:
            flooder = threading.Thread(target=flood, args=(3000, time.monotonic() + 30))
            flooder.start()
            assert wait_until(lambda: opened[0] >= 300, timeout=20)
        logins = 0
        for _ in range(5):
            if not concurrent:
                flood(opened[0] + 300, time.monotonic() + 20)
            with spiro.connect(address, KEY, timeout=10) as s:
                assert s.eval("'hello'") == "hello"
                logins += 1
        assert logins == 5
        assert server.poll() is None
    finally:
        stop_flood.set()
        if concurrent:
            flooder.join(30)
        while held:
            held.popleft().close()
        err = stop(server)
    assert opened[0] >= 300
    assert "Too many open files" not in err
    assert err.count("evicted") <= 5 and len(err.splitlines()) < 40, err
