#!/usr/bin/env python3
"""Run CPython 3.11's test_asynchat and test_smtpd against pike.compat.asynchat.

Usage::

    PYTHONPATH=. python scripts/run_cpython_asynchat.py [-v]
        [--python PATH ...] [--suites asynchat,smtpd] [--no-baseline]
        [--no-shims] [--timeout SECONDS] [--json FILE]

For every Python 3.9 to 3.13 that pyenv has (or each ``--python`` given),
one subprocess per run puts ``pike.compat.asyncore`` and
``pike.compat.asynchat`` into ``sys.modules`` as ``asyncore`` and
``asynchat``, then loads the test module from CPython 3.11's installation
(found at run time under pyenv, never copied into the repository) and runs
it. The script checks that the suite got pike's modules.

Suites (both 3.11's files, on every version):

* ``asynchat`` -- ``test_asynchat.py``.
* ``smtpd`` -- ``test_smtpd.py``; ``smtpd`` is built on asynchat. 3.12 and
  3.13 no longer ship ``smtpd``: there the module is loaded from 3.11's
  ``smtpd.py`` in the local 3.11 installation, after pike's modules are in
  place (its import-time "slated for removal" check is told it runs on
  3.11, as it would refuse to load on 3.12+). 3.9 - 3.11 use their own.

Unless ``--no-baseline``, each suite also runs against the interpreter's
own standard ``asyncore`` / ``asynchat`` where there are some (3.9 - 3.11),
and a test the standard library passes that pike's modules do not is
reported as a failure. 3.11's test files need a few ``test.support``
helpers 3.9 / 3.10 lack; they are made as in ``run_cpython_asyncore.py``
and listed in the report.

Prints ``passed/total`` per version, suite and module, and exits non-zero
when a run against pike's modules had a failure or an error.
"""

import argparse
import importlib.util
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARK = "RUN-CPYTHON-ASYNCHAT-RESULT: "
SUITES = ("asynchat", "smtpd")


def _load_asyncore_runner():
    """The helpers of run_cpython_asyncore.py (pyenv lookup, shims)."""
    path = os.path.join(HERE, "run_cpython_asyncore.py")
    spec = importlib.util.spec_from_file_location("_pike_run_cpython_asyncore", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_base = _load_asyncore_runner()


def stdlib_311(pythons):
    """The 3.11 installation's standard library directory, or None."""
    if sys.version_info[:2] == (3, 11):
        import sysconfig

        return sysconfig.get_paths()["stdlib"]
    exe = pythons.get("3.11")
    if not exe:
        return None
    out = subprocess.run(
        [exe, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True, text=True, timeout=60,
    )
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isdir(path) else None


# -- the child ------------------------------------------------------------------


def _load_source(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load_311_smtpd(path):
    """Load 3.11's smtpd.py as ``smtpd`` on a Python that has none."""
    import warnings

    original = getattr(warnings, "_deprecated", None)

    def deprecated(name, message=None, *, remove, _version=None):
        # The 3.11 file asks to be removed in 3.12; it is loaded here on
        # purpose, so only warn as 3.11 would.
        if original is not None and message is not None:
            return original(name, message, remove=remove, _version=(3, 11, 0, "final", 0))
        if original is not None:
            return original(name, remove=remove, _version=(3, 11, 0, "final", 0))
        return None

    warnings._deprecated = deprecated
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _load_source("smtpd", path)
    finally:
        if original is None:
            del warnings._deprecated
        else:
            warnings._deprecated = original


def _extra_shims(allow):
    """What 3.11's test_asynchat / test_smtpd use beyond the asyncore shims."""
    import socket

    import test.support as support
    from test.support import socket_helper, threading_helper

    made = []
    for attr in ("threading_setup", "threading_cleanup"):
        if not hasattr(threading_helper, attr):
            if not allow or not hasattr(support, attr):
                raise _base._Skip("test.support has no threading_helper.%s" % attr)
            setattr(threading_helper, attr, getattr(support, attr))
            made.append("threading_helper.%s" % attr)
    if not hasattr(socket_helper, "has_gethostname"):
        if not allow:
            raise _base._Skip("test.support has no socket_helper.has_gethostname")
        try:
            socket.gethostname()
            socket_helper.has_gethostname = True
        except OSError:
            socket_helper.has_gethostname = False
        made.append("socket_helper.has_gethostname")
    return made


def child(args):
    import unittest
    import warnings

    result, report = _base.child_record(args, MARK)

    import test.support

    test.support.verbose = args.verbose > 1
    if sys.version_info[:2] != (3, 11):
        try:
            result["shims"] = _base._make_shims(not args.no_shims)
            result["shims"] += _extra_shims(not args.no_shims)
        except _base._Skip as exc:
            report(status="skipped", reason=str(exc))
            return 0

    if args.module == "pike":
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        import pike.compat.asynchat as chat_module
        import pike.compat.asyncore as core_module

        sys.modules["asyncore"] = core_module
        sys.modules["asynchat"] = chat_module
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import asynchat as chat_module
                import asyncore as core_module
            except ImportError:
                report(status="skipped", reason="this Python has no asynchat")
                return 0
    result["asynchat_file"] = getattr(chat_module, "__file__", None)

    if args.suite == "smtpd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import smtpd  # noqa: F401 - the interpreter's own (<= 3.11)
                result["smtpd_file"] = smtpd.__file__
            except ImportError:
                if not args.smtpd_file:
                    report(status="skipped", reason="no smtpd here nor a 3.11 smtpd.py")
                    return 0
                smtpd = _load_311_smtpd(args.smtpd_file)
                result["smtpd_file"] = args.smtpd_file
        if smtpd.asynchat is not chat_module or smtpd.asyncore is not core_module:
            report(status="error", reason="smtpd did not import the wanted modules")
            return 2

    name = "test_" + args.suite
    spec = importlib.util.spec_from_file_location(name, args.test_file)
    tests = importlib.util.module_from_spec(spec)
    sys.modules[name] = tests
    try:
        spec.loader.exec_module(tests)
    except unittest.SkipTest as exc:
        report(status="skipped", reason="module skipped: %s" % exc)
        return 0
    if getattr(tests, "asyncore", None) is not core_module or (
        args.suite == "asynchat" and tests.asynchat is not chat_module
    ):
        report(status="error", reason="the test module did not import the wanted modules")
        return 2

    return _base.run_tests(tests, args, report)


# -- the parent --------------------------------------------------------------------


def run_child(exe, suite, test_file, smtpd_file, module, args):
    child_args = ["--suite", suite, "--module", module, "--test-file", test_file]
    if smtpd_file:
        child_args += ["--smtpd-file", smtpd_file]
    return _base.spawn_child(exe, os.path.abspath(__file__), MARK, _base.child_env(),
                             args, child_args)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--python", action="append", metavar="PATH",
                        help="run under this interpreter (repeatable); "
                             "default: every pyenv CPython 3.9-3.13")
    parser.add_argument("--suites", default=",".join(SUITES),
                        help="asynchat, smtpd or both (default)")
    parser.add_argument("--stdlib-311", metavar="DIR",
                        help="3.11's standard library directory (default: found)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the standard library's modules for comparison")
    parser.add_argument("--no-shims", action="store_true",
                        help="skip where test.support lacks a helper 3.11's tests use")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed per run (default 600)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    parser.add_argument("--test-file", help=argparse.SUPPRESS)
    parser.add_argument("--smtpd-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    if not suites or any(s not in SUITES for s in suites):
        parser.error("--suites takes asynchat, smtpd or asynchat,smtpd")
    pythons = _base.pyenv_pythons()
    chosen = _base.choose_pythons(args.python, pythons, parser)
    if not chosen:
        return 2
    lib = args.stdlib_311 or stdlib_311(pythons)
    if not lib:
        print("CPython 3.11's standard library was not found; use --stdlib-311")
        return 2
    files = {s: os.path.join(lib, "test", "test_%s.py" % s) for s in suites}
    smtpd_file = os.path.join(lib, "smtpd.py")
    for path in list(files.values()) + [smtpd_file]:
        if not os.path.exists(path):
            print("missing %s" % path)
            return 2

    print("3.11 library: %s" % lib)
    print("pike: %s" % ROOT)
    results = []
    failed = False
    for minor, exe in chosen:
        print("\nPython %s (%s)" % (minor, exe))
        for suite in suites:
            runs = ["pike"] + ([] if args.no_baseline else ["stdlib"])
            baseline_ids = None
            pike_result = None
            for module in runs:
                result = run_child(exe, suite, files[suite],
                                   smtpd_file if suite == "smtpd" else None, module, args)
                result.update(minor=minor, exe=exe)
                results.append(result)
                label = "pike.compat" if module == "pike" else "stdlib"
                line = "  test_%-9s %-12s %s" % (suite, label, _base.describe(result))
                if result.get("shims"):
                    line += "  [shims: %s]" % "; ".join(result["shims"])
                if suite == "smtpd" and result.get("smtpd_file"):
                    line += "  [smtpd: %s]" % result["smtpd_file"]
                print(line, flush=True)
                if module == "pike":
                    pike_result = result
                    if result["status"] not in ("ran", "skipped") or result.get("failed"):
                        for test_id in result.get("failed", ()):
                            print("      FAILED %s" % test_id)
                        print(_base._indent(result.get("log", "")[-6000:]))
                    elif args.verbose:
                        print(_base._indent(result.get("log", "")[-6000:]))
                elif result["status"] == "ran":
                    baseline_ids = set(result["passed_ids"])
            # pike fails a suite when it errs, or loses a test the standard
            # library passes on this Python; with no standard library to
            # compare with (3.12+), when any test fails.
            if pike_result["status"] not in ("ran", "skipped"):
                failed = True
            elif baseline_ids is not None and pike_result.get("passed_ids") is not None:
                lost = baseline_ids - set(pike_result["passed_ids"])
                if lost:
                    failed = True
                    print("      %d test(s) the stdlib passes do not pass: %s"
                          % (len(lost), ", ".join(sorted(lost))))
                elif pike_result.get("failed"):
                    print("      (the standard library fails the same test(s) here)")
            elif pike_result.get("failed"):
                failed = True
    if args.json:
        _base.write_results(results, args.json)
    print("\n%s" % ("FAILURES against pike.compat" if failed else
                    "all runs against pike.compat.asynchat passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
