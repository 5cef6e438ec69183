"""pike.spiro: no frame from a peer takes a process down.

A frame nested millions deep used to kill the server (SIGSEGV: the message
head was hashed before its type was checked, and hashing a deep tuple
recurses in C). Where a regression could crash, the victim runs in a
subprocess, so that it fails the test rather than killing pytest.
"""

import logging
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike import spiro
from pike.spiro import protocol
from pike.spiro.pickleguard import DEFAULT_MAX_NESTING, NestingError, check_nesting

from spiro_support import (
    KEY,
    ROOT,
    FakeServer,
    child_env,
    closed_by_peer,
    raw_connect,
    serving,
    start_server,
    stop,
    wait_until,
)

DEPTH = 3_000_000   # as deep as the frame that crashed the server


def deep_tuple_head():
    """A message whose head is a tuple nested DEPTH deep: (((...),), 1)."""
    return b"\x80\x04)" + b"\x85" * DEPTH + b"K\x01\x86."


def deep_tuple_in_frozenset():
    """A frozenset holding a tuple nested DEPTH deep: hashed while unpickling."""
    return b"\x80\x04()" + b"\x85" * DEPTH + b"\x91."


def deep_dict_key():
    """A dict whose key is a tuple nested DEPTH deep, as an 'ok' reply's value."""
    return (b"\x80\x04\x8c\x02ok\x94K\x01}\x94)" + b"\x85" * DEPTH
            + b"K\x00s\x87.")


@pytest.fixture
def server():
    with serving(idle_timeout=10.0, auth_timeout=2.0) as srv:
        yield srv


# -- the nesting check on its own -------------------------------------------------------


def _nested(kind, depth):
    value = 0
    for _ in range(depth):
        value = {"k": value} if kind is dict else kind([value])
    return value


ORDINARY = [
    0, -1, 2**70, 1.5, complex(1, 2), "text", "é", b"bytes", bytearray(b"x"), None, True,
    (), (1, "a", None), [1, [2, [3]]], {"a": {1, 2}}, frozenset({(1, 2), "x"}),
    list(range(3000)), {i: str(i) for i in range(2000)}, ("req", 7, "do", ("x = 1",)),
    _nested(list, DEFAULT_MAX_NESTING - 1), _nested(tuple, DEFAULT_MAX_NESTING - 1),
]


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_ordinary_pickles_pass(proto):
    shared = [1, 2]
    for value in ORDINARY + [[shared, shared, {"again": shared}]]:
        body = pickle.dumps(value, protocol=proto)
        check_nesting(body)
        assert pickle.loads(body) == value


@pytest.mark.parametrize("proto", range(2, pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("kind", [list, tuple, dict, frozenset])
def test_nesting_over_the_limit_is_refused(proto, kind):
    body = pickle.dumps(_nested(kind, DEFAULT_MAX_NESTING + 1), protocol=proto)
    with pytest.raises(NestingError, match="nested deeper than 200"):
        check_nesting(body)
    # a frozenset of protocols 2-3 is a call on a list in a tuple: 3 levels each
    check_nesting(body, max_depth=3 * (DEFAULT_MAX_NESTING + 2))


def test_nesting_through_the_memo_counts():
    # A list stored in the memo, then filled through a memo reference: its
    # depth is the one it has after the appends, not when it was stored.
    fill = b"]\x940" + b"h\x00" + b")" + b"\x85" * 150 + b"a0"   # L = []; L.append(deep)
    body = b"\x80\x04" + fill + b"h\x00" + b"\x85" * 60 + b"."     # (((L,),),...)
    with pytest.raises(NestingError):
        check_nesting(body)
    check_nesting(body, max_depth=300)


@pytest.mark.parametrize("body", [
    b"", b"\x80\x04", b"\x80\x04K", b"\x80\x04K\x01K\x02.", b"\x80\x04K\x01.extra",
    b"\x80\x04h\x05.", b"\x80\x04\x85.", b"\x80\x04t.", b"\xff.", b"\x80\x04\x8c\x10ab.",
    b"\x80\x04a.", b"\x80\x04(K\x01.", b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f.",
])
def test_malformed_pickles_are_refused(body):
    with pytest.raises(NestingError):
        check_nesting(body, max_depth=1)   # longer than that: walked


def test_a_body_too_short_to_nest_deep_is_not_walked():
    body = pickle.dumps(("req", 12, "eval", ("1",)))
    check_nesting(body, max_depth=len(body))
    check_nesting(b"\x80\x04\x85.", max_depth=4)      # malformed: left to the unpickler
    with pytest.raises(NestingError):
        check_nesting(b"\x80\x04)\x85\x85.", max_depth=1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_verdict(body):
    try:
        check_nesting(body, max_depth=20)
    except NestingError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=30))
def test_generated_values_pass(value):
    for proto in (0, 2, pickle.HIGHEST_PROTOCOL):
        check_nesting(pickle.dumps(value, protocol=proto))


# -- the server facing a hostile client ----------------------------------------------------


@pytest.mark.parametrize("body", [deep_tuple_head, deep_tuple_in_frozenset],
                         ids=["deep-head", "deep-in-frozenset"])
def test_deep_frame_does_not_kill_the_server(tmp_path, body):
    server, address = start_server(tmp_path)
    try:
        with spiro.connect(address, KEY) as bystander:
            bystander.do("alive = 'yes'")
            sock = raw_connect(address)
            with sock:
                sock.sendall(protocol.frame(body()))
                assert closed_by_peer(sock, timeout=30)
            assert server.poll() is None, "the server died"
            assert bystander.eval("alive") == "yes"
        with spiro.connect(address, KEY) as after:
            assert after.eval("6 * 7") == 42
    finally:
        err = stop(server)
    assert "nested deeper than" in err


@pytest.mark.parametrize("exc", ["MemoryError", "RecursionError"])
def test_an_error_while_unpickling_ends_only_that_session(server, caplog, exc):
    # an authenticated client may name any global: make unpickling itself raise
    source = f"raise {exc}".encode()
    body = (b"\x80\x04(\x8c\x03reqK\x01\x8c\x08builtins\x8c\x04exec\x93"
            + b"\x8c" + bytes([len(source)]) + source + b"\x85R)t.")
    with spiro.connect(server.address, KEY) as bystander, caplog.at_level(logging.ERROR):
        bystander.do("alive = 1")
        sock = raw_connect(server.address)
        with sock:
            sock.sendall(protocol.frame(body))
            assert closed_by_peer(sock)
        assert wait_until(lambda: f"malformed frame ({exc}" in caplog.text)
        assert bystander.eval("alive") == 1
    assert wait_until(lambda: not server.sessions)


def test_nesting_within_the_limit_goes_through(server):
    with spiro.connect(server.address, KEY) as s:
        s.do("def depth_of(x):\n    n = 0\n    while x:\n        x, n = x[0], n + 1\n"
             "    return n")
        depth_of = s.eval("depth_of")
        assert depth_of(_nested(list, 150)) == 150
        with pytest.raises(ValueError, match="would refuse"):   # said by the client
            depth_of(_nested(list, DEFAULT_MAX_NESTING + 5))
        assert s.eval("'still open'") == "still open"


def test_server_nesting_limit_is_configurable():
    with spiro.SpiroServer(authkey=KEY, max_nesting=10).start() as srv:
        with spiro.connect(srv.address, KEY, max_nesting=50) as s:
            keep = s.eval("lambda x: None")
            keep(_nested(list, 3))
            with pytest.raises(ConnectionError):
                keep(_nested(list, 20))      # the client lets it go, the server does not
        assert wait_until(lambda: not srv.sessions)


def test_remote_system_exit_does_not_exit_the_client(server):
    with spiro.connect(server.address, KEY) as s:
        with pytest.raises(spiro.RemoteError, match="SystemExit") as info:
            s.do("raise SystemExit(3)")
        assert info.value.type_name == "builtins.SystemExit"
        with pytest.raises(spiro.RemoteError, match="KeyboardInterrupt"):
            s.do("raise KeyboardInterrupt")
        assert s.eval("1") == 1


# -- the client facing a hostile server ------------------------------------------------------

_VICTIM = """
import sys
from pike import spiro
try:
    with spiro.connect(("127.0.0.1", {port}), {key!r}, timeout=20) as s:
        s.eval("1")
except spiro.ProtocolError as exc:
    print("refused:", exc)
    sys.exit(0)
print("accepted a frame it should have refused")
sys.exit(1)
"""


@pytest.mark.parametrize("body", [deep_tuple_head, deep_dict_key],
                         ids=["deep-head", "deep-dict-key"])
def test_deep_frame_does_not_kill_the_client(tmp_path, body):
    fake = FakeServer(body())
    try:
        script = tmp_path / "victim.py"
        script.write_text(textwrap.dedent(_VICTIM.format(port=fake.address[1], key=KEY)))
        victim = subprocess.run([sys.executable, str(script)], env=child_env(), cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    finally:
        fake.close()
    assert victim.returncode == 0, (victim.returncode, victim.stdout, victim.stderr)
    assert "nested deeper than" in victim.stdout
    assert fake.request is not None


class _RunsCommand:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_client_refuses_globals(tmp_path):
    marker = tmp_path / "ran"
    fake = FakeServer(pickle.dumps(("ok", 1, _RunsCommand(marker))))
    try:
        with spiro.connect(fake.address, KEY, timeout=20) as s:
            with pytest.raises(spiro.ProtocolError, match="not allowed"):
                s.eval("1")
            assert s.closed
    finally:
        fake.close()
    assert not marker.exists()


@pytest.mark.parametrize("reply", [
    ("ok", "one", 1), ("err", 1, "not exception info"), ("cb", 1, "x", (), {}),
    ("out", "stdin", "text"), ("out", "stdout", b"bytes"), ("surprise", 1, 2), [1, 2],
], ids=repr)
def test_client_checks_message_shapes(reply):
    fake = FakeServer(pickle.dumps(reply))
    try:
        with spiro.connect(fake.address, KEY, timeout=20) as s:
            with pytest.raises((spiro.ProtocolError, spiro.RemoteError)):
                s.eval("1")
    finally:
        fake.close()
