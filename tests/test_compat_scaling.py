"""pike.compat's loop asks only the channels whose answers may have changed.

The fast path of ``asyncore.loop()`` sweeps a large map whole only every
``_SWEEP_INTERVAL`` seconds; in between it asks ``readable()`` /
``writable()`` of the channels that had an event, that compat's methods
touched, whose attributes were assigned (classes overriding the two), and
of map entries that are not dispatchers. These tests force that mode on
small maps (``_SWEEP_MODE = "incremental"``), push the sweep out of reach
where they must prove that a hint alone suffices, and count calls rather
than time anything. Each runs in select and poll semantics.
"""

import gc
import os
import socket
import time

import pytest

from pike.compat import asynchat, asyncore

pytestmark = pytest.mark.skipif(asyncore._MapEngine is None, reason="no epoll here")

LIMIT_S = 5.0  # every wait loop below gives up after this


def open_fds():
    return set(int(name) for name in os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def incremental(monkeypatch):
    """Incremental mode at any size, no sweep unless a test asks; no leaks."""
    monkeypatch.setattr(asyncore, "_SWEEP_MODE", "incremental")
    monkeypatch.setattr(asyncore, "_SWEEP_INTERVAL", 3600.0)
    monkeypatch.setattr(asyncore, "_FAST_PATH", True)
    gc.collect()
    before = open_fds()
    peers = Held()
    yield peers
    for map in peers.maps:
        asyncore.close_all(map, ignore_all=True)
    asyncore.close_all(ignore_all=True)
    for engine in list(asyncore._engines.values()):
        engine.close()
    asyncore._engines.clear()
    for sock in peers:
        sock.close()
    gc.collect()
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)}"


class Held(list):
    """Peer sockets (the list) and maps that a test opened, closed after it."""

    def __init__(self):
        super().__init__()
        self.maps = []

    def map(self):
        new = {}
        self.maps.append(new)
        return new


@pytest.fixture(params=[False, True], ids=["select", "poll"])
def use_poll(request):
    return request.param


def pair(peers):
    """A connected (ours, theirs) socket pair; theirs is closed at the end."""
    ours, theirs = socket.socketpair()
    peers.append(theirs)
    return ours, theirs


def run_until(predicate, map, use_poll, what):
    deadline = time.monotonic() + LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        asyncore.loop(timeout=0.01, use_poll=use_poll, map=map, count=1)


def recv_until(sock, want):
    sock.settimeout(LIMIT_S)
    got = b""
    while len(got) < len(want):
        chunk = sock.recv(65536)
        assert chunk, "peer closed early"
        got += chunk
    return got


class Counting(asyncore.dispatcher):
    """Overrides both questions, and counts them."""

    asked = 0

    def __init__(self, sock, map):
        asyncore.dispatcher.__init__(self, sock, map)
        self.out = b""

    def readable(self):
        type(self).asked += 1
        return True

    def writable(self):
        return len(self.out) > 0

    def handle_read(self):
        self.recv(100)

    def handle_write(self):
        self.out = self.out[self.send(self.out):]

    def handle_close(self):
        self.close()


def test_idle_channels_are_not_asked(incremental, use_poll):
    class Idle(Counting):
        asked = 0

    map = incremental.map()
    idle = [Idle(pair(incremental)[0], map) for _ in range(50)]
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    assert Idle.asked == 50  # the first iteration sweeps
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=20)
    assert Idle.asked == 50  # nothing happened to them since
    assert len(idle) == 50


def test_event_makes_a_channel_asked_again(incremental, use_poll):
    map = incremental.map()
    ours, theirs = pair(incremental)
    channel = Counting(ours, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    asked = Counting.asked
    theirs.sendall(b"x")
    run_until(lambda: Counting.asked > asked, map, use_poll, "asked after its read")
    assert channel.connected


def test_assignment_by_another_channel_is_seen_without_a_sweep(incremental, use_poll):
    """The proxy pattern: A's handler fills B's buffer; B's writable() follows it."""
    map = incremental.map()
    a_sock, a_peer = pair(incremental)
    b_sock, b_peer = pair(incremental)
    b = Counting(b_sock, map)

    class Forwarder(Counting):
        def handle_read(self):
            b.out += self.recv(100)  # an attribute assignment on b

    Forwarder(a_sock, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=2)
    a_peer.sendall(b"hello")
    b_peer.setblocking(False)
    got = []

    def forwarded():
        try:
            got.append(b_peer.recv(100))
        except BlockingIOError:
            return False
        return True

    run_until(forwarded, map, use_poll, "b wrote what a read")
    assert got == [b"hello"]


def test_async_chat_push_from_elsewhere_is_sent(incremental, use_poll):
    """Library classes need no watching: push() tells the loop itself."""
    map = incremental.map()

    class Chat(asynchat.async_chat):
        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            pass

    chat_sock, chat_peer = pair(incremental)
    chat = Chat(chat_sock, map)
    assert "__setattr__" not in type(chat).__dict__
    other_sock, other_peer = pair(incremental)

    class Pusher(Counting):
        def handle_read(self):
            # Fill the socket buffer first so that push() cannot send it all.
            chat.push(self.recv(100) * 200000)

    Pusher(other_sock, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=2)
    other_peer.sendall(b"ab")
    want = b"ab" * 200000
    chat_peer.setblocking(False)
    got = bytearray()

    def received_all():
        try:
            got.extend(chat_peer.recv(1 << 20))
        except BlockingIOError:
            pass
        return len(got) >= len(want)

    run_until(received_all, map, use_poll, "the pushed data arrived")
    assert bytes(got) == want


class Declared(asyncore.dispatcher):
    """Opted in: its answers follow a list that is mutated in place."""

    pike_event_driven = True

    def __init__(self, sock, map):
        asyncore.dispatcher.__init__(self, sock, map)
        self.queue = []

    def readable(self):
        return False

    def writable(self):
        return bool(self.queue)

    def handle_write(self):
        self.send(self.queue.pop(0))


def test_opt_in_class_is_not_watched():
    assert "__setattr__" not in Declared.__dict__
    assert Declared.__setattr__ is object.__setattr__


def test_opt_in_change_seen_after_interest_changed(incremental, use_poll):
    import pike.compat

    map = incremental.map()
    ours, theirs = pair(incremental)
    channel = Declared(ours, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=2)
    channel.queue.append(b"ping")  # no assignment: nothing can see it
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=3)
    assert channel.queue == [b"ping"]  # not asked again, as declared
    pike.compat.interest_changed(channel)
    run_until(lambda: not channel.queue, map, use_poll, "the hinted write")
    assert recv_until(theirs, b"ping") == b"ping"


def test_sweep_catches_an_unreported_change(incremental, use_poll, monkeypatch):
    monkeypatch.setattr(asyncore, "_SWEEP_INTERVAL", 0.05)
    map = incremental.map()
    ours, theirs = pair(incremental)
    channel = Declared(ours, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=2)
    channel.queue.append(b"late")
    # A long timeout: the wait itself must end at the sweep, see the
    # change and deliver it within this one iteration.
    asyncore.loop(timeout=LIMIT_S, use_poll=use_poll, map=map, count=1)
    assert channel.queue == []
    assert recv_until(theirs, b"late") == b"late"


def test_non_dispatcher_entries_are_asked_every_iteration(incremental, use_poll):
    ours, theirs = pair(incremental)

    class Duck:
        accepting = False
        asked = 0
        got = b""

        def fileno(self):
            return ours.fileno()

        def readable(self):
            self.asked += 1
            return True

        def writable(self):
            return False

        def handle_read_event(self):
            self.got += ours.recv(100)

        def handle_expt_event(self):
            pass

        def handle_error(self):
            raise

        def handle_close(self):
            pass

    duck = Duck()
    map = {ours.fileno(): duck}
    try:
        asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=5)
        assert duck.asked >= 5
        theirs.sendall(b"quack")
        run_until(lambda: duck.got == b"quack", map, use_poll, "the duck read")
    finally:
        map.clear()
        asyncore.close_all(map)
        ours.close()


def test_entry_added_behind_the_loops_back_is_swept(incremental, use_poll):
    map = incremental.map()
    first, _ = pair(incremental)
    Counting(first, map)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    ours, theirs = pair(incremental)
    late = Counting(ours, incremental.map())  # in another map first ...
    map[late._fileno] = late  # ... then put here by hand
    late.out = b"hi"
    run_until(lambda: not late.out, map, use_poll, "the late entry wrote")
    assert recv_until(theirs, b"hi") == b"hi"


def test_peer_close_of_an_idle_channel_is_handled(incremental, use_poll):
    map = incremental.map()
    channels = []
    for _ in range(20):
        ours, theirs = pair(incremental)
        channels.append((Counting(ours, map), theirs))
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=3)
    victim, peer = channels[7]
    peer.close()
    run_until(lambda: victim.socket is None or victim._fileno is None, map, use_poll,
              "the idle channel saw its peer go")
    assert len(map) == 19


def test_closed_channel_is_not_kept_alive(incremental, use_poll):
    import weakref

    map = incremental.map()
    ours, theirs = pair(incremental)
    channel = Counting(ours, map)
    theirs.sendall(b"x")
    asyncore.loop(timeout=0.01, use_poll=use_poll, map=map, count=2)
    ref = weakref.ref(channel)
    channel.out = b"pending"  # a hint, then the close
    channel.close()
    del channel
    gc.collect()
    assert ref() is None


def test_user_setattr_is_kept_under_the_watch():
    seen = []

    class Own(asyncore.dispatcher):
        def __setattr__(self, name, value):
            seen.append(name)
            object.__setattr__(self, name, value)

        def writable(self):
            return False

    d = Own()
    d.flag = 1
    assert "flag" in seen and d.flag == 1
    assert getattr(Own.__setattr__, "_pike_watching", False)


def test_readable_that_raises_leaves_the_other_suspects_asked(incremental, use_poll):
    map = incremental.map()
    chans = [Counting(pair(incremental)[0], map) for _ in range(3)]
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    bad = chans[0]
    bad.readable = lambda: 1 / 0  # an instance attribute: asked every time
    for channel in chans[1:]:
        channel.out = b"x"  # hints
    with pytest.raises(ZeroDivisionError):
        asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    del bad.readable
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    engine = asyncore._engines[id(map)]
    for channel in chans[1:]:
        assert engine.watched(channel._fileno)[1] is True


def test_unhashable_readable_makes_a_watched_class():
    class Callable:
        __hash__ = None

        def __call__(self, *args):
            return True

    class Odd(asyncore.dispatcher):
        readable = Callable()

    assert getattr(Odd.__setattr__, "_pike_watching", False)


def test_sweep_that_raises_is_done_again(incremental, use_poll, monkeypatch):
    map = incremental.map()
    chans = [Counting(pair(incremental)[0], map) for _ in range(3)]
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    engine = asyncore._engines[id(map)]
    monkeypatch.setattr(engine, "_next_sweep", 0.0)  # a sweep is due
    failing = [True]

    def readable():
        if failing:
            failing.clear()
            raise ZeroDivisionError
        return True

    object.__setattr__(chans[1], "readable", readable)  # no hint
    with pytest.raises(ZeroDivisionError):
        asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    assert engine._next_sweep == 0.0
    for channel in chans:
        object.__setattr__(channel, "out", b"x")  # no hints either
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
    for channel in chans:
        assert engine.watched(channel._fileno)[1] is True


def test_entry_filed_under_another_fd_is_asked_every_time(incremental, use_poll):
    map = incremental.map()
    ours, theirs = pair(incremental)
    channel = Counting(ours, incremental.map())
    alias = os.dup(ours.fileno())
    try:
        map[alias] = channel  # filed under an fd that is not its _fileno
        asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
        engine = asyncore._engines[id(map)]
        assert any(slot.fd == alias for slot in engine._always)
        object.__setattr__(channel, "out", b"x")  # no hint reaches this map
        asyncore.loop(timeout=0.0, use_poll=use_poll, map=map, count=1)
        assert engine.watched(alias)[1] is True
    finally:
        map.clear()
        asyncore.close_all(map)
        os.close(alias)
