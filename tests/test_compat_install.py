"""pike.compat.install(): an unchanged asyncore/asynchat program runs on it.

The program is the standard library's smtpd (3.11's; 3.12 removed it): on
<= 3.11 the running Python's own smtpd.py, on 3.12+ the smtpd.py of a local
3.11 installation under pyenv (loaded from there at run time, never copied),
skipped when there is none. It is loaded after install(), so its ``import
asyncore`` / ``import asynchat`` get pike's modules, and it serves real
smtplib clients on 127.0.0.1.
"""

import glob
import importlib.util
import os
import re
import smtplib
import subprocess
import sys
import threading
import time
import warnings

import pytest

import pike.compat


@pytest.fixture
def clean_modules():
    """Leave sys.modules as the test found it."""
    names = ("asyncore", "asynchat", "socketserver", "smtpd")
    saved = {name: sys.modules.get(name) for name in names}
    yield
    pike.compat.uninstall()
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def _pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root and os.path.isdir(root):
        return root
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and os.path.isdir(out.stdout.strip()):
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    guess = os.path.expanduser("~/.pyenv")
    return guess if os.path.isdir(guess) else None


def smtpd_source():
    """Path of the smtpd.py to run: this Python's own, else 3.11's from pyenv."""
    if sys.version_info < (3, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = importlib.util.find_spec("smtpd")
        return spec.origin if spec else None
    root = _pyenv_root()
    if not root:
        return None
    hits = glob.glob(os.path.join(root, "versions", "3.11.*", "lib", "python3.11", "smtpd.py"))
    hits = [h for h in hits if re.fullmatch(r"3\.11\.\d+", h.split(os.sep)[-4])]
    hits.sort(key=lambda h: int(h.split(os.sep)[-4].split(".")[2]))
    return hits[-1] if hits else None


def load_smtpd(path):
    """Execute smtpd.py afresh as module ``smtpd`` (after install())."""
    original = getattr(warnings, "_deprecated", None)
    if original is not None and sys.version_info >= (3, 12):
        # 3.11's file refuses to load on 3.12+ ("slated for removal"):
        # let it warn as on 3.11 instead.
        def deprecated(name, message=None, *, remove, _version=None):
            kwargs = {"remove": remove, "_version": (3, 11, 0, "final", 0)}
            if message is None:
                return original(name, **kwargs)
            return original(name, message, **kwargs)

        warnings._deprecated = deprecated
    try:
        spec = importlib.util.spec_from_file_location("smtpd", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["smtpd"] = module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            spec.loader.exec_module(module)
        return module
    finally:
        if original is not None:
            warnings._deprecated = original


# -- install() / uninstall() ------------------------------------------------------


def test_install_is_idempotent_and_uninstall_restores(clean_modules):
    sentinel = object()
    sys.modules["asyncore"] = sentinel
    sys.modules.pop("asynchat", None)
    before_socketserver = sys.modules.get("socketserver")

    first = pike.compat.install()
    second = pike.compat.install()
    from pike.compat import asynchat as pike_asynchat
    from pike.compat import asyncore as pike_asyncore

    assert first == second
    assert first == {"asyncore": pike_asyncore, "asynchat": pike_asynchat}
    assert sys.modules["asyncore"] is pike_asyncore
    assert sys.modules["asynchat"] is pike_asynchat
    assert sys.modules.get("socketserver") is before_socketserver  # not asked for
    assert sorted(pike.compat.installed()) == ["asynchat", "asyncore"]
    import asynchat
    import asyncore

    assert asyncore is pike_asyncore and asynchat is pike_asynchat

    pike.compat.uninstall()
    assert sys.modules["asyncore"] is sentinel  # what was there before
    assert "asynchat" not in sys.modules  # nothing was there before
    assert pike.compat.installed() == []
    pike.compat.uninstall()  # harmless again
    assert sys.modules["asyncore"] is sentinel


def test_install_socketserver_on_request(clean_modules):
    before = sys.modules.get("socketserver")
    installed = pike.compat.install(socketserver=True)
    from pike.compat import socketserver as face
    from pike.server import socketserver as impl

    assert installed["socketserver"] is face
    import socketserver

    assert socketserver is face
    assert set(socketserver.__all__) >= {
        "BaseServer", "TCPServer", "UDPServer", "ThreadingMixIn", "ThreadingTCPServer",
        "ThreadingUDPServer", "BaseRequestHandler", "StreamRequestHandler",
        "DatagramRequestHandler",
    }
    for name in socketserver.__all__:
        cls = getattr(socketserver, name)
        assert cls.__module__ == "socketserver"
        assert issubclass(cls, getattr(impl, name))
    assert issubclass(socketserver.ThreadingTCPServer, socketserver.TCPServer)
    assert issubclass(socketserver.ThreadingTCPServer, socketserver.ThreadingMixIn)
    assert issubclass(socketserver.TCPServer, socketserver.BaseServer)
    pike.compat.uninstall()
    assert sys.modules.get("socketserver") is before


def test_socketserver_face_serves(clean_modules):
    pike.compat.install(socketserver=True)
    import socket
    import socketserver

    class Upper(socketserver.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline().upper())

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upper) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            with socket.create_connection(server.server_address, timeout=5) as conn:
                conn.sendall(b"hello\n")
                assert conn.makefile("rb").readline() == b"HELLO\n"
        finally:
            server.shutdown()
            thread.join(10)
    assert not thread.is_alive()


# -- an unchanged smtpd program ---------------------------------------------------------


def test_smtpd_server_serves_smtplib_clients(clean_modules):
    path = smtpd_source()
    if not path:
        pytest.skip("no smtpd.py here and no Python 3.11 under pyenv")
    pike.compat.install()
    import asyncore

    smtpd = load_smtpd(path)
    assert smtpd.asyncore is sys.modules["asyncore"]
    assert smtpd.asyncore.__name__ == "pike.compat.asyncore"
    assert smtpd.asynchat is sys.modules["asynchat"]
    assert smtpd.asynchat.__name__ == "pike.compat.asynchat"

    received = []

    class Collector(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append((mailfrom, rcpttos, data))

    server = Collector(("127.0.0.1", 0), None, decode_data=False)
    port = server.socket.getsockname()[1]
    stop = threading.Event()

    def serve():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            asyncore.loop(timeout=0.05, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.com"],
                            b"Subject: one\r\n\r\nfirst body\r\n")
            client.sendmail("c@example.com", ["d@example.com", "e@example.com"],
                            b"Subject: two\r\n\r\nsecond\r\n.dot line\r\n")
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
        asyncore.close_all()
    assert not thread.is_alive()
    assert len(received) == 2
    assert received[0][:2] == ("a@example.com", ["b@example.com"])
    assert b"first body" in received[0][2]
    assert received[1][:2] == ("c@example.com", ["d@example.com", "e@example.com"])
    assert received[1][2].endswith(b"\nsecond\n.dot line")  # dot-stuffing undone
    assert asyncore.socket_map == {}
