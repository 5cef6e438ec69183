#!/usr/bin/env python3
"""Run one of CPython's own test modules against pike's socketserver.

Usage::

    PYTHONPATH=. python scripts/run_cpython_suite.py [TEST_MODULE] [-v]
    PYTHONPATH=. python scripts/run_cpython_suite.py --all-pythons

``TEST_MODULE`` (default ``test_socketserver``) is imported from the running
interpreter's own ``test`` package, after ``pike/server/socketserver.py`` was
loaded under the module name ``socketserver`` and put in ``sys.modules`` in
place of the standard library's module. The test module's ``import
socketserver`` therefore gets pike's code; the script checks that it did.

pike's file is loaded under that name (rather than aliasing the module object
``pike.server.socketserver``) so that the classes it defines say
``__module__ == "socketserver"``, as the suite's ``__all__`` check expects of
the module it tests; the code run is the same file.

The script prints ``passed/total`` (with skips, which only the test module's
own ``skipUnless``/``requires`` decorators produce) and exits non-zero when a
test failed or errored. ``--all-pythons`` runs the same in each pyenv Python
3.11, 3.12 and 3.13 that has the test module, one subprocess each, bounded by
``--timeout`` seconds.

``--compat`` tests ``pike.compat.socketserver`` instead: the face that
``pike.compat.install(socketserver=True)`` puts in ``sys.modules``, which is
what the suite then imports.
"""

import argparse
import faulthandler
import glob
import importlib
import importlib.util
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODULE_FILE = os.path.join(ROOT, "pike", "server", "socketserver.py")
VERSIONS = ("3.11", "3.12", "3.13")


def inject(name="socketserver", path=MODULE_FILE):
    """Load pike's module from ``path`` as ``name`` and install it in sys.modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def inject_compat():
    """Install pike.compat.socketserver as ``socketserver``, as an application would."""
    import pike.compat

    return pike.compat.install(socketserver=True)["socketserver"]


def run_one(test_module, verbosity, compat=False):
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # pike itself must be importable
    module = inject_compat() if compat else inject()
    import test.support

    # Outside regrtest the suite's own chatter is on; follow -v instead.
    test.support.verbose = verbosity > 1
    tests = importlib.import_module(f"test.{test_module}")
    # A module that imports socketserver itself must have got pike's; others
    # (test_httpservers, test_logging...) reach it through stdlib modules.
    if "socketserver" in vars(tests) and tests.socketserver is not module:
        print(f"error: test.{test_module} did not import pike's module", file=sys.stderr)
        return 2
    if sys.modules.get("socketserver") is not module:
        print("error: the standard library's socketserver was imported", file=sys.stderr)
        return 2
    suite = unittest.defaultTestLoader.loadTestsFromModule(tests)
    runner = unittest.TextTestRunner(verbosity=verbosity, stream=sys.stdout)
    result = runner.run(suite)
    total = result.testsRun
    skipped = len(result.skipped)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = total - skipped - bad - len(result.expectedFailures)
    version = "%d.%d.%d" % sys.version_info[:3]
    print(
        f"python {version}: test.{test_module} against {module.__file__}: "
        f"{passed}/{total} passed, {skipped} skipped, {bad} failed"
    )
    return 0 if bad == 0 and total > 0 else 1


def _interpreters():
    try:
        root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        root = os.path.expanduser("~/.pyenv")
    found = []
    for version in VERSIONS:
        candidates = sorted(glob.glob(os.path.join(root, "versions", version + ".*")))
        for directory in reversed(candidates):  # the newest patch release
            python = os.path.join(directory, "bin", "python")
            if os.path.exists(python):
                found.append((version, python))
                break
    return found


def run_all(test_module, verbosity, timeout, compat=False):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    status = 0
    summary = []
    for version, python in _interpreters():
        has_test = subprocess.run(
            [python, "-c", f"import importlib.util as u; "
             f"raise SystemExit(u.find_spec('test.{test_module}') is None)"],
            timeout=60,
        ).returncode == 0
        if not has_test:
            summary.append(f"python {version}: test.{test_module} not installed, skipped")
            continue
        command = [python, os.path.abspath(__file__), test_module, "-v" * (verbosity > 1)]
        command = [c for c in command if c]
        if compat:
            command.append("--compat")
        try:
            proc = subprocess.run(
                command, env=env, timeout=timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            summary.append(f"python {version}: timed out after {timeout}s")
            status = 1
            continue
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        last = [line for line in proc.stdout.splitlines() if line.startswith("python ")]
        summary.append(last[-1] if last else f"python {version}: exit {proc.returncode}")
        if proc.returncode:
            status = 1
    print()
    for line in summary:
        print(line)
    return status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_module", nargs="?", default="test_socketserver")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--all-pythons", action="store_true",
                        help="run in each pyenv Python 3.11, 3.12, 3.13")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a run may take before it is failed")
    parser.add_argument("--compat", action="store_true",
                        help="test pike.compat.socketserver (as installed by "
                             "pike.compat.install(socketserver=True))")
    args = parser.parse_args(argv)
    verbosity = 1 + args.verbose
    if args.all_pythons:
        return run_all(args.test_module, verbosity, args.timeout, args.compat)
    # A hung test must not hang the run: dump the stacks and exit.
    faulthandler.dump_traceback_later(args.timeout, exit=True)
    try:
        return run_one(args.test_module, verbosity, args.compat)
    finally:
        faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    sys.exit(main())
