"""Pollers across os.fork(): the child gets its own, the parent keeps working.

Every child runs its work inside try/finally and always leaves through
os._exit(); it reports a JSON result through a pipe. The parent reads with a
deadline and reaps the child with a bounded waitpid loop (SIGKILL at the end).
"""

import json
import os
import select
import signal
import socket
import time
import traceback

import pytest

import pike
from pike import Transport

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.timeout(60),
]

CHILD_DEADLINE = 20.0


def _reap(pid, deadline):
    """waitpid with a deadline; a child still alive then is killed."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.01)


def run_in_child(work, deadline=CHILD_DEADLINE):
    """Run ``work()`` in a forked child; return its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 70
        try:
            os.close(r)
            try:
                result = {"ok": work()}
            except BaseException:
                result = {"error": traceback.format_exc()}
            data = memoryview(json.dumps(result).encode())
            while data:
                data = data[os.write(w, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    end = time.monotonic() + deadline
    chunks = []
    try:
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([r], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        status = _reap(pid, end + 5)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    assert chunks, "the child reported nothing (timed out?)"
    result = json.loads(b"".join(chunks))
    assert "error" not in result, result.get("error")
    return result["ok"]


class Echo(Transport):
    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.write(data)


class Collector(Transport):
    def __init__(self, poller=None, sock=None):
        self.received = bytearray()
        super().__init__(poller, sock)

    def handle_read(self):
        self.received += self.recv(65536)


def _echo_round_trip(poller, payload=b"ping over fork"):
    """A Transport echo on ``poller``; returns what came back."""
    a, b = socket.socketpair()
    server = Echo(poller, a)
    client = Collector(poller, b)
    try:
        client.write(payload)
        end = time.monotonic() + 10
        while len(client.received) < len(payload) and time.monotonic() < end:
            poller.poll(0.5)
        return bytes(client.received)
    finally:
        server.close()
        client.close()


def test_child_get_poller_is_a_new_working_poller(poller):
    assert pike.get_poller() is poller
    parent_id = id(poller)

    def child():
        mine = pike.get_poller()
        ran = []
        mine.call_later(0.01, ran.append, "timer")
        mine.loop(timeout=10)
        # A Transport with no alternate_poller lands on the child's default.
        a, b = socket.socketpair()
        t = Transport(sock=a)
        on_default = t.poller is mine
        t.close()
        b.close()
        echoed = _echo_round_trip(mine)
        return {
            "new": id(mine) != parent_id and mine is not poller,
            "same_again": pike.get_poller() is mine,
            "name": mine.name,
            "timer": ran,
            "on_default": on_default,
            "echo": echoed.decode(),
        }

    result = run_in_child(child)
    assert result == {
        "new": True,
        "same_again": True,
        "name": result["name"],
        "timer": ["timer"],
        "on_default": True,
        "echo": "ping over fork",
    }
    # The child's default is a fresh make_poller() (PIKE_POLLER or the best kind).
    assert result["name"] in pike.available_pollers()
    # The parent's default did not change.
    assert pike.get_poller() is poller


def test_parent_poller_keeps_working_after_the_child_exits(poller):
    a, b = socket.socketpair()
    t = Collector(poller, a)
    try:
        poller.poll(0)  # a is registered in the kernel before the fork

        def child():
            mine = pike.get_poller()  # replaces (and abandons) the inherited default
            ran = []
            mine.call_later(0, ran.append, 1)
            mine.loop(timeout=5)
            return ran

        assert run_in_child(child) == [1]
        b.send(b"after the child")
        end = time.monotonic() + 10
        while len(t.received) < 15 and time.monotonic() < end:
            poller.poll(0.5)
        assert bytes(t.received) == b"after the child"
        # New registrations and write notifications work too.
        assert _echo_round_trip(poller) == b"ping over fork"
    finally:
        t.close()
        b.close()


def test_child_closing_inherited_transport_leaves_parent_registered(poller):
    """The child closes its copies (common after fork): the parent's kernel
    registrations (a shared epoll set) must not be touched."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    t = Collector(poller, a)
    w = Collector(poller, c)
    try:
        poller.defer_write(w)
        poller.poll(0)  # both registered; w's write notification fired
        poller.defer_write(w)

        def child():
            t.close()
            w.pause_reading()
            w.close()
            poller.close()
            return [t.closed, w.closed]

        assert run_in_child(child) == [True, True]
        assert not t.closed and not w.closed
        b.send(b"still here")
        end = time.monotonic() + 10
        while len(t.received) < 10 and time.monotonic() < end:
            poller.poll(0.5)
        assert bytes(t.received) == b"still here"
        d.send(b"me too")
        end = time.monotonic() + 10
        while len(w.received) < 6 and time.monotonic() < end:
            poller.poll(0.5)
        assert bytes(w.received) == b"me too"
    finally:
        t.close()
        w.close()
        b.close()
        d.close()


def test_parent_poller_object_is_refused_in_the_child(poller):
    other = pike.make_poller(poller.name)  # not the default: marked all the same
    a, b = socket.socketpair()
    try:

        def child():
            refused = {}

            def attempt(name, fn):
                try:
                    fn()
                except RuntimeError as exc:
                    refused[name] = str(exc)
                except BaseException as exc:  # the wrong exception
                    refused[name] = f"WRONG {type(exc).__name__}: {exc}"
                else:
                    refused[name] = None

            for label, p in (("default", poller), ("other", other)):
                attempt(label + ".poll", lambda: p.poll(0))
                attempt(label + ".loop", lambda: p.loop(timeout=0.1))
                attempt(label + ".call_later", lambda: p.call_later(0, print))
                attempt(label + ".call_soon_threadsafe", lambda: p.call_soon_threadsafe(print))
                attempt(label + ".Transport", lambda: Transport(p, socket.socket()))
            return refused

        refused = run_in_child(child)
        not_refused = [name for name, message in refused.items() if message is None]
        wrong = {name: m for name, m in refused.items() if m and m.startswith("WRONG")}
        assert not_refused == [] and wrong == {}
        assert "get_poller" in refused["default.poll"]
        # The parent may still use both.
        Collector(other, a)
        b.send(b"x")
        assert other.poll(5) == 1
    finally:
        for ch in other.channels():
            ch.close()
        other.close()
        a.close()
        b.close()


def test_child_of_a_child_gets_its_own_poller_too(poller):
    def child():
        mine = pike.get_poller()

        def grandchild():
            theirs = pike.get_poller()
            return [theirs is not mine, _echo_round_trip(theirs).decode()]

        nested = run_in_child(grandchild, deadline=10)
        return nested + [_echo_round_trip(mine).decode()]

    assert run_in_child(child) == [True, "ping over fork", "ping over fork"]
