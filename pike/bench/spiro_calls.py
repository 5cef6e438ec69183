"""Round trips per second of a trivial SPIRO call, and concurrent sessions.

Starts a SPIRO server on 127.0.0.1 in this process, times ``s.eval("1")``
in a loop for ``--seconds``, then opens ``--sessions`` sessions at once,
gives each a value of its own, checks every one answers with its own value,
closes them and waits for the server to clean up::

    python -m pike bench --mode spiro [--seconds 2] [--sessions 200]
"""

import argparse
import secrets
import sys
import threading
import time

from pike import spiro


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pike bench --mode spiro",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sessions", type=int, default=200)
    args = parser.parse_args(argv)
    key = secrets.token_hex(16)
    server = spiro.SpiroServer(authkey=key, max_sessions=args.sessions + 1).start()
    try:
        with spiro.connect(server.address, key) as session:
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                session.eval("1")
                calls += 1
            elapsed = time.perf_counter() - start
        print(f'eval("1"): {calls / elapsed:,.0f} round trips/s ({calls} in {elapsed:.2f} s)')

        start = time.perf_counter()
        sessions = [spiro.connect(server.address, key) for _ in range(args.sessions)]
        try:
            for number, session in enumerate(sessions):
                session.do(f"n = {number}")
            own = all(s.eval("n") == number for number, s in enumerate(sessions))
            print(
                f"{args.sessions} sessions at once: server held {len(server.sessions)}, "
                f"each answered with its own namespace: {own}, "
                f"threads {threading.active_count()}, {time.perf_counter() - start:.2f} s"
            )
        finally:
            for session in sessions:
                session.close()
        deadline = time.monotonic() + 30
        while server.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        print(f"after close: {len(server.sessions)} sessions, threads {threading.active_count()}")
        return 0 if own and not server.sessions else 1
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
