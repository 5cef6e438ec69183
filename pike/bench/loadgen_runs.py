"""The load generator runs: the C one wherever it builds, else the Python one.

The C load generator (``pike/bench/native/loadgen.c``) and the Python one
(:mod:`pike.bench.loadgen`) each run in a process of their own and bracket
their measured window with readings of the server's CPU time (``/proc``);
:class:`Loadgen` picks one and returns its figures in one layout.
"""

import json
import subprocess
import sys
import time

from pike.bench import cpu as cpu_accounting
from pike.bench.processes import HOST, BenchError, run_json_child

#: Extra seconds the load generator gets beyond warm-up + window.
LOADGEN_GRACE = 20.0
#: The C load generator's own bound on connecting and draining (--grace).
C_LOADGEN_GRACE = 10.0


class Loadgen:
    """The load generator a benchmark uses: ``kind`` "c" (with ``exe``) or "python"."""

    def __init__(self, kind, exe=None):
        if kind not in ("c", "python"):
            raise ValueError(f"load generator must be c or python, not {kind!r}")
        if kind == "c" and not exe:
            raise ValueError("the C load generator needs its executable")
        self.kind = kind
        self.exe = exe

    @classmethod
    def choose(cls, want=None):
        """``(loadgen, note)``: the C one when it builds, unless ``want`` says otherwise.

        ``want`` is None (C, else Python), "c" (BenchError when it cannot be
        built) or "python". ``note`` is a line for the user, or None.
        """
        if want not in (None, "c", "python"):
            raise ValueError(f"--loadgen must be c or python, not {want!r}")
        if want == "python":
            return cls("python"), "load generator: Python (as asked); it may limit req/s"
        from pike.bench import native

        exe = native.build("loadgen")
        if exe is not None:
            return cls("c", exe), None
        reason = (native.last_error("loadgen") or "unknown error").strip().splitlines()[0]
        if want == "c":
            raise BenchError(f"the C load generator cannot be built here: {reason}")
        return cls("python"), (
            f"note: the C load generator cannot be built ({reason}); using the Python "
            "one, which saturates before the fastest servers do: read CPU/req"
        )

    def as_dict(self):
        return {"kind": self.kind, "executable": self.exe}

    def run(self, procs, port, connections, size, warmup, duration, *, mode="pingpong",
            window=None, server_pid=None, cpu=None):
        """One load generator run in its own process; its figures, normalised."""
        if self.kind == "c":
            return run_c_loadgen(
                procs, self.exe, port, connections, size, warmup, duration,
                mode=mode, window=window, server_pid=server_pid, cpu=cpu,
            )
        return run_loadgen(
            procs, port, connections, size, warmup, duration,
            server_pid=server_pid, cpu=cpu, mode=mode, window=window,
        )


def run_loadgen(procs, port, connections, size, warmup, duration, server_pid=None, cpu=None,
                mode="pingpong", window=None):
    """Run the Python load generator in its own process; return its JSON result."""
    args = [
        sys.executable,
        "-m",
        "pike.bench.loadgen",
        "--port",
        str(port),
        "--mode",
        mode,
        "--connections",
        str(connections),
        "--size",
        str(size),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    if window is not None:
        args += ["--window", str(window)]
    if server_pid is not None:
        args += ["--server-pid", str(server_pid)]
    result, pinned = run_json_child(procs, args, warmup + duration + LOADGEN_GRACE, cpu,
                                    "load generator")
    result["loadgen"] = "python"
    result["loadgen_pinned"] = pinned
    return result


def run_c_loadgen(procs, exe, port, connections, size, warmup, duration, *, mode="pingpong",
                  window=None, server_pid=None, cpu=None):
    """Run the C load generator; return its figures in the Python one's layout.

    The C tool reports no other processes' CPU: the runner measures it
    around the whole run (connecting and draining included) instead.
    """
    args = [
        exe, "--host", HOST, "--port", str(port), "--mode", mode,
        "--connections", str(connections), "--size", str(size),
        "--warmup", repr(float(warmup)), "--duration", repr(float(duration)),
        "--grace", repr(C_LOADGEN_GRACE),
    ]
    if mode == "stream" and window is not None:
        args += ["--window", str(window)]
    source = None
    if server_pid is not None and cpu_accounting.proc_cpu_seconds(server_pid) is not None:
        args += ["--server-pid", str(server_pid)]
        source = "proc"
    system0 = cpu_accounting.system_cpu_seconds()
    server0 = cpu_accounting.proc_cpu_seconds(server_pid) if server_pid else None
    self0 = cpu_accounting.self_cpu_seconds()
    children0 = cpu_accounting.children_cpu_seconds()
    t0 = time.monotonic()
    proc = procs.spawn(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pinned = cpu_accounting.pin(proc.pid, cpu)
    try:
        out, err = proc.communicate(timeout=warmup + duration + C_LOADGEN_GRACE + LOADGEN_GRACE)
    except subprocess.TimeoutExpired:
        raise BenchError("the load generator did not finish in time") from None
    finally:
        procs.stop(proc)
    elapsed = time.monotonic() - t0
    detail = err.decode("utf-8", "replace").strip()[-2000:]
    try:
        raw = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(
            f"the load generator failed (exit {proc.returncode}): {detail or 'no output'}"
        ) from None
    if raw.get("error") or proc.returncode:
        raise BenchError(f"load generator: {raw.get('error') or detail or proc.returncode}")
    seconds = raw["seconds"]
    stream = mode == "stream"
    result = {
        "mode": mode,
        "connections": raw["connections"],
        "size": raw["size"],
        "warmup_s": float(warmup),
        "window_s": seconds,
        "requests": raw["requests"],
        "requests_total": None,
        "bytes": raw["bytes"],
        "mib_per_s": raw["mib_per_s"],
        "rps": raw["rps"],
        "latency_us": None if stream else {
            "p50": raw["p50_us"],
            "p90": raw["p90_us"],
            "p99": raw["p99_us"],
            "p999": raw["p999_us"],
            "max": raw["max_us"],
            "mean": raw["mean_us"],
            "samples": raw["requests"],
        },
        "loadgen_cpu_s": raw["loadgen_cpu_s"],
        "loadgen_cpu_pct": 100.0 * raw["loadgen_cpu_s"] / seconds if seconds > 0 else None,
        "server_cpu_s": raw.get("server_cpu_s"),
        "server_cpu_source": source if raw.get("server_cpu_s") is not None else None,
        "loadgen": "c",
        "loadgen_pinned": pinned,
        "other_cpu_pct": None,
        "steal_pct": None,
        "other_cpu_scope": "whole load generator run",
    }
    if stream:
        result["window_bytes"] = raw.get("window")
    system1 = cpu_accounting.system_cpu_seconds()
    server1 = cpu_accounting.proc_cpu_seconds(server_pid) if server_pid else None
    children1 = cpu_accounting.children_cpu_seconds()
    if system0 and system1 and elapsed > 0:
        ours = cpu_accounting.self_cpu_seconds() - self0
        if children0 is not None and children1 is not None:
            ours += children1 - children0
        if server0 is not None and server1 is not None:
            ours += server1 - server0
        busy = system1[0] - system0[0]
        result["other_cpu_pct"] = max(0.0, 100.0 * (busy - ours) / elapsed)
        result["steal_pct"] = 100.0 * (system1[1] - system0[1]) / elapsed
    return result
