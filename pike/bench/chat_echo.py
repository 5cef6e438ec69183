"""A Chat line-echo server for the soak: ``python -m pike.bench.chat_echo``.

::

    python -m pike.bench.chat_echo [--host H] [--port P | --unix PATH] [--max-seconds S]

Each connection is a :class:`LineEcho`, a :class:`pike.chat.Chat` that
frames its input on ``\\n`` and pushes every line back, terminator and all.
It serves on pike's :class:`~pike.server.Listener`, prints the same ready
line as ``python -m pike echo`` (``listening on tcp 127.0.0.1:40123 (...)``
or ``listening on unix PATH (...)``), and stops on SIGTERM or SIGINT, and
in any case after ``--max-seconds`` (SIGALRM), so that a server left behind
by a killed soak cannot live on.
"""

import argparse
import signal
import sys

from pike.chat import Chat

__all__ = ["LineEcho", "main"]


class LineEcho(Chat):
    """Echoes each ``\\n``-terminated line; finishes its replies after the peer's EOF.

    With ``half_close`` the peer's EOF (a client's ``shutdown(SHUT_WR)``)
    is seen apart from a lost connection: whatever the peer sent after its
    last terminator is echoed as it is, and the connection closes once
    every reply has left (:meth:`~pike.chat.Chat.close_when_done`).
    """

    half_close = True

    def __init__(self, alternate_poller=None, sock=None):
        super().__init__(alternate_poller, sock)
        self._pieces = []
        self.set_terminator(b"\n")

    def collect_incoming_data(self, data):
        self._pieces.append(data)

    def found_terminator(self):
        self._pieces.append(b"\n")
        line = b"".join(self._pieces)
        self._pieces.clear()
        self.push(line)

    def handle_eof(self):
        if self._pieces:  # an unterminated tail: echo it as it came
            self.push(b"".join(self._pieces))
            self._pieces.clear()
        self.close_when_done()


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m pike.bench.chat_echo",
        description="Run a Chat line-echo server (for the soak).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--unix", metavar="PATH", help="listen on this Unix socket path")
    parser.add_argument("--max-seconds", type=int, default=3600,
                        help="exit after this many seconds whatever happens (0: no limit)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.max_seconds > 0 and hasattr(signal, "alarm"):
        signal.alarm(args.max_seconds)  # SIGALRM's default action ends us
    import pike
    from pike.server.listener import Listener

    poller = pike.make_poller()
    address = args.unix if args.unix else (args.host, args.port)
    listener = Listener(LineEcho, address, poller=poller)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = f"unix {args.unix}" if args.unix else f"tcp {listener.address[0]}:{listener.address[1]}"
    print(f"listening on {where} (poller {poller.name}, implementation "
          f"{pike.IMPLEMENTATION}, 1 process)", flush=True)
    try:
        poller.loop()
    finally:
        listener.close()
        for channel in poller.channels():
            channel.close()
        poller.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
