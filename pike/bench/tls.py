"""``python -m pike bench --tls``: echo over TLS, pike beside asyncio and uvloop.

Each server runs in a process of its own with the same certificate and the
same context settings (the ``ssl`` defaults: TLS 1.3 here); the load
generator is a pike TLS client in another process. Two cases:

* ping-pong: each connection sends ``size`` bytes and waits for their echo
  before the next; the figure is the server's CPU time per request (µs,
  from ``/proc/<pid>/stat`` over the measured window) and requests/s;
* streaming: each connection keeps a window of data in flight; the figure
  is the echoed MiB/s and the server's CPU time per MiB.

The certificate is made at run time (``trustme`` when installed, else the
``openssl`` command) in a temporary directory that is removed afterwards.
Only loopback is used.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from pike.bench.cpu import proc_cpu_seconds

#: The servers compared, in the table's order.
KINDS = ("pike", "asyncio", "uvloop")
STREAM_WINDOW = 1024 * 1024
_READY_TIMEOUT = 20.0


class TLSBenchError(Exception):
    """The TLS benchmark cannot run here (no way to make a certificate...)."""


# -- certificates ---------------------------------------------------------------


def make_certificate(folder):
    """Write ``cert.pem`` and ``key.pem`` for localhost/127.0.0.1 into
    ``folder``; return ``(cert, key, ca)`` paths (``ca`` verifies ``cert``)."""
    cert, key, ca = (os.path.join(folder, name) for name in ("cert.pem", "key.pem", "ca.pem"))
    try:
        import trustme
    except ImportError:
        trustme = None
    if trustme is not None:
        authority = trustme.CA()
        issued = authority.issue_cert("localhost", "127.0.0.1")
        issued.private_key_pem.write_to_path(key)
        issued.cert_chain_pems[0].write_to_path(cert)
        authority.cert_pem.write_to_path(ca)
        return cert, key, ca
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert,
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TLSBenchError(
            f"cannot make a certificate: install trustme or the openssl command ({exc})"
        ) from None
    return cert, key, cert  # self-signed: it is its own CA


# -- the servers (run in child processes) -------------------------------------------


def _server_context(cert, key):
    from pike.tls import server_context

    return server_context(cert, key)


def serve_pike(port, cert, key):
    import pike
    from pike.server.listener import Listener

    class Echo(pike.Transport):
        def handle_read(self):
            data = self.recv(262144)
            if data:
                self.write(data)

        def handle_pause_writing(self):
            self.pause_reading()

        def handle_resume_writing(self):
            self.resume_reading()

    poller = pike.make_poller()
    listener = Listener(Echo, ("127.0.0.1", port), poller=poller,
                        ssl_context=_server_context(cert, key))
    _announce(listener.address[1], f"pike {pike.IMPLEMENTATION} {poller.name}")
    try:
        poller.loop()
    except KeyboardInterrupt:
        pass


def serve_asyncio(port, cert, key, use_uvloop=False):
    import asyncio

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(Echo, "127.0.0.1", port, ssl=_server_context(cert, key))
    )
    _announce(server.sockets[0].getsockname()[1], "uvloop" if use_uvloop else "asyncio")
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass


def _announce(port, what):
    sys.stdout.write(f"ready {port} {what}\n")
    sys.stdout.flush()


# -- the load generator (runs in a child process) ----------------------------------


def load(port, mode, connections, size, warmup, duration, ca, server_pid):
    """Drive ``connections`` TLS clients; print one JSON line of results."""
    import socket

    import pike
    from pike.tls import client_context

    poller = pike.make_poller()
    context = client_context(ca)
    payload = os.urandom(size)
    clients = []
    state = {"window": None}

    class Client(pike.Transport):
        requests = 0
        received = 0
        pending = 0

        def handle_tls_handshake(self):
            if mode == "stream":
                self.set_write_buffer_limits(high=STREAM_WINDOW)
                self.fill()
            else:
                self.write(payload)

        def fill(self):
            while not self.is_writing_paused() and not self.closed:
                self.write(payload)

        def handle_resume_writing(self):
            self.fill()

        def handle_read(self):
            data = self.recv(262144)
            if not data:
                return
            self.received += len(data)
            if mode == "stream":
                return
            self.pending += len(data)
            if self.pending >= size:
                self.pending -= size
                self.requests += 1
                self.write(payload)

        def handle_close(self):
            self.close()

    for _ in range(connections):
        client = Client(poller)
        client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        client.start_tls(context, server_hostname="localhost")
        client.connect(("127.0.0.1", port))
        clients.append(client)

    def totals():
        return (sum(c.requests for c in clients), sum(c.received for c in clients),
                proc_cpu_seconds(server_pid), time.perf_counter())

    def start():
        state["window"] = totals()

    def stop():
        state["end"] = totals()
        poller.stop()

    poller.call_later(warmup, start)
    poller.call_later(warmup + duration, stop)
    poller.loop()
    (req0, bytes0, cpu0, t0), (req1, bytes1, cpu1, t1) = state["window"], state["end"]
    still_open = sum(not c.closed for c in clients)
    for client in clients:
        client.abort()
    poller.close()
    seconds = t1 - t0
    result = {
        "requests": req1 - req0,
        "bytes": bytes1 - bytes0,
        "seconds": seconds,
        "server_cpu": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "open": still_open,
    }
    sys.stdout.write(json.dumps(result) + "\n")


# -- the parent: run the matrix -----------------------------------------------------


def _spawn(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "pike.bench.tls", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, **(env or {})),
    )


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    proc.stdout.close()
    proc.stderr.close()


def available_kinds():
    kinds = ["pike", "asyncio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        kinds.append("uvloop")
    return kinds


def run_case(kind, mode, connections, size, warmup, duration, files, impl="c"):
    """One server, one case: a dict of figures."""
    cert, key, ca = files
    env = {"PIKE_IMPL": impl} if kind == "pike" else {}
    server = _spawn(["serve", kind, 0, cert, key], env)
    try:
        line = _read_ready(server)
        port = int(line.split()[1])
        gen = _spawn(["load", port, mode, connections, size, warmup, duration, ca, server.pid],
                     {"PIKE_IMPL": "c" if impl == "c" else "auto"})
        try:
            out, err = gen.communicate(timeout=warmup + duration + 60)
        except subprocess.TimeoutExpired:
            gen.kill()
            out, err = gen.communicate()
            raise TLSBenchError(f"the load generator hung: {err[-500:]}") from None
        if gen.returncode != 0 or not out.strip():
            raise TLSBenchError(f"the load generator failed: {err[-500:]}")
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        _stop(server)
    result.update(server=line.split(None, 2)[2], kind=kind, mode=mode,
                  connections=connections, size=size)
    cpu = result["server_cpu"]
    if mode == "stream":
        mib = result["bytes"] / (1024 * 1024)
        result["mib_per_s"] = mib / result["seconds"]
        result["cpu_ms_per_mib"] = None if cpu is None or not mib else cpu * 1e3 / mib
    else:
        requests = result["requests"]
        result["requests_per_s"] = requests / result["seconds"]
        result["cpu_us_per_request"] = None if cpu is None or not requests else (
            cpu * 1e6 / requests)
    return result


def _read_ready(proc):
    deadline = time.monotonic() + _READY_TIMEOUT
    line = proc.stdout.readline()
    if not line.startswith("ready") or time.monotonic() > deadline:
        raise TLSBenchError(f"the server did not start: {line!r} {proc.stderr.read()[-500:]}")
    return line.strip()


def run(kinds=None, pingpong_connections=(10, 100), size=1024, stream_connections=(1,),
        stream_size=65536, warmup=0.5, duration=2.0, progress=None):
    """Run every case on every server; return the list of results."""
    kinds = [k for k in (kinds or KINDS) if k in available_kinds()]
    results = []
    with tempfile.TemporaryDirectory(prefix="pike-tls-bench-") as folder:
        files = make_certificate(folder)
        cases = [("pingpong", c, size) for c in pingpong_connections]
        cases += [("stream", c, stream_size) for c in stream_connections]
        for mode, connections, case_size in cases:
            for kind in kinds:
                if progress:
                    progress(f"tls {mode} {kind} {connections} conn {case_size} B ...")
                results.append(run_case(kind, mode, connections, case_size, warmup,
                                        duration, files))
    return results


def format_table(results):
    """The results as a plain-text table: ping-pong, then streaming."""
    sections = [
        ("pingpong", "TLS ping-pong (echo of each request before the next)", "size",
         "req/s", "requests_per_s", "{:.0f}", "server CPU us/req", "cpu_us_per_request",
         "{:.1f}"),
        ("stream", "TLS streaming (echo, 1 MiB in flight per connection)", "write",
         "MiB/s", "mib_per_s", "{:.1f}", "server CPU ms/MiB", "cpu_ms_per_mib", "{:.2f}"),
    ]
    lines = []
    for mode, title, size_head, rate_head, rate_key, rate_fmt, cpu_head, cpu_key, cpu_fmt \
            in sections:
        rows = [r for r in results if r["mode"] == mode]
        if not rows:
            continue
        if lines:
            lines.append("")
        lines.append(title)
        lines.append(f"{'server':<10} {'conns':>5} {size_head:>6} {rate_head:>10} {cpu_head:>18}")
        for r in rows:
            cpu = r[cpu_key]
            cpu_text = "n/a" if cpu is None else cpu_fmt.format(cpu)
            lines.append(f"{r['kind']:<10} {r['connections']:>5} {r['size']:>6} "
                         f"{rate_fmt.format(r[rate_key]):>10} {cpu_text:>18}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    """The child entry points: ``serve KIND PORT CERT KEY`` and ``load ...``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "serve":
        kind, port, cert, key = args[1], int(args[2]), args[3], args[4]
        if kind == "pike":
            serve_pike(port, cert, key)
        else:
            serve_asyncio(port, cert, key, use_uvloop=(kind == "uvloop"))
        return 0
    if args and args[0] == "load":
        port, mode, connections, size = int(args[1]), args[2], int(args[3]), int(args[4])
        warmup, duration, ca, pid = float(args[5]), float(args[6]), args[7], int(args[8])
        load(port, mode, connections, size, warmup, duration, ca, pid)
        return 0
    sys.stderr.write("usage: python -m pike.bench.tls serve|load ...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
