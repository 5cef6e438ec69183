"""The soak: many connect / echo / close cycles, every byte checked, the server watched.

A cycle opens a connection (TCP on 127.0.0.1 or a Unix socket), sends a
payload, reads the echo back and closes. A share of the cycles half-close:
the client calls ``shutdown(SHUT_WR)`` once it has sent everything and then
reads until the server's EOF, so the server must finish its replies after
the peer's EOF. Every echoed byte is compared with what was sent, at its
offset, as it arrives; the length and a CRC-32 of the whole echo are given
when a cycle fails. Payloads are mostly small, sometimes tens or hundreds
of KiB, and now and then about 1 MiB; for a line server (``chat``) they are
whole ``\\n``-terminated lines.

Several cycles run at once (``concurrency``), driven by one selector loop
with non-blocking sockets, so that a server which echoes while the client
is still sending never deadlocks against it.

:class:`Watch` samples the server process's open fd count and resident
memory (``/proc``) and holds them to bounds: after a warm-up (cycles with
the largest payloads included) the fd count may not pass the warm figure
plus the connections in flight, must come back to the warm figure once the
cycles are done, and resident memory may not grow beyond a stated number
of MiB.
"""

import bisect
import errno
import random
import selectors
import socket
import time
import zlib

from pike.bench import processes

#: Payload sizes: (share of cycles, smallest, largest), drawn in order.
SIZE_MIX = (
    (0.60, 1, 512),
    (0.30, 513, 16 * 1024),
    (0.098, 16 * 1024 + 1, 256 * 1024),
    (0.002, 1024 * 1024 - 64 * 1024, 1024 * 1024),
)
MAX_PAYLOAD = 1024 * 1024
#: Bytes of pseudo-random source the payloads are cut from.
SOURCE_BYTES = 4 * 1024 * 1024
#: Longest line of a ``chat`` payload (well under Chat's frame limit).
MAX_LINE = 32 * 1024
SEND_CHUNK = 256 * 1024
RECV_SIZE = 256 * 1024

#: Seconds a cycle may go without progress before it fails as stalled.
CYCLE_TIMEOUT = 30.0
#: Seconds between samples of the server's fds and memory.
SAMPLE_EVERY = 0.5
#: fds the server may hold beyond its warm count once the cycles are done.
FD_SLACK = 2
#: Default bound on the growth of the server's resident memory after warm-up.
RSS_GROWTH_MIB = 16
#: A run stops after this many failed cycles (0: never).
MAX_FAILURES = 5
#: ``stopped`` of a run that the time bound ended.
TIME_BOUND = "time bound reached"
#: Failure messages kept per run (every failure is counted).
KEPT_MESSAGES = 10


class Payloads:
    """Pseudo-random payloads; ``lines=True`` cuts them at ``\\n`` boundaries."""

    def __init__(self, seed=0, lines=False):
        rng = random.Random(seed)
        data = bytearray(rng.randbytes(SOURCE_BYTES))
        self.lines = lines
        self.ends = []
        if lines:
            data = bytearray(data.replace(b"\n", b"\x00"))
            pos = -1
            while True:
                # Mostly short lines, some long ones.
                step = rng.randint(1, 120) if rng.random() < 0.8 else rng.randint(121, MAX_LINE)
                pos += step
                if pos >= len(data):
                    break
                data[pos] = 0x0A
                self.ends.append(pos)
        self.data = memoryview(bytes(data))

    @staticmethod
    def draw_size(rng):
        """A payload size from :data:`SIZE_MIX`."""
        pick = rng.random()
        for share, low, high in SIZE_MIX:
            if pick < share:
                return rng.randint(low, high)
            pick -= share
        low, high = SIZE_MIX[-1][1:]
        return rng.randint(low, high)

    def take(self, rng, size):
        """A payload of about ``size`` bytes (exactly, unless ``lines``)."""
        size = max(1, min(size, MAX_PAYLOAD))
        if not self.lines:
            start = rng.randrange(len(self.data) - size + 1)
            return self.data[start:start + size]
        ends = self.ends
        # The payload starts at a line start and ends at the first line end
        # at or past start + size: room for a whole MAX_LINE after that.
        last = bisect.bisect_left(ends, len(self.data) - size - MAX_LINE - 2)
        i = rng.randrange(max(1, last))
        start = ends[i] + 1
        j = bisect.bisect_left(ends, start + size - 1)
        return self.data[start:ends[j] + 1]


class Watch:
    """Samples a server process's fd count and resident memory against bounds.

    ``start()`` reads the figures before any cycle, ``warm(in_flight)`` sets
    the baseline after the warm-up (the server holding no connection),
    ``sample(in_flight)`` checks a reading taken while cycles run, and
    ``end()`` checks the figures once every cycle is done. Violations are
    collected in ``violations`` (strings). ``readers`` is ``(fds(pid),
    rss(pid))``, replaceable for tests; with ``pid`` None nothing is read.
    """

    def __init__(self, pid, concurrency, fd_slack=FD_SLACK, rss_growth_mib=RSS_GROWTH_MIB,
                 readers=None):
        self.pid = pid
        self.concurrency = concurrency
        self.fd_slack = fd_slack
        self.rss_growth = int(rss_growth_mib * 1048576)
        self._fds, self._rss = readers or (processes.fd_count, processes.rss_bytes)
        self.fds = {}
        self.rss = {}
        self.samples = 0
        self.violations = []

    @property
    def active(self):
        return self.pid is not None

    def _read(self):
        return self._fds(self.pid), self._rss(self.pid)

    def _note(self, fds, rss):
        self.samples += 1
        for store, value in ((self.fds, fds), (self.rss, rss)):
            if value is None:
                continue
            store["min"] = value if "min" not in store else min(store["min"], value)
            store["max"] = value if "max" not in store else max(store["max"], value)
            store["last"] = value

    def start(self):
        if not self.active:
            return
        fds, rss = self._read()
        self.fds["start"], self.rss["start"] = fds, rss
        self._note(fds, rss)

    def warm(self):
        """The baseline: read once the warm-up cycles are done and the server is idle."""
        if not self.active:
            return
        fds, rss = self._read()
        self.fds["warm"], self.rss["warm"] = fds, rss
        self._note(fds, rss)

    def fd_bound_running(self):
        warm = self.fds.get("warm")
        # Connections in flight, and as many the client closed that the
        # server has not yet seen close.
        return None if warm is None else warm + 2 * self.concurrency + self.fd_slack

    def fd_bound_end(self):
        warm = self.fds.get("warm")
        return None if warm is None else warm + self.fd_slack

    def rss_bound(self):
        warm = self.rss.get("warm")
        return None if warm is None else warm + self.rss_growth

    def _check_rss(self, rss, when):
        bound = self.rss_bound()
        if rss is not None and bound is not None and rss > bound:
            self.violations.append(
                f"{when}: resident memory {rss / 1048576:.1f} MiB is above the bound "
                f"{bound / 1048576:.1f} MiB (warm {self.rss['warm'] / 1048576:.1f} MiB "
                f"+ {self.rss_growth / 1048576:g} MiB)"
            )

    def sample(self):
        """A reading while cycles run; False once a bound is broken."""
        if not self.active:
            return True
        fds, rss = self._read()
        if fds is None and rss is None:
            return True  # gone: the run notices the dead server itself
        self._note(fds, rss)
        before = len(self.violations)
        bound = self.fd_bound_running()
        if fds is not None and bound is not None and fds > bound:
            self.violations.append(
                f"while running: the server held {fds} fds, above the bound {bound} "
                f"(warm {self.fds['warm']} + 2 x {self.concurrency} in flight + {self.fd_slack})"
            )
        self._check_rss(rss, "while running")
        return len(self.violations) == before

    def end(self, settle_timeout=5.0):
        """Read the figures once every cycle is done (fds settle first, bounded)."""
        if not self.active:
            return
        bound = self.fd_bound_end()
        warm = self.fds.get("warm")
        deadline = time.monotonic() + settle_timeout
        fds = self._fds(self.pid)
        # Give the server a moment to see the last closes: back to warm, or the time is up.
        while fds is not None and warm is not None and fds > warm:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
            fds = self._fds(self.pid)
        rss = self._rss(self.pid)
        self.fds["end"], self.rss["end"] = fds, rss
        self._note(fds, rss)
        if fds is not None and bound is not None and fds > bound:
            self.violations.append(
                f"at the end: the server still held {fds} fds with no connection open, "
                f"above the bound {bound} (warm {self.fds['warm']} + {self.fd_slack}): "
                f"{fds - self.fds['warm']} leaked"
            )
        self._check_rss(rss, "at the end")

    def as_dict(self):
        return {
            "fds": dict(self.fds, bound_running=self.fd_bound_running(),
                        bound_end=self.fd_bound_end()),
            "rss_bytes": dict(self.rss, bound=self.rss_bound()),
            "rss_growth_bytes": self.rss_growth,
            "samples": self.samples,
            "violations": list(self.violations),
        }


class _Cycle:
    __slots__ = ("number", "sock", "payload", "sent", "got", "crc", "half_close", "last")

    def __init__(self, number, sock, payload, half_close):
        self.number = number
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.got = 0
        self.crc = 0
        self.half_close = half_close
        self.last = time.monotonic()

    def describe(self, transport):
        how = "half-close" if self.half_close else "full close"
        return f"cycle {self.number} ({how}, {len(self.payload):,} B over {transport})"

    def totals(self):
        want = zlib.crc32(self.payload)
        return (f"echoed {self.got:,} B crc32 {self.crc:08x}, "
                f"sent {len(self.payload):,} B crc32 {want:08x}")


def _first_difference(expected, got):
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return i
    return min(len(expected), len(got))


class CycleFailure(Exception):
    """One cycle went wrong; the message says which and how."""


def run_cycles(address, family, cycles, payloads, *, transport="tcp", half_close_share=0.3,
               concurrency=4, seed=0, watch=None, warmup_cycles=0, deadline=None,
               progress=None, progress_every=5.0, max_failures=MAX_FAILURES,
               cycle_timeout=CYCLE_TIMEOUT, server_alive=None):
    """Run ``cycles`` connect / echo / close cycles against ``address``.

    Returns a dict: ``cycles`` done, ``half_closed``, ``bytes`` echoed,
    ``seconds``, ``failed`` (cycles), ``failures`` (the first
    :data:`KEPT_MESSAGES` messages), ``stopped`` (why it ended early, or
    None) and the :class:`Watch` figures. ``deadline`` (monotonic seconds)
    stops starting new cycles; ``server_alive()`` returning False ends the
    run as a failure.
    """
    rng = random.Random(seed)
    watch = watch or Watch(None, concurrency)
    sel = selectors.DefaultSelector()
    active = {}
    failures = []
    failed = 0
    done = started = half_closed = echoed = 0
    stopped = None
    t0 = last_sample = last_progress = time.monotonic()
    warm = warmup_cycles <= 0
    watch.start()
    if warm:
        watch.warm()

    def record(message):
        nonlocal failed
        failed += 1
        if len(failures) < KEPT_MESSAGES:
            failures.append(message)

    def too_many():
        return 0 < max_failures <= failed

    def fail(cycle, what):
        record(f"{cycle.describe(transport)}: {what}")
        finish(cycle)

    def finish(cycle):
        sel.unregister(cycle.sock)
        cycle.sock.close()
        del active[cycle.sock]

    def start():
        nonlocal started, half_closed
        number = started
        # The first cycles carry the largest payloads, so that the warm-up
        # has seen the server's biggest buffers before the baseline is taken.
        size = MAX_PAYLOAD if number < 2 else payloads.draw_size(rng)
        payload = payloads.take(rng, size)
        half = number == 0 or rng.random() < half_close_share
        sock = socket.socket(family, socket.SOCK_STREAM)
        cycle = _Cycle(number, sock, payload, half)
        started += 1
        try:
            sock.settimeout(cycle_timeout)
            sock.connect(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            hint = " (out of ephemeral ports?)" if exc.errno == errno.EADDRNOTAVAIL else ""
            record(f"{cycle.describe(transport)}: connect failed: {exc}{hint}")
            return
        half_closed += half
        active[sock] = cycle
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, cycle)

    def on_write(cycle):
        try:
            n = cycle.sock.send(cycle.payload[cycle.sent:cycle.sent + SEND_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            fail(cycle, f"send failed after {cycle.sent:,} B: {exc}")
            return
        cycle.sent += n
        cycle.last = time.monotonic()
        if cycle.sent == len(cycle.payload):
            if cycle.half_close:
                try:
                    cycle.sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    fail(cycle, f"shutdown(SHUT_WR) failed: {exc}")
                    return
            sel.modify(cycle.sock, selectors.EVENT_READ, cycle)

    def on_read(cycle):
        nonlocal done, echoed
        try:
            data = cycle.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            fail(cycle, f"connection lost after {cycle.got:,} of {len(cycle.payload):,} "
                        f"echoed bytes: {exc}; {cycle.totals()}")
            return
        cycle.last = time.monotonic()
        size = len(cycle.payload)
        if not data:
            if cycle.got < size:
                fail(cycle, f"TRUNCATED: the server closed after echoing {cycle.got:,} of "
                            f"{size:,} bytes ({size - cycle.got:,} missing); {cycle.totals()}")
                return
            done += 1
            echoed += cycle.got
            finish(cycle)
            return
        got, n = cycle.got, len(data)
        if got + n > size:
            fail(cycle, f"EXTRA BYTES: {got + n - size:,} more than were sent")
            return
        expected = cycle.payload[got:got + n]
        if expected != data:
            at = got + _first_difference(expected, data)
            fail(cycle, f"CORRUPT: byte {at:,} of {size:,} differs (sent "
                        f"{cycle.payload[at]:#04x}, echoed {data[at - got]:#04x})")
            return
        cycle.crc = zlib.crc32(data, cycle.crc)
        cycle.got += n
        if cycle.got == size and not cycle.half_close:
            done += 1
            echoed += size
            finish(cycle)

    try:
        while True:
            now = time.monotonic()
            if stopped is None and deadline is not None and now >= deadline:
                stopped = TIME_BOUND
            if not warm and started >= warmup_cycles:
                if active:
                    pass  # let the warm-up drain, then take the baseline
                else:
                    warm = True
                    time.sleep(0.2)  # let the server see the last closes
                    watch.warm()
            while (stopped is None and started < cycles and len(active) < concurrency
                   and (warm or started < warmup_cycles) and not too_many()):
                start()
            if not active and (started >= cycles or stopped is not None or too_many()):
                break
            for key, mask in sel.select(0.2):
                cycle = key.data
                if cycle.sock not in active:
                    continue
                if mask & selectors.EVENT_WRITE and cycle.sent < len(cycle.payload):
                    on_write(cycle)
                if cycle.sock in active and mask & selectors.EVENT_READ:
                    on_read(cycle)
            now = time.monotonic()
            for cycle in [c for c in active.values() if now - c.last > cycle_timeout]:
                fail(cycle, f"STALLED: no progress for {cycle_timeout:g} s after sending "
                            f"{cycle.sent:,} and receiving {cycle.got:,} B; {cycle.totals()}")
            if now - last_sample >= SAMPLE_EVERY:
                last_sample = now
                if server_alive is not None and not server_alive():
                    record("the server process died")
                    stopped = "the server died"
                    break
                if warm and not watch.sample() and stopped is None:
                    stopped = "a bound was broken"
            if too_many() and stopped is None:
                stopped = f"{failed} cycles failed"
            if progress is not None and now - last_progress >= progress_every:
                last_progress = now
                progress(done, started, now - t0)
    finally:
        for cycle in list(active.values()):
            finish(cycle)
        sel.close()
    seconds = time.monotonic() - t0
    if warm and stopped != "the server died":
        watch.end()
    return {
        "transport": transport,
        "cycles_asked": cycles,
        "cycles": done,
        "started": started,
        "half_closed": half_closed,
        "bytes": echoed,
        "seconds": seconds,
        "rate": done / seconds if seconds > 0 else None,
        "failed": failed,
        "failures": failures,
        "stopped": stopped,
        "watch": watch.as_dict(),
    }
