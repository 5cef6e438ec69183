#!/usr/bin/env python3
"""Run CPython's own asyncore test-suite against pike.compat.asyncore.

Usage::

    PYTHONPATH=. python scripts/run_cpython_asyncore.py [-v]
        [--python PATH ...] [--test-file PATH] [--modes fast,plain]
        [--no-baseline] [--no-shims] [--timeout SECONDS]

For every Python 3.9 to 3.13 that pyenv has (or each ``--python`` given),
in one subprocess per run, the script puts ``pike.compat.asyncore`` into
``sys.modules["asyncore"]`` and then imports and runs the test module, so
the suite's ``import asyncore`` gets pike's module (checked).

Suites:

* ``3.11`` -- CPython 3.11's ``test_asyncore.py`` (found under pyenv's 3.11,
  or the running interpreter's own when it is 3.11; ``--test-file`` names
  another), on every version. 3.12 and 3.13 no longer ship asyncore nor its
  tests, so this is the suite that shows pike's module there.
* ``own`` -- the interpreter's own ``test_asyncore.py`` where it has one
  (3.9, 3.10, 3.11).

Modes: ``fast`` runs pike's module as it is (``loop()`` on its epoll fast
path); ``plain`` sets ``PIKE_ASYNCORE_FAST=0`` so ``loop()`` always takes
the original ``select()`` / ``poll()`` path. Unless ``--no-baseline``, each
suite also runs against the interpreter's own standard ``asyncore`` where
there is one, so the report shows what the standard library itself passes.

3.11's test file needs ``test.support`` helpers that 3.9 and 3.10 lack or
keep elsewhere (``os_helper``, ``threading_helper``,
``requires_working_socket``, ``warnings_helper.import_deprecated``). The
child makes each missing one from the version's own equivalent and lists
it in the report; with ``--no-shims`` (or when there is no equivalent) the
suite is skipped with the reason instead.

Prints ``passed/total`` per version, suite and module, and exits non-zero
when a run against pike's module had a failure or an error (or could not
run at all).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MINORS = ("3.9", "3.10", "3.11", "3.12", "3.13")
MARK = "RUN-CPYTHON-ASYNCORE-RESULT: "


# -- finding Pythons and the test file ---------------------------------------


def pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root and os.path.isdir(root):
        return root
    try:
        out = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0 and os.path.isdir(out.stdout.strip()):
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    guess = os.path.expanduser("~/.pyenv")
    return guess if os.path.isdir(guess) else None


def _version_key(name):
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", name))


def pyenv_pythons():
    """``{"3.11": path, ...}``: the newest pyenv CPython of each wanted minor."""
    root = pyenv_root()
    found = {}
    if root is None:
        return found
    for minor in MINORS:
        candidates = []
        for vdir in glob.glob(os.path.join(root, "versions", minor + ".*")):
            name = os.path.basename(vdir)
            if not re.fullmatch(re.escape(minor) + r"\.\d+", name):
                continue  # skips 3.13.0t, dev builds and the like
            exe = os.path.join(vdir, "bin", "python" + minor)
            if not os.path.exists(exe):
                exe = os.path.join(vdir, "bin", "python3")
            if os.path.exists(exe):
                candidates.append((_version_key(name), exe))
        if candidates:
            found[minor] = max(candidates)[1]
    return found


def find_311_test_file(pythons):
    """3.11's test_asyncore.py: the running 3.11's own, else pyenv's."""
    if sys.version_info[:2] == (3, 11):
        import sysconfig

        path = os.path.join(sysconfig.get_paths()["stdlib"], "test", "test_asyncore.py")
        if os.path.exists(path):
            return path
    exe = pythons.get("3.11")
    if exe:
        out = subprocess.run(
            [exe, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        path = os.path.join(out.stdout.strip(), "test", "test_asyncore.py")
        if out.returncode == 0 and os.path.exists(path):
            return path
    root = pyenv_root()
    if root:
        hits = sorted(
            glob.glob(os.path.join(root, "versions", "3.11.*", "lib", "python3.11",
                                   "test", "test_asyncore.py")),
            key=lambda p: _version_key(p.split(os.sep)[-5]),
        )
        if hits:
            return hits[-1]
    return None


# -- the child: one suite, one module, one interpreter -------------------------


class _Skip(Exception):
    pass


def _make_shims(allow):
    """Give test.support what 3.11's test file uses; return what was made."""
    import importlib
    import types
    import unittest
    import warnings

    import test.support as support

    made = []

    def need(what):
        if not allow:
            raise _Skip("this Python's test.support lacks %s (shims disabled)" % what)
        made.append(what)

    if not hasattr(support, "requires_working_socket"):
        need("support.requires_working_socket")

        def requires_working_socket(*, module=False):
            try:
                import socket

                socket.socket().close()
            except OSError as exc:
                reason = "no working socket: %s" % exc
                if module:
                    raise unittest.SkipTest(reason)
                return unittest.skip(reason)
            return (lambda f: f) if not module else None

        support.requires_working_socket = requires_working_socket

    def ensure_submodule(name, attrs):
        full = "test.support." + name
        try:
            module = importlib.import_module(full)
        except ImportError:
            module = None
        missing = [a for a in attrs if module is None or not hasattr(module, a)]
        if not missing:
            return
        for attr in missing:
            if not hasattr(support, attr):
                raise _Skip("this Python's test.support has no %s.%s nor an "
                            "equivalent" % (name, attr))
        need("%s (%s)" % (full, ", ".join(missing)) if module else full)
        if module is None:
            module = types.ModuleType(full)
            sys.modules[full] = module
            setattr(support, name, module)
        for attr in missing:
            setattr(module, attr, getattr(support, attr))

    ensure_submodule("os_helper", ["TESTFN", "unlink"])
    ensure_submodule("threading_helper", ["reap_threads", "join_thread"])
    ensure_submodule("socket_helper", ["bind_port", "HOST", "HOSTv6",
                                       "IPV6_ENABLED", "bind_unix_socket"])
    ensure_submodule("warnings_helper", ["check_warnings"])
    from test.support import warnings_helper

    if not hasattr(warnings_helper, "import_deprecated"):
        need("warnings_helper.import_deprecated")

        def import_deprecated(name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return importlib.import_module(name)

        warnings_helper.import_deprecated = import_deprecated
    for attr in ("PGO", "captured_stdout", "captured_stderr", "gc_collect"):
        if not hasattr(support, attr):
            raise _Skip("this Python's test.support has no %s" % attr)
    return made


def child(args):
    import importlib.util
    import unittest
    import warnings

    result, report = child_record(args, MARK)

    import test.support

    test.support.verbose = args.verbose > 1
    if args.suite == "3.11" and sys.version_info[:2] != (3, 11):
        try:
            result["shims"] = _make_shims(not args.no_shims)
        except _Skip as exc:
            report(status="skipped", reason=str(exc))
            return 0

    if args.module == "pike":
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        import pike.compat.asyncore as module

        sys.modules["asyncore"] = module
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import asyncore as module
            except ImportError:
                report(status="skipped", reason="this Python has no asyncore")
                return 0
    result["asyncore_file"] = getattr(module, "__file__", None)
    if args.module == "pike":
        result["fast_path"] = bool(module._FAST_PATH and module._MapEngine is not None)

    name = "test_asyncore"
    spec = importlib.util.spec_from_file_location(name, args.test_file)
    tests = importlib.util.module_from_spec(spec)
    sys.modules[name] = tests
    try:
        spec.loader.exec_module(tests)
    except unittest.SkipTest as exc:
        report(status="skipped", reason="module skipped: %s" % exc)
        return 0
    if getattr(tests, "asyncore", None) is not module:
        report(status="error", reason="the test module did not import the wanted asyncore")
        return 2

    return run_tests(tests, args, report)


def child_record(args, mark):
    """A child's result record and ``report(**fields)``, which prints it
    (after ``mark``) for the parent to find among the test output."""
    result = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "suite": args.suite,
        "module": args.module,
        "test_file": args.test_file,
        "shims": [],
    }

    def report(**fields):
        result.update(fields)
        sys.stdout.flush()
        print(mark + json.dumps(result), flush=True)

    return result, report


def run_tests(tests, args, report):
    """Run the loaded test module ``tests``; report the counts; exit status."""
    import unittest

    suite = unittest.defaultTestLoader.loadTestsFromModule(tests)
    all_ids = set(t.id() for t in suite_ids(suite))  # the run empties the suite
    runner = unittest.TextTestRunner(verbosity=max(args.verbose, 1), stream=sys.stderr)
    started = time.monotonic()
    outcome = runner.run(suite)
    bad = [t.id() for t, _ in outcome.failures + outcome.errors]
    bad += [t.id() for t in outcome.unexpectedSuccesses]
    skipped = len(outcome.skipped)
    total = outcome.testsRun
    passed = total - skipped - len(bad) - len(outcome.expectedFailures)
    passed_ids = sorted(all_ids - set(bad) - set(t.id() for t, _ in outcome.skipped))
    report(status="ran", total=total, passed=passed, skipped=skipped,
           failed=sorted(bad), passed_ids=passed_ids,
           seconds=round(time.monotonic() - started, 2))
    return 0 if not bad else 1


def suite_ids(suite):
    for item in suite:
        if hasattr(item, "__iter__"):
            yield from suite_ids(item)
        else:
            yield item


# -- the parent ------------------------------------------------------------------


def run_child(exe, suite, test_file, module, mode, args):
    env = child_env()
    env.pop("PIKE_ASYNCORE_FAST", None)
    if mode == "plain":
        env["PIKE_ASYNCORE_FAST"] = "0"
    return spawn_child(exe, os.path.abspath(__file__), MARK, env, args,
                       ["--suite", suite, "--module", module, "--test-file", test_file])


def child_env():
    """The environment of a child: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn_child(exe, script, mark, env, args, child_args):
    """Run ``script --child child_args`` under ``exe``; its result record."""
    cmd = [exe, script, "--child"] + child_args
    cmd += ["-v"] * args.verbose
    if args.no_shims:
        cmd.append("--no-shims")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=args.timeout, cwd=_scratch_dir())
    except subprocess.TimeoutExpired as exc:
        log = exc.stderr or ""
        if isinstance(log, bytes):
            log = log.decode("utf-8", "replace")
        return {"status": "error", "reason": "timed out after %ss" % args.timeout,
                "log": log[-6000:]}
    found = None
    for line in proc.stdout.splitlines():
        if line.startswith(mark):
            found = json.loads(line[len(mark):])
    if found is None:
        found = {"status": "error",
                 "reason": "child exited %s without a result" % proc.returncode}
    found["log"] = proc.stderr
    found["returncode"] = proc.returncode
    return found


_SCRATCH = None


def _scratch_dir():
    # The suite writes TESTFN files in the current directory: keep them
    # out of the repository.
    global _SCRATCH
    if _SCRATCH is None:
        import atexit
        import shutil
        import tempfile

        _SCRATCH = tempfile.mkdtemp(prefix="pike-cpython-asyncore-")
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def describe(result):
    if result["status"] == "ran":
        text = "%d/%d passed" % (result["passed"], result["total"])
        if result["skipped"]:
            text += ", %d skipped" % result["skipped"]
        if result["failed"]:
            text += ", %d FAILED" % len(result["failed"])
        return text
    return "%s: %s" % (result["status"].upper(), result.get("reason", ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--python", action="append", metavar="PATH",
                        help="run under this interpreter (repeatable); "
                             "default: every pyenv CPython 3.9-3.13")
    parser.add_argument("--test-file", help="3.11's test_asyncore.py (default: found)")
    parser.add_argument("--modes", default="fast,plain",
                        help="pike modes to run: fast, plain or both (default)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the standard library's asyncore for comparison")
    parser.add_argument("--no-shims", action="store_true",
                        help="skip 3.11's suite where test.support lacks a helper")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed per run (default 600)")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suite", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("fast", "plain") for m in modes):
        parser.error("--modes takes fast, plain or fast,plain")
    pythons = pyenv_pythons()
    chosen = choose_pythons(args.python, pythons, parser)
    if not chosen:
        return 2
    test_311 = args.test_file or find_311_test_file(pythons)
    if not test_311 or not os.path.exists(test_311):
        print("CPython 3.11's test_asyncore.py was not found; use --test-file")
        return 2

    print("3.11 suite: %s" % test_311)
    print("pike: %s" % ROOT)
    results = []
    failed = False
    for minor, exe in chosen:
        own = subprocess.run(
            [exe, "-c", "import sysconfig, os; p = os.path.join(sysconfig.get_paths()"
                        "['stdlib'], 'test', 'test_asyncore.py'); print(p if "
                        "os.path.exists(p) else '')"],
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        suites = [("3.11", test_311)]
        if own and os.path.realpath(own) != os.path.realpath(test_311):
            suites.append(("own", own))
        print("\nPython %s (%s)" % (minor, exe))
        for suite, path in suites:
            runs = [("pike", mode) for mode in modes]
            if not args.no_baseline:
                runs.append(("stdlib", "-"))
            baseline_ids = None
            for module, mode in runs:
                result = run_child(exe, suite, path, module, mode, args)
                result.update(minor=minor, exe=exe, mode=mode)
                results.append(result)
                label = ("pike.compat.asyncore (%s)" % mode if module == "pike"
                         else "stdlib asyncore")
                line = "  suite %-4s %-30s %s" % (suite, label, describe(result))
                if result.get("shims"):
                    line += "  [shims: %s]" % "; ".join(result["shims"])
                print(line, flush=True)
                if module == "stdlib" and result["status"] == "ran":
                    baseline_ids = set(result["passed_ids"])
                if module == "pike" and result["status"] not in ("ran", "skipped"):
                    failed = True
                if module == "pike" and result["status"] == "ran" and result["failed"]:
                    failed = True
                    for test_id in result["failed"]:
                        print("      FAILED %s" % test_id)
                if (args.verbose or (module == "pike" and result["status"] == "error")
                        or (module == "pike" and result.get("failed"))):
                    print(_indent(result.get("log", "")[-6000:]))
            if baseline_ids is not None:
                for result in results[-len(runs):]:
                    if result.get("passed_ids") is not None and result["mode"] != "-":
                        lost = baseline_ids - set(result["passed_ids"])
                        if lost:
                            failed = True
                            print("      %s: %d test(s) the stdlib passes do not pass: %s"
                                  % (result["mode"], len(lost), ", ".join(sorted(lost))))
    if args.json:
        write_results(results, args.json)
    print("\n%s" % ("FAILURES against pike.compat.asyncore" if failed else
                    "all runs against pike.compat.asyncore passed"))
    return 1 if failed else 0


def choose_pythons(paths, pythons, parser):
    """``[(minor, exe)]``: each of ``paths``, else every pyenv Python found."""
    if paths:
        chosen = []
        for exe in paths:
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                parser.error("cannot run %s" % exe)
            chosen.append((out.stdout.strip(), exe))
        return chosen
    chosen = sorted(pythons.items(), key=lambda kv: _version_key(kv[0]))
    if not chosen:
        print("no Python 3.9-3.13 found (pyenv root: %s); use --python" % pyenv_root())
    return chosen


def write_results(results, path):
    """The results as JSON, without the children's logs."""
    with open(path, "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "log"} for r in results], f, indent=2)


def _indent(text):
    return "\n".join("      | " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
