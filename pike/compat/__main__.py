"""Run an unchanged legacy program on pike's asyncore and asynchat.

``python -m pike.compat [--socketserver] SCRIPT [args...]``
``python -m pike.compat [--socketserver] -m MODULE [args...]``

:func:`pike.compat.install` runs first, so every ``import asyncore`` /
``import asynchat`` of the program (and of the libraries it uses) gets
pike's modules, whether or not the standard library or the pyasyncore /
pyasynchat packages also have them. ``--socketserver`` replaces
``socketserver`` too. The program sees the ``sys.argv`` it would have seen
when run directly, and runs as ``__main__``.
"""

import os
import runpy
import sys

import pike.compat

USAGE = (
    "usage: python -m pike.compat [--socketserver] SCRIPT [args...]\n"
    "       python -m pike.compat [--socketserver] -m MODULE [args...]\n"
)


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    socketserver = False
    while args and args[0] == "--socketserver":
        socketserver = True
        args.pop(0)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n" + __doc__.split("\n\n", 2)[2])
        return 0 if args else 2
    module = None
    if args[0] == "-m":
        if len(args) < 2:
            sys.stderr.write(USAGE + "error: -m needs a module name\n")
            return 2
        module = args[1]
        args = args[1:]
    elif args[0].startswith("-"):
        sys.stderr.write(USAGE + f"error: unknown option {args[0]!r}\n")
        return 2
    pike.compat.install(socketserver=socketserver)
    sys.argv = args  # what the program would see run directly (argv[0] fixed by runpy)
    if module is not None:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = args[0]
        if not os.path.exists(script):
            sys.stderr.write(f"python -m pike.compat: can't open file {script!r}\n")
            return 2
        # As when the script runs directly: its directory comes first.
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
