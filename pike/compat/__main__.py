"""Run an unchanged legacy program on pike's asyncore and asynchat.

``python -m pike.compat [--socketserver] SCRIPT [args...]``
``python -m pike.compat [--socketserver] -m MODULE [args...]``
``python -m pike.compat --enable-site [DIR]`` / ``--disable-site [DIR]``

:func:`pike.compat.install` runs first, so every ``import asyncore`` /
``import asynchat`` of the program (and of the libraries it uses) gets
pike's modules, whether or not the standard library or the pyasyncore /
pyasynchat packages also have them. ``--socketserver`` replaces
``socketserver`` too. The program sees the ``sys.argv`` it would have seen
when run directly, and runs as ``__main__``.

``--enable-site`` makes every interpreter of an environment (its
site-packages, or ``DIR``) resolve ``asyncore`` / ``asynchat`` to pike's
modules, for programs started any other way (console scripts, test
runners): it writes a ``.pth`` file and a small import hook there, which
load nothing until the program imports one of the two names.
``--disable-site`` removes both.
"""

import os
import runpy
import sys

import pike.compat

USAGE = (
    "usage: python -m pike.compat [--socketserver] SCRIPT [args...]\n"
    "       python -m pike.compat [--socketserver] -m MODULE [args...]\n"
    "       python -m pike.compat --enable-site [DIR] | --disable-site [DIR]\n"
)


def _site_dir(args):
    import sysconfig

    return args[1] if len(args) > 1 else sysconfig.get_paths()["purelib"]


def enable_site(directory):
    """Install the import hook into ``directory``; returns the files written."""
    from pike.compat import _site_hook

    hook = os.path.join(directory, _site_hook.HOOK_MODULE + ".py")
    pth = os.path.join(directory, _site_hook.PTH_FILE)
    with open(_site_hook.__file__, "rb") as src, open(hook, "wb") as dst:
        dst.write(src.read())
    with open(pth, "w") as fh:
        fh.write(f"import {_site_hook.HOOK_MODULE}\n")
    return [pth, hook]


def disable_site(directory):
    """Remove what :func:`enable_site` wrote; returns the files removed."""
    from pike.compat import _site_hook

    removed = []
    for name in (_site_hook.PTH_FILE, _site_hook.HOOK_MODULE + ".py"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            os.remove(path)
            removed.append(path)
    return removed


def _error(message):
    """An argument error: one line on stderr, exit status 2."""
    sys.stderr.write(f"python -m pike.compat: error: {message} (see python -m pike.compat --help)\n")
    return 2


def _module_exists(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    socketserver = False
    while args and args[0] == "--socketserver":
        socketserver = True
        args.pop(0)
    if not args:
        return _error("a SCRIPT, -m MODULE, --enable-site or --disable-site is needed")
    if args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n" + __doc__.split("\n\n", 2)[2])
        return 0
    if args[0] in ("--enable-site", "--disable-site"):
        if len(args) > 2:
            return _error(f"{args[0]} takes at most one directory")
        directory = _site_dir(args)
        if not os.path.isdir(directory):
            return _error(f"no such directory {directory!r}")
        if args[0] == "--enable-site":
            done = enable_site(directory)
        else:
            done = disable_site(directory)
        verb = "wrote" if args[0] == "--enable-site" else "removed"
        for path in done:
            sys.stdout.write(f"{verb} {path}\n")
        return 0
    module = None
    if args[0] == "-m":
        if len(args) < 2:
            return _error("-m needs a module name")
        module = args[1]
        if not _module_exists(module):
            return _error(f"no module named {module!r}")
        args = args[1:]
    elif args[0].startswith("-"):
        return _error(f"unknown option {args[0]!r}")
    elif not os.path.exists(args[0]):
        return _error(f"can't open file {args[0]!r}")
    pike.compat.install(socketserver=socketserver)
    sys.argv = args  # what the program would see run directly (argv[0] fixed by runpy)
    if module is not None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = args[0]
        # As when the script runs directly: its directory comes first.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
