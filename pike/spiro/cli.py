"""``python -m pike spiro``: serve SPIRO sessions, or open a remote prompt.

::

    python -m pike spiro serve [--host H] [--port P] [--authkey-file F]
                               [--idle-timeout S] [-v]
    python -m pike spiro shell HOST:PORT [--authkey-file F]

``serve`` prints where it listens (``spiro: listening on 127.0.0.1:40123``)
and, when no key file is given, the random key it made
(``spiro: authkey <hex>``); it serves until SIGINT or SIGTERM. The key may
also be given in the environment variable ``PIKE_SPIRO_AUTHKEY``.

``shell`` reads lines from its standard input: a line that is an
expression is evaluated and its ``repr`` printed, any other line is run as
statements. A remote exception prints its remote traceback and the prompt
goes on. End of input ends the shell.

:func:`main` takes the arguments that follow ``spiro``.
"""

import argparse
import logging
import os
import signal
import sys

__all__ = ["main"]

_ENV_KEY = "PIKE_SPIRO_AUTHKEY"


def _parser():
    parser = argparse.ArgumentParser(prog="python -m pike spiro",
                                     description="SPIRO remote interpreter sessions.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser("serve", help="run a SPIRO server")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0,
                       help="TCP port (default 0: any free port, printed)")
    serve.add_argument("--authkey-file", metavar="FILE",
                       help="file holding the shared key (default: "
                            f"${_ENV_KEY}, else a random key, printed)")
    serve.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                       help="close a session silent this long (default 300)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log sessions")
    shell = commands.add_parser("shell", help="an interactive remote prompt")
    shell.add_argument("address", metavar="HOST:PORT")
    shell.add_argument("--authkey-file", metavar="FILE",
                       help=f"file holding the shared key (default: ${_ENV_KEY})")
    return parser


def _read_key(path):
    if path is not None:
        with open(path, "rb") as f:
            key = f.read().strip()
        if not key:
            raise SystemExit(f"spiro: the key file {path} is empty")
        return key
    key = os.environ.get(_ENV_KEY)
    return key or None


def _serve(args):
    from .server import SpiroServer

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(message)s")
    try:
        server = SpiroServer((args.host, args.port), _read_key(args.authkey_file),
                             idle_timeout=args.idle_timeout)
    except ValueError as exc:
        print(f"spiro: {exc}", file=sys.stderr)
        return 2

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    host, port = server.address[:2]
    print(f"spiro: listening on {host}:{port}", flush=True)
    if server.generated_key:
        print(f"spiro: authkey {server.authkey.decode()}", flush=True)
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

    key = _read_key(args.authkey_file)
    if key is None:
        print(f"spiro: give --authkey-file or set ${_ENV_KEY}", file=sys.stderr)
        return 2
    try:
        session = connect(args.address, key)
    except AuthenticationError as exc:
        print(f"spiro: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spiro: cannot connect to {args.address}: {exc}", file=sys.stderr)
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
    if args.command == "serve":
        return _serve(args)
    return _shell(args)
