"""Answer ``import asyncore`` / ``import asynchat`` with pike's modules.

``python -m pike.compat --enable-site`` copies this file into an
environment's site-packages as ``pike_compat_hook.py``, beside a
``pike-compat.pth`` that imports it at interpreter start. It imports nothing
of pike until a program imports ``asyncore`` or ``asynchat``, so start-up
stays as quick as before; then the name resolves to ``pike.compat``'s
module (one module object under both names), ahead of the pyasyncore /
pyasynchat packages and of the standard library's modules.
"""

import importlib
import importlib.abc
import importlib.util
import sys

HOOK_MODULE = "pike_compat_hook"
PTH_FILE = "pike-compat.pth"
TARGETS = {"asyncore": "pike.compat.asyncore", "asynchat": "pike.compat.asynchat"}


class _Alias(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        # The module itself, not a copy: pike.compat.asyncore and asyncore
        # share socket_map and everything else.
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass  # already executed under its own name


class PikeCompatFinder(importlib.abc.MetaPathFinder):
    """A finder that maps the legacy names onto pike.compat."""

    _pike_compat_finder = True

    def find_spec(self, fullname, path=None, target=None):
        if path is None and fullname in TARGETS:
            return importlib.util.spec_from_loader(fullname, _Alias(TARGETS[fullname]))
        return None


def install():
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(getattr(f, "_pike_compat_finder", False) for f in sys.meta_path):
        sys.meta_path.insert(0, PikeCompatFinder())


def uninstall():
    """Take the finder off ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_pike_compat_finder", False)]


if __name__ == HOOK_MODULE:  # imported by the .pth file, not as part of pike
    install()
