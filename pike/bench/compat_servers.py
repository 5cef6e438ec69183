"""Legacy-style echo servers on :mod:`pike.compat`, for the benchmark.

Two kinds, each written the way an unchanged asyncore-era program is:

* ``compat-asyncore``: the textbook override-style echo. Its handler is a
  plain ``asyncore.dispatcher`` whose ``writable()`` answers from its own
  output buffer and whose ``handle_write()`` sends from it; the loop has to
  ask it, as the standard library's loop did.
* ``compat-asynchat``: an ``asynchat.async_chat`` server. With ``lines``
  (``--lines`` on the command line) it is a line server (terminator
  ``b"\\n"``) that pushes every line back, for a load generator that sends
  lines (the native one's ``--line``); without, it has no terminator and
  pushes back whatever arrives, which the bench's ping-pong (not lines)
  needs.

Both run ``asyncore.loop()`` with ``pike.compat.install()`` in force, the
way ``python -m pike.compat`` runs a legacy script. The scale mode measures
whether their request rate survives thousands of idle connections.
"""

import errno
import os
import socket

HOST = "127.0.0.1"
RECV_SIZE = 65536
ACCEPTS_PER_EVENT = 64

COMPAT_KINDS = ("compat-asyncore", "compat-asynchat")


def _modules():
    import pike.compat

    pike.compat.install()
    import asynchat
    import asyncore

    return asyncore, asynchat


def accept_batch(listener):
    """Accept what waits on an asyncore ``listener``, at most a batch of it.

    asyncore accepts one connection per event; the bench's servers take
    what is queued (a bounded number), as its other servers do. Each goes
    to ``listener.handle_accepted(sock, addr)``; running out of fds ends
    the batch.
    """
    for _ in range(ACCEPTS_PER_EVENT):
        try:
            pair = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return
            raise
        if pair is None:
            return
        listener.handle_accepted(*pair)


def _listener_class(asyncore, make_handler):
    class Listener(asyncore.dispatcher):
        handle_accept = accept_batch

        def handle_accepted(self, sock, addr):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            make_handler(sock)

    return Listener


def _echo_handler(asyncore):
    class EchoHandler(asyncore.dispatcher):
        """The override style: readable()/writable() follow the buffer."""

        def __init__(self, sock):
            asyncore.dispatcher.__init__(self, sock)
            self.buffer = b""

        def readable(self):
            return len(self.buffer) < RECV_SIZE

        def writable(self):
            return len(self.buffer) > 0

        def handle_read(self):
            self.buffer += self.recv(RECV_SIZE)

        def handle_write(self):
            sent = self.send(self.buffer)
            self.buffer = self.buffer[sent:]

        def handle_close(self):
            self.close()

    return EchoHandler


def _chat_handler(asynchat, lines):
    class LineHandler(asynchat.async_chat):
        def __init__(self, sock):
            asynchat.async_chat.__init__(self, sock)
            self.set_terminator(b"\n" if lines else None)
            self.lines = []

        def collect_incoming_data(self, data):
            if lines:
                self.lines.append(data)
            else:
                self.push(data)

        def found_terminator(self):
            self.lines.append(b"\n")
            self.push(b"".join(self.lines))
            self.lines = []

    return LineHandler


def serve_compat(kind, port, announce, lines=False):
    """Serve ``kind`` on 127.0.0.1:``port``; ``announce(info)`` once listening."""
    asyncore, asynchat = _modules()
    if kind == "compat-asyncore":
        handler = _echo_handler(asyncore)
    elif kind == "compat-asynchat":
        handler = _chat_handler(asynchat, lines)
    else:
        raise SystemExit(f"unknown compat server kind {kind!r}")
    server = _listener_class(asyncore, handler)()
    server.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    server.set_reuse_addr()
    server.bind((HOST, port))
    server.listen(socket.SOMAXCONN)
    announce({"kind": kind, "port": server.socket.getsockname()[1], "pid": os.getpid(),
              "asyncore_file": asyncore.__file__, "lines": bool(lines),
              "sweep": os.environ.get("PIKE_ASYNCORE_SWEEP", "auto")})
    try:
        asyncore.loop(timeout=30.0)
    finally:
        asyncore.close_all()


def main(argv=None):
    """``python -m pike.bench.compat_servers KIND [--port P] [--lines]``."""
    import argparse
    import json
    import signal
    import sys

    from pike.bench import servers

    parser = argparse.ArgumentParser(prog="python -m pike.bench.compat_servers")
    parser.add_argument("kind", choices=COMPAT_KINDS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lines", action="store_true", help="compat-asynchat: frame by lines")
    parser.add_argument("--max-seconds", type=int, default=servers.DEFAULT_MAX_SECONDS)
    args = parser.parse_args(argv)
    if args.max_seconds > 0 and hasattr(signal, "alarm"):
        signal.alarm(args.max_seconds)
    servers.raise_nofile_limit()
    servers.exit_on_signals()

    def announce(info):
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()

    serve_compat(args.kind, args.port, announce, lines=args.lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
