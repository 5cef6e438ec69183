"""Choose the implementation of the hot path: the C accelerator or pure Python.

``PIKE_IMPL`` in the environment decides, once, at import:

* ``auto`` (the default): the accelerator when it was built, else pure Python;
* ``c``: the accelerator, and an ImportError when it is missing;
* ``python``: never load the accelerator.

``IMPLEMENTATION`` is ``"c"`` or ``"python"``: what actually runs.
"""

import os

_CHOICES = ("auto", "c", "python")


def _load_accelerator(requested):
    """Return the accelerator's ``(ffi, lib)``, or None on the pure path."""
    if requested == "python":
        return None
    try:
        from ._pike_accel import ffi, lib  # built by setup.py through cffi
    except ImportError as exc:
        if requested == "c":
            raise ImportError(
                "PIKE_IMPL=c but the C accelerator (pike._pike_accel) is not "
                "built; reinstall pike with a C compiler and cffi available"
            ) from exc
        return None
    return ffi, lib


def _requested():
    value = os.environ.get("PIKE_IMPL", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"PIKE_IMPL must be one of {', '.join(_CHOICES)}, not {value!r}"
        )
    return value


REQUESTED = _requested()
ACCEL = _load_accelerator(REQUESTED)
IMPLEMENTATION = "python" if ACCEL is None else "c"


def available_implementations():
    """The implementations this installation can run: "c" only when built."""
    return ["python"] if ACCEL is None else ["c", "python"]


def select_implementation(name):
    """Switch the implementation for objects made from now on (tests, bench).

    Raises ValueError for an unknown name and ImportError for "c" when the
    accelerator is not built.
    """
    global ACCEL, IMPLEMENTATION
    if name not in ("c", "python"):
        raise ValueError(f"implementation must be 'c' or 'python', not {name!r}")
    if name == "c":
        ACCEL = ACCEL or _load_accelerator("c")
    _apply(name)
    IMPLEMENTATION = name
    import pike

    pike.IMPLEMENTATION = name


def _apply(name):
    """Install the chosen implementation's methods on Transport."""
    from .transport import Transport

    if name == "c":
        from . import _c_path

        _c_path.install(Transport)
    elif ACCEL is not None:
        from . import _c_path

        _c_path.uninstall(Transport)


def apply_at_import():
    """Called once by ``pike/__init__``, after Transport exists."""
    _apply(IMPLEMENTATION)
