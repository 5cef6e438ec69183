"""Drop-in replacements for standard library modules built on pike.

``asyncore`` and ``asynchat`` left the standard library in Python 3.12.
:func:`install` makes ``import asyncore`` (and ``import asynchat``, and on
request ``import socketserver``) resolve to pike's modules, so a legacy
program runs unchanged after one line::

    import pike.compat; pike.compat.install()
    import asyncore   # pike.compat.asyncore

The replacement goes through ``sys.modules``: it affects imports made after
the call, not module objects imported before it. Importing this package
imports none of the replacement modules.

``python -m pike.compat SCRIPT`` (or ``-m MODULE``) does the same for a
program without editing it, and ``python -m pike.compat --enable-site``
for every program of an environment (see ``pike/compat/__main__.py``).
:func:`interest_changed` belongs to the scaling rules of pike's
``asyncore.loop()``, described in the docs' compat page.
"""

import importlib
import importlib.util
import sys

# sys.modules name -> pike module, in the order install() puts them in.
_MODULES = (
    ("asyncore", "pike.compat.asyncore"),
    ("asynchat", "pike.compat.asynchat"),
    ("socketserver", "pike.compat.socketserver"),
)

_MISSING = object()
# What sys.modules held under each name before install() replaced it.
_saved: dict = {}


def _exists(module_name):
    try:
        return importlib.util.find_spec(module_name) is not None
    except ImportError:
        return False


def install(socketserver=False):
    """Make ``import asyncore`` / ``import asynchat`` load pike's modules.

    ``asynchat`` is installed when pike has it (``pike.compat.asynchat``);
    ``socketserver`` only when asked for and when pike has it. Returns a
    dict of the names installed and their modules. Calling it again is
    harmless; :func:`uninstall` undoes it.
    """
    installed = {}
    for name, module_name in _MODULES:
        if name == "socketserver" and not socketserver:
            continue
        if name != "asyncore" and not _exists(module_name):
            continue
        module = importlib.import_module(module_name)
        current = sys.modules.get(name, _MISSING)
        if current is not module and name not in _saved:
            _saved[name] = current
        sys.modules[name] = module
        installed[name] = module
    return installed


def uninstall():
    """Put back what ``sys.modules`` held before :func:`install`."""
    for name, previous in list(_saved.items()):
        if previous is _MISSING:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        del _saved[name]


def installed():
    """The names whose imports pike's modules answer right now."""
    result = []
    for name, module_name in _MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__name__", None) == module_name:
            result.append(name)
    return result


def interest_changed(channel):
    """Tell pike's asyncore loop that ``channel``'s answers may have changed.

    ``channel`` is a dispatcher whose class declares ``pike_event_driven =
    True``: the loop then asks its ``readable()`` / ``writable()`` again only
    after its own events, after compat's methods (``send``, ``push``...) and
    after this call. Without the call, such a change is seen at the loop's
    next full sweep (see the compat page of the docs for the bound).
    """
    from pike.compat import asyncore

    asyncore._interest_changed(channel)


__all__ = ["install", "uninstall", "installed", "interest_changed"]
