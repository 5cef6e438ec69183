#!/usr/bin/env python3
"""Real applications from the package index on pyasyncore, then on pike.compat.

Usage::

    python scripts/run_compat_apps.py --python PY312 --python PY313
        [--work DIR] [--apps pyftpdlib,pyinotify] [--keep]

For each interpreter given (3.12 or later: where asyncore and asynchat are
gone and applications depend on the pyasyncore / pyasynchat packages), the
script makes a throwaway virtual environment under ``--work`` (default: a
new temporary directory, removed at the end unless ``--keep``), installs
each application with its dependencies from the package index, and
pyasyncore and pyasynchat (which pyftpdlib asks for on 3.12+, and the
others need there without saying so), and runs, once
as installed (the baseline: pyasyncore's modules) and once unchanged under
``python -m pike.compat`` (pike's modules, with this checkout on
``PYTHONPATH``), and once more with ``python -m pike.compat --enable-site``
in force in the environment and the program started as usual
(``pike-site``):

* ``pyftpdlib``: an FTP server library whose channels subclass
  ``asyncore.dispatcher`` and ``asynchat.async_chat``; its own test suite
  from its source distribution (pytest, one process, a per-test time
  limit);
* ``pyinotify``: its ``AsyncNotifier`` (an ``asyncore.file_dispatcher``)
  watching a temporary directory under ``asyncore.loop()``, in the default
  map and in a private one; it ships no test suite, so the check is its
  documented asyncore use: every creation and deletion of a file must
  reach the handler, in order;
* ``asyncore_wsgi``: a WSGI server whose connections are
  ``asyncore.dispatcher`` subclasses; no test suite either, so the check
  serves the standard library's demo WSGI application on 127.0.0.1 to
  sequential and concurrent HTTP clients and compares every response.

Each run first records which ``asyncore`` the application got, so that a
"pike" row that silently ran on pyasyncore cannot pass for one. The table
gives passed / failed / errors / skipped per application, interpreter and
module set.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APPS = ("pyftpdlib", "pyinotify", "asyncore_wsgi")
PINS = {"pyftpdlib": "pyftpdlib==2.2.0", "pyinotify": "pyinotify==0.9.6",
        "asyncore_wsgi": "asyncore-wsgi==0.0.11"}
TEST_TIMEOUT_S = 120  # per test
SUITE_TIMEOUT_S = 1800  # per suite run

WHICH_ASYNCORE = textwrap.dedent(
    """
    import asyncore, asynchat
    print("ASYNCORE", asyncore.__name__, asyncore.__file__)
    print("ASYNCHAT", asynchat.__name__, asynchat.__file__)
    """
)

INOTIFY_CHECK = textwrap.dedent(
    """
    import asyncore, os, sys, tempfile, time
    import pyinotify


    def check(channel_map):
        seen = []

        class Handler(pyinotify.ProcessEvent):
            def process_IN_CREATE(self, event):
                seen.append(("create", event.name))

            def process_IN_DELETE(self, event):
                seen.append(("delete", event.name))

        with tempfile.TemporaryDirectory() as where:
            wm = pyinotify.WatchManager()
            notifier = pyinotify.AsyncNotifier(wm, Handler(), channel_map=channel_map)
            wm.add_watch(where, pyinotify.IN_CREATE | pyinotify.IN_DELETE)
            want = []
            for name in ("a.txt", "b.txt", "c.txt"):
                path = os.path.join(where, name)
                open(path, "w").close()
                os.remove(path)
                want += [("create", name), ("delete", name)]
            deadline = time.monotonic() + 10
            while len(seen) < len(want) and time.monotonic() < deadline:
                asyncore.loop(timeout=0.2, count=1, map=channel_map)
            notifier.stop()
        return seen == want


    results = [check(None), check({})]
    print("default map, private map:", results, asyncore.__name__)
    passed = results.count(True)
    print(f"{passed} passed, {len(results) - passed} failed in 0.0s")
    sys.exit(0 if all(results) else 1)
    """
)


WSGI_CHECK = textwrap.dedent(
    """
    import asyncore, sys, threading, time, urllib.request
    from wsgiref.simple_server import demo_app
    from asyncore_wsgi import make_server

    server = make_server("127.0.0.1", 0, demo_app)
    url = "http://127.0.0.1:%d/" % server.server_port
    results = []

    def fetch(path):
        with urllib.request.urlopen(url + path, timeout=10) as reply:
            body = reply.read()
        results.append((reply.status, body.startswith(b"Hello world!"), path.encode() in body))

    def clients():
        for i in range(5):
            fetch("seq%d" % i)
        threads = [threading.Thread(target=fetch, args=("par%d" % i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    client = threading.Thread(target=clients)
    client.start()
    deadline = time.monotonic() + 30
    while client.is_alive() and time.monotonic() < deadline:
        server.poll_once(0.05)
    client.join(5)
    server.close()
    ok = [r == (200, True, True) for r in results]
    print("responses:", len(results), asyncore.__name__)
    print(f"{ok.count(True)} passed, {13 - ok.count(True)} failed in 0.0s")
    sys.exit(0 if ok.count(True) == 13 else 1)
    """
)


def run(argv, cwd=None, env=None, timeout=SUITE_TIMEOUT_S):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def make_venv(python, where):
    subprocess.run([python, "-m", "venv", where], check=True)
    return os.path.join(where, "bin", "python")


def pip(py, *args):
    code, out = run([py, "-m", "pip", "install", "-q", *args])
    if code:
        raise SystemExit(f"pip install {' '.join(args)} failed:\n{out[-3000:]}")


def fetch_sdist(py, requirement, work):
    """Unpack ``requirement``'s source distribution (its tests) under ``work``."""
    dest = os.path.join(work, "sdists")
    code, out = run([py, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                     requirement, "-d", dest])
    if code:
        raise SystemExit(f"pip download {requirement} failed:\n{out[-3000:]}")
    name = requirement.split("==")[0].lower()
    for entry in os.listdir(dest):
        if entry.lower().startswith(name) and entry.endswith(".tar.gz"):
            with tarfile.open(os.path.join(dest, entry)) as tar:
                root = tar.getnames()[0].split("/")[0]
                target = os.path.join(work, "src")
                if not os.path.isdir(os.path.join(target, root)):
                    tar.extractall(target)
                return os.path.join(target, root)
    raise SystemExit(f"no source distribution of {requirement} in {dest}")


def counts(output):
    """passed/failed/errors/skipped from the last summary line in ``output``.

    pytest's ends ``in 1.23s``, and so does the pyinotify check's.
    """
    summary = ""
    for line in output.splitlines():
        if re.search(r"\d+ (passed|failed)", line) and re.search(r" in [\d.]+s", line):
            summary = line
    found = {}
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary):
        found["errors" if word.startswith("error") else word] = int(number)
    return found


def which_asyncore(cmd, env, cwd):
    code, out = run(cmd, env=env, cwd=cwd, timeout=60)
    return " ".join(line.split()[1] for line in out.splitlines()
                    if line.startswith(("ASYNCORE", "ASYNCHAT"))) or out[-300:]


def run_app(app, py, work, pike_env, plain_env):
    rows = []
    if app == "pyftpdlib":
        src = fetch_sdist(py, PINS[app], work)
        # The suite's own options (instafail, xdist) stay; one process, a
        # time limit per test, no cache files in the tree.
        suite = ["-m", "pytest", "-p", "no:cacheprovider", "-p", "timeout",
                 f"--timeout={TEST_TIMEOUT_S}", "-n", "0", "tests"]
        cwd = src
    else:
        script = os.path.join(work, f"{app}_check.py")
        with open(script, "w") as fh:
            fh.write(INOTIFY_CHECK if app == "pyinotify" else WSGI_CHECK)
        suite = [script]
        cwd = work
    probe = os.path.join(work, "which_asyncore.py")
    with open(probe, "w") as fh:
        fh.write(f"import {app}\n" + WHICH_ASYNCORE)
    for label, prefix, env in (("pyasyncore", [py], plain_env),
                               ("pike", [py, "-m", "pike.compat"], pike_env),
                               ("pike-site", [py], pike_env)):
        if label == "pike-site":
            # The environment-wide way: the import hook in site-packages,
            # the program started as usual.
            run([py, "-m", "pike.compat", "--enable-site"], env=env, timeout=60)
        try:
            modules = which_asyncore(prefix + [probe], env, cwd)
            code, out = run(prefix + suite, cwd=cwd, env=env)
        except subprocess.TimeoutExpired:
            code, out = -1, "timed out"
        finally:
            if label == "pike-site":
                run([py, "-m", "pike.compat", "--disable-site"], env=env, timeout=60)
        with open(os.path.join(work, f"{app}-{label}.log"), "w") as fh:
            fh.write(out)
        rows.append({"app": app, "modules": label, "exit": code,
                     "asyncore": modules, **counts(out)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", required=True,
                        help="an interpreter (3.12+) to test on; repeat for more")
    parser.add_argument("--work", help="throwaway directory (default: a new temporary one)")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    work_root = args.work or tempfile.mkdtemp(prefix="pike-compat-apps-")
    results = []
    try:
        for python in args.python:
            code, version = run([python, "-c", "import sys; print(sys.version.split()[0])"])
            version = version.strip()
            work = os.path.join(work_root, "py" + version)
            os.makedirs(work, exist_ok=True)
            py = make_venv(python, os.path.join(work, "venv"))
            apps = args.apps.split(",")
            # pyasyncore / pyasynchat explicitly: asyncore-wsgi and pyinotify
            # do not ask for them, and fail on 3.12+ without them.
            pip(py, "pytest", "pytest-timeout", "pytest-instafail", "pytest-xdist", "psutil",
                "pyopenssl", "cffi", "pyasyncore", "pyasynchat", *(PINS[app] for app in apps))
            plain_env = dict(os.environ)
            plain_env.pop("PYTHONPATH", None)
            pike_env = dict(plain_env, PYTHONPATH=REPO)
            for app in apps:
                for row in run_app(app, py, work, pike_env, plain_env):
                    row["python"] = version
                    results.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work_root, ignore_errors=True)
    print()
    print(f"{'application':12} {'python':8} {'modules':10} {'passed':>7} {'failed':>7} "
          f"{'errors':>7} {'skipped':>8}  asyncore/asynchat used")
    for r in results:
        print(f"{r['app']:12} {r['python']:8} {r['modules']:10} {r.get('passed', 0):7} "
              f"{r.get('failed', 0):7} {r.get('errors', 0):7} {r.get('skipped', 0):8}  "
              f"{r['asyncore']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
