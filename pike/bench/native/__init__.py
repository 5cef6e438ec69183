"""Native helpers of the benchmark, built on demand from the C sources here.

Two small C programs ship as package data beside this file and are compiled
with the system C compiler the first time they are needed:

``echo_ref``
    A single-threaded, level-triggered epoll echo server: the reference for
    what the kernel allows. ``echo_ref [--host 127.0.0.1] [--port 0]
    [--unix PATH] [--backlog N]`` prints the bound port (or the socket path)
    on one line, then serves until SIGTERM/SIGINT and exits 0.

``loadgen``
    A load generator fast enough not to be the bottleneck. ``loadgen --port
    PORT [--host 127.0.0.1|::1] [--unix PATH] [--mode pingpong|stream]
    [--connections N] [--size BYTES] [--window BYTES] [--warmup S]
    [--duration S] [--idle N] [--timeout S] [--grace S] [--server-pid PID]``
    prints one JSON line. Exit status 0 on success, 1 on a run-time failure
    (the JSON then has ``errors`` > 0 and an ``error`` message), 2 on a bad
    command line, including any host but 127.0.0.1 and ::1.

Both are Linux only. Nothing here touches the network or downloads anything:
:func:`build` runs the compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``)
with ``-O2 -Wall -Wextra`` and caches the executable under a name keyed by
a hash of the source and the compiler command, so an edited source is
rebuilt and an unchanged one never is.
"""

import hashlib
import os
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

__all__ = [
    "TOOLS",
    "available",
    "build",
    "cache_root",
    "compiler",
    "last_error",
    "source_path",
    "start_echo_ref",
]

#: The programs that can be built, by name.
TOOLS = ("echo_ref", "loadgen")

#: Flags given to the compiler before the output and source arguments.
CFLAGS = ("-O2", "-Wall", "-Wextra")

# Longest a single compile may take, in seconds.
_COMPILE_TIMEOUT = 120

_HERE = os.path.dirname(os.path.abspath(__file__))
_last_errors = {}


def _version():
    try:
        from pike import __version__
    except Exception:  # pragma: no cover - pike itself failed to import
        return "unknown"
    return __version__


def source_path(name):
    """Path of the C source of tool ``name`` (one of :data:`TOOLS`)."""
    if name not in TOOLS:
        raise ValueError("unknown native tool %r (expected one of %s)" % (name, ", ".join(TOOLS)))
    return os.path.join(_HERE, name + ".c")


def compiler():
    """The C compiler command as a list of arguments, or None if there is none.

    ``$CC`` wins when set (it may carry arguments, e.g. ``"ccache gcc"``);
    otherwise the first of ``cc``, ``gcc`` and ``clang`` found on ``PATH``.
    """
    env = os.environ.get("CC", "").strip()
    if env:
        argv = shlex.split(env)
        if argv and shutil.which(argv[0]):
            return argv
        return None
    for candidate in ("cc", "gcc", "clang"):
        path = shutil.which(candidate)
        if path:
            return [path]
    return None


def cache_root():
    """Default folder of the built tools: ``pike-bench-<version>`` in the user cache.

    The user cache is ``$XDG_CACHE_HOME`` when set, else ``~/.cache``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pike-bench-%s" % _version())


def last_error(name):
    """Why the last :func:`build` of ``name`` returned None, or None if it did not."""
    return _last_errors.get(name)


def _unavailable(name, reason):
    _last_errors[name] = reason
    return None


def _usable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def build(name, cache_dir=None):
    """Compile tool ``name`` if needed and return the path of its executable.

    ``name`` is one of :data:`TOOLS`. The executable goes to ``cache_dir``
    (default :func:`cache_root`; when that cannot be written, a per-user
    folder in the temporary directory), named after a hash of the source
    and the compiler command, and is reused while both stay the same.
    Concurrent builds are safe: each compiles to a temporary file that is
    renamed into place.

    Returns None when the tool cannot be had here: not Linux, no C compiler,
    or a failed compile. :func:`last_error` then tells why.
    """
    src = source_path(name)
    _last_errors.pop(name, None)
    if not sys.platform.startswith("linux"):
        return _unavailable(name, "the native tools need Linux (epoll); this is %s" % sys.platform)
    cc = compiler()
    if cc is None:
        if os.environ.get("CC", "").strip():
            return _unavailable(name, "the C compiler in $CC (%r) was not found" % os.environ["CC"])
        return _unavailable(name, "no C compiler found (set $CC, or install cc/gcc/clang)")
    try:
        with open(src, "rb") as f:
            source = f.read()
    except OSError as exc:
        return _unavailable(name, "cannot read %s: %s" % (src, exc))

    key = hashlib.sha256()
    key.update(source)
    key.update(b"\0" + "\0".join(cc + list(CFLAGS)).encode("utf-8", "surrogateescape"))
    exe_name = "%s-%s" % (name, key.hexdigest()[:16])

    folder = cache_dir if cache_dir is not None else cache_root()
    if not _usable_dir(folder):
        if cache_dir is not None:
            return _unavailable(name, "cannot write the cache folder %s" % folder)
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        folder = os.path.join(tempfile.gettempdir(), "pike-bench-%s-%s" % (_version(), uid))
        if not _usable_dir(folder):
            return _unavailable(name, "no writable cache folder for the native tools")
    exe = os.path.join(folder, exe_name)
    if os.path.isfile(exe) and os.access(exe, os.X_OK):
        return exe

    fd, tmp = tempfile.mkstemp(prefix=exe_name + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    cmd = cc + list(CFLAGS) + ["-o", tmp, src]
    try:
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=_COMPILE_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return _unavailable(name, "cannot run %s: %s" % (shlex.join(cmd), exc))
        if proc.returncode != 0:
            output = proc.stdout.decode("utf-8", "replace").strip()
            return _unavailable(
                name, "%s failed (exit %d):\n%s" % (shlex.join(cmd), proc.returncode, output)
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return exe


def available(name=None, cache_dir=None):
    """True if tool ``name`` (default: every tool) can be built and run here.

    This builds what is missing (see :func:`build`), so a True answer is
    a real one; after the first call the cached executables make it cheap.
    """
    names = TOOLS if name is None else (name,)
    return all(build(tool, cache_dir) is not None for tool in names)


def start_echo_ref(exe=None, host="127.0.0.1", port=0, unix=None, timeout=5.0):
    """Start ``echo_ref`` and return ``(process, port)`` once it listens.

    ``exe`` defaults to ``build("echo_ref")``. With ``unix`` (a socket path)
    the second item is that path instead of a port. The caller owns the
    process: stop it with ``terminate()`` then ``wait()``. Raises
    RuntimeError when the tool is unavailable or does not start within
    ``timeout`` seconds (the process is then already stopped).
    """
    if exe is None:
        exe = build("echo_ref")
        if exe is None:
            raise RuntimeError("echo_ref is unavailable: %s" % last_error("echo_ref"))
    cmd = [exe, "--host", host, "--port", str(port)]
    if unix is not None:
        cmd += ["--unix", unix]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    line = b""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError("echo_ref did not report its port within %s s" % timeout)
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    raise RuntimeError(
                        "echo_ref exited: %s"
                        % proc.stderr.read().decode("utf-8", "replace").strip()
                    )
                line += chunk
    except BaseException:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        raise
    text = line.decode("utf-8", "replace").strip()
    return proc, (text if unix is not None else int(text))
