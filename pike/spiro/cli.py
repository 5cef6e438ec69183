"""``python -m pike spiro``: serve SPIRO sessions, or open a remote prompt.

::

    python -m pike spiro serve [--host H] [--port P] [--authkey-file F]
                               [--idle-timeout S] [--auth-timeout S]
                               [--max-sessions N] [--max-pending N]
                               [--max-pending-per-peer N]
                               [--max-frame-size BYTES] [--max-nesting N] [-v]
                               [--tls-cert FILE [--tls-key FILE]]
    python -m pike spiro shell HOST:PORT [--authkey-file F]
                               [--tls] [--tls-ca FILE] [--tls-hostname NAME]

The key comes from ``--authkey-file`` or else from the environment
variable ``PIKE_SPIRO_AUTHKEY``; it must be at least 16 bytes long, and a
key file that its group or others may read or write is refused, as ssh
refuses such a private key (``chmod 600`` it).

With ``--tls-cert`` the server speaks TLS only; ``shell --tls`` connects
over TLS, verifying the server against the system's CAs or the ones in
``--tls-ca`` (which implies ``--tls``). The key is proved either way,
inside the encrypted channel.

``serve`` prints where it listens (``spiro: listening on 127.0.0.1:40123``)
and, when it was given no key, the random key it made
(``spiro: authkey <hex>``); it serves until SIGINT or SIGTERM. Its limits
are shown, with their defaults, by ``python -m pike spiro serve --help``.

``shell`` reads lines from its standard input: a line that is an
expression is evaluated and its ``repr`` printed, any other line is run as
statements. What the code prints on the server is printed by the shell.
A remote exception prints its remote traceback and the prompt goes on.
End of input ends the shell.

A wrong argument -- a port out of range, an address that cannot be
listened on, a missing or unsafe key file -- is reported in one line,
``python -m pike spiro ...: error: ...``, with exit status 2.

``main(argv)`` takes the arguments that follow ``spiro``.
"""

import argparse
import logging
import signal
import sys

from .admission import DEFAULT_MAX_PENDING, DEFAULT_MAX_PENDING_PER_PEER, DEFAULT_MAX_SESSIONS
from .keys import ENV_KEY, KeyFileError, key_from_env, read_key_file
from .protocol import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_NESTING

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with an error in one line: no usage dump above it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text):
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: a number from 0 to 65535")
    return int(text)


def _count(text):
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a whole number from 1 up")
    return int(text)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: seconds, more than 0")
    return value


def _address(text):
    from .client import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser():
    parser = _Parser(prog="python -m pike spiro",
                     description="SPIRO remote interpreter sessions.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_Parser)
    commands.required = True
    serve = commands.add_parser("serve", help="run a SPIRO server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0,
                       help="TCP port (default 0: any free port, printed)")
    serve.add_argument("--authkey-file", metavar="FILE",
                       help="file holding the shared key, mode 600 (default: "
                            f"${ENV_KEY}, else a random key, printed)")
    serve.add_argument("--idle-timeout", type=_seconds, default=300.0, metavar="S",
                       help="close a session silent this long (default 300)")
    serve.add_argument("--auth-timeout", type=_seconds, default=10.0, metavar="S",
                       help="close a connection not authenticated this long (default 10)")
    serve.add_argument("--max-sessions", type=_count, default=DEFAULT_MAX_SESSIONS,
                       metavar="N",
                       help=f"authenticated sessions at once (default {DEFAULT_MAX_SESSIONS})")
    serve.add_argument("--max-pending", type=_count, default=DEFAULT_MAX_PENDING, metavar="N",
                       help="connections still authenticating at once; at the cap the "
                            f"oldest is closed (default {DEFAULT_MAX_PENDING})")
    serve.add_argument("--max-pending-per-peer", type=_count,
                       default=DEFAULT_MAX_PENDING_PER_PEER, metavar="N",
                       help="of those, from one peer address "
                            f"(default {DEFAULT_MAX_PENDING_PER_PEER})")
    serve.add_argument("--max-frame-size", type=_count, default=DEFAULT_MAX_FRAME_SIZE,
                       metavar="BYTES",
                       help=f"longest message taken or sent (default {DEFAULT_MAX_FRAME_SIZE})")
    serve.add_argument("--max-nesting", type=_count, default=DEFAULT_MAX_NESTING, metavar="N",
                       help=f"deepest nesting of one message (default {DEFAULT_MAX_NESTING})")
    serve.add_argument("-v", "--verbose", action="store_true", help="log sessions")
    serve.add_argument("--tls-cert", metavar="FILE",
                       help="serve TLS with this PEM certificate chain")
    serve.add_argument("--tls-key", metavar="FILE",
                       help="the certificate's private key (default: in --tls-cert)")
    serve.set_defaults(run=_serve, parser=serve)
    shell = commands.add_parser("shell", help="an interactive remote prompt")
    shell.add_argument("address", metavar="HOST:PORT", type=_address)
    shell.add_argument("--authkey-file", metavar="FILE",
                       help=f"file holding the shared key, mode 600 (default: ${ENV_KEY})")
    shell.add_argument("--tls", action="store_true", help="connect over TLS")
    shell.add_argument("--tls-ca", metavar="FILE",
                       help="trust the CA certificates in FILE (implies --tls; "
                            "default: the system's)")
    shell.add_argument("--tls-hostname", metavar="NAME",
                       help="the name the server's certificate must carry (default: HOST)")
    shell.set_defaults(run=_shell, parser=shell)
    return parser


def _read_key(args):
    try:
        if args.authkey_file is not None:
            return read_key_file(args.authkey_file)
        return key_from_env()
    except KeyFileError as exc:
        args.parser.error(str(exc))


def _tls_context(args):
    """The ssl.SSLContext the TLS options ask for, or None."""
    from pike import tls

    try:
        if args.command == "serve":
            if args.tls_key and not args.tls_cert:
                args.parser.error("--tls-key needs --tls-cert")
            return tls.server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        if args.tls or args.tls_ca:
            return tls.client_context(args.tls_ca)
        return None
    except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
        args.parser.error(f"cannot use the TLS files: {exc}")


def _serve(args):
    from .server import SpiroServer

    key = _read_key(args)
    context = _tls_context(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(message)s")
    try:
        server = SpiroServer(
            (args.host, args.port), key,
            idle_timeout=args.idle_timeout,
            auth_timeout=args.auth_timeout,
            max_sessions=args.max_sessions,
            max_pending=args.max_pending,
            max_pending_per_peer=args.max_pending_per_peer,
            max_frame_size=args.max_frame_size,
            max_nesting=args.max_nesting,
            ssl_context=context,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    except OSError as exc:
        args.parser.error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.address[:2]
    print(f"spiro: listening on {host}:{port}", flush=True)
    if server.generated_key:
        print(f"spiro: authkey {server.authkey.decode()}", flush=True)
    if context is not None:
        print(f"spiro: TLS only, certificate {args.tls_cert}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _shell(args):
    from . import connect
    from .protocol import AuthenticationError

    key = _read_key(args)
    if key is None:
        args.parser.error(f"give --authkey-file or set ${ENV_KEY}")
    host, port = args.address
    context = _tls_context(args)
    try:
        session = connect(args.address, key, ssl_context=context,
                          server_hostname=args.tls_hostname)
    except AuthenticationError as exc:
        print(f"spiro: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spiro: cannot connect to {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    interactive = sys.stdin.isatty()
    with session:
        while True:
            if interactive:
                print("spiro> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                compile(line, "<spiro>", "eval")
            except SyntaxError:
                op = session.do
            else:
                op = session.eval
            try:
                result = op(line)
            except ConnectionError as exc:
                print(f"spiro: the session ended: {exc}", file=sys.stderr)
                return 1
            except Exception as exc:
                text = getattr(exc, "remote_traceback", None)
                print(text.rstrip() if text else f"{type(exc).__name__}: {exc}", flush=True)
                continue
            if result is not None:
                print(repr(result), flush=True)
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    return args.run(args)
