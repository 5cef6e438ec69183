"""Instructions per call of Transport's raw I/O, counted by callgrind.

Wall-clock microbenchmarks of one-microsecond calls are at the mercy of a
shared machine; user-space instruction counts are not. This script counts
them for the cases of :mod:`pike.bench.micro.bench_io`, on the pure path and on the
C implementation (whose primitive beneath ``send`` is C)::

    python -m pike bench --mode callgrind-io     # needs valgrind (Linux)

Each case runs in a child interpreter under ``valgrind --tool=callgrind``
twice, with N1 and N2 iterations; (I2 - I1) / (N2 - N1) is the cost of
one iteration, free of start-up. An iteration includes the same harness
for every variant of a row (the Python loop; the peer's send for "recv,
1 KiB waiting"; the peer's read for "write"), so compare within a row.
Kernel time is not counted. Children run with ``PYTHONHASHSEED=0`` (unless
it is set): with random hashing, the same code's count moves by up to ~10%.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

N1, N2 = 200, 1200
KIB = b"k" * 1024

CASES = [
    ("send, would block", "send_block", ["python", "c"]),
    ("recv, nothing to read", "recv_none", ["python", "c"]),
    ("recv, 1 KiB waiting", "recv_1k", ["python", "c"]),
    ("write, kernel takes it", "write", ["python", "c"]),
]


def child(op, variant, iterations):
    import pike
    from pike import _impl
    from pike.bench.micro.benchutil import fill
    from pike.transport import Transport

    _impl.select_implementation(variant)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    t = Transport(pike.make_poller("poll"), a)
    recv = Transport.recv
    write = Transport.write
    buf = bytearray(65536)

    if op == "send_block":
        fill(a)
        send = t.send
        for _ in range(iterations):
            send(KIB)
    elif op == "recv_none":
        for _ in range(iterations):
            recv(t, 65536)
    elif op == "recv_1k":
        peer_send = b.send
        for _ in range(iterations):
            peer_send(KIB)
            recv(t, 65536)
    elif op == "write":
        peer_read = b.recv_into
        for _ in range(iterations):
            write(t, KIB)
            peer_read(buf)
    assert not t._queue


def count(valgrind, op, variant, iterations, workdir):
    from pike.bench.processes import child_env

    out = os.path.join(workdir, "callgrind.out")
    env = child_env()  # this pike importable in the child
    env.setdefault("PYTHONHASHSEED", "0")
    result = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=" + out,
         sys.executable, "-m", "pike.bench.callgrind_io", "--child", op, variant,
         str(iterations)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"{op} {variant}: {result.stderr[-2000:]}")
    return int(match.group(1))


def main(argv=None):
    argparse.ArgumentParser(
        prog="python -m pike bench --mode callgrind-io",
        description=__doc__.split("\n\n")[0],
    ).parse_args(argv)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed")
    variants = ["python", "c"]
    print(f"{'operation':24s}" + "".join(f"{v:>13s}" for v in variants))
    with tempfile.TemporaryDirectory() as workdir:
        for title, op, present in CASES:
            cells = []
            for variant in variants:
                if variant not in present:
                    cells.append(f"{'-':>13s}")
                    continue
                low = count(valgrind, op, variant, N1, workdir)
                high = count(valgrind, op, variant, N2, workdir)
                cells.append(f"{(high - low) / (N2 - N1):13.0f}")
            print(f"{title:24s}" + "".join(cells), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
