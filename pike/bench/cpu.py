"""CPU-time accounting and core pinning for benchmark processes.

Standard library only (psutil is used when installed and ``/proc`` is
missing), so the load generator can use it without touching pike's I/O.

Sources of another process's CPU time, best first:

* ``proc``: ``/proc/<pid>/stat`` utime + stime, in clock ticks (Linux);
  readable at any moment, so a measured window can be bracketed exactly.
* ``psutil``: ``psutil.Process(pid).cpu_times()`` (macOS, BSD).
* none of these: the runner falls back to ``getrusage(RUSAGE_CHILDREN)``
  around the reaping of the server, which gives its whole lifetime
  (start-up and warm-up included) instead of the window.
"""

import os
import time

try:
    CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    CLOCK_TICKS = 100


def proc_cpu_seconds(pid):
    """utime + stime of ``pid`` from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or
    # parentheses itself: the fixed fields start after the last ')'.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        # fields[0] is field 3 (state): utime is field 14, stime field 15.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def _psutil_reader(pid):
    try:
        import psutil
    except ImportError:
        return None
    try:
        process = psutil.Process(pid)
        process.cpu_times()
    except Exception:
        return None

    def read():
        try:
            times = process.cpu_times()
        except Exception:
            return None
        return times.user + times.system

    return read


def cpu_reader(pid):
    """``(read, source)``: ``read()`` gives ``pid``'s CPU seconds so far.

    ``(None, None)`` when no source works for another process here.
    """
    if proc_cpu_seconds(pid) is not None:
        return (lambda: proc_cpu_seconds(pid)), "proc"
    read = _psutil_reader(pid)
    if read is not None and read() is not None:
        return read, "psutil"
    return None, None


def system_cpu_seconds():
    """``(busy, steal)`` CPU seconds of the whole machine so far, or None.

    From the first line of ``/proc/stat``: busy is user + nice + system
    over all CPUs; steal is time the hypervisor gave away. Over a window,
    busy minus the benchmark's own processes is what else ran on the
    machine: a noise indicator. Interrupt and softirq time are left out: on
    loopback most of it is the benchmark's own traffic (the kernel's TCP
    receive path), which no process is charged for where the kernel
    accounts interrupt time apart.
    """
    try:
        with open("/proc/stat", "rb") as f:
            line = f.readline()
    except OSError:
        return None
    fields = line.split()
    if not fields or fields[0] != b"cpu":
        return None
    try:
        values = [int(v) for v in fields[1:9]]
    except ValueError:
        return None
    values += [0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    del irq, softirq  # see above
    return (user + nice + system) / CLOCK_TICKS, steal / CLOCK_TICKS


def self_cpu_seconds():
    """This process's user + system CPU seconds."""
    return time.process_time()


def children_cpu_seconds():
    """User + system CPU seconds of every reaped child so far, or None."""
    try:
        import resource
    except ImportError:
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def usable_cpus():
    """The CPUs this process may run on, sorted; None when unknown."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return sorted(getaffinity(0))
    except OSError:
        return None


def choose_cpus():
    """``(server_cpu, loadgen_cpu)`` to pin to, or ``(None, None)``.

    Pinning needs ``os.sched_setaffinity`` and at least two usable CPUs.
    """
    cpus = usable_cpus()
    if not cpus or len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        return None, None
    return cpus[0], cpus[1]


def pin(pid, cpu):
    """Pin ``pid`` to ``cpu``; True when it was done."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        return False
    return True
