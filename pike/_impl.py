"""Choose the implementation of the hot path: the C accelerator or pure Python.

``PIKE_IMPL`` in the environment decides, once, at import:

* ``auto`` (the default): the accelerator when it was built, else pure Python;
* ``c``: the accelerator, and an ImportError when it is missing;
* ``python``: never load the accelerator.

``IMPLEMENTATION`` is ``"c"`` or ``"python"``: what actually runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from types import ModuleType
    from typing import List, Optional

_CHOICES = ("auto", "c", "python")


# Why the last attempt to load the accelerator failed (None: it loaded, or
# no attempt was made); read by accelerator_problem().
_LOAD_ERROR: Optional[ImportError] = None


def _load_accelerator(requested: str) -> Optional[ModuleType]:
    """Return the accelerator module, or None on the pure path."""
    global _LOAD_ERROR
    if requested == "python":
        return None
    try:
        from . import _pike_accel  # built by setup.py from csrc/
    except ImportError as exc:
        _LOAD_ERROR = exc
        if requested == "c":
            raise ImportError(
                "PIKE_IMPL=c but the C accelerator (pike._pike_accel) is not "
                "built; reinstall pike with a C compiler and the Python headers "
                "available"
            ) from exc
        return None
    return _pike_accel


def _requested() -> str:
    value = os.environ.get("PIKE_IMPL", "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"PIKE_IMPL must be one of {', '.join(_CHOICES)}, not {value!r}"
        )
    return value


#: The ``PIKE_IMPL`` value read at import: "auto", "c" or "python".
REQUESTED: str = _requested()
#: The accelerator module (``pike._pike_accel``), or None on the pure path.
ACCEL: Optional[ModuleType] = _load_accelerator(REQUESTED)
#: "c" or "python": the implementation in force.
IMPLEMENTATION: str = "python" if ACCEL is None else "c"


def available_implementations() -> List[str]:
    """The implementations this installation can run: "c" only when built."""
    return ["python"] if ACCEL is None else ["c", "python"]


def accelerator_problem() -> Optional[str]:
    """Why the C accelerator is not in use, and how to fix it; None when it is.

    One paragraph for people: ``python -m pike info`` and the bench print it.
    """
    if IMPLEMENTATION == "c":
        return None
    if REQUESTED == "python":
        return "PIKE_IMPL=python chose the pure-Python implementation."
    here = os.path.dirname(os.path.abspath(__file__))
    elsewhere = _built_copy_elsewhere(here)
    if elsewhere is not None:
        return (
            f"pike is imported from {here}, which has no built accelerator, "
            f"while the copy installed at {elsewhere} has one. This happens "
            "when Python runs from a source checkout: build it in place with "
            "'python -m pip install -e .' there, or run from another directory."
        )
    detail = f" (import error: {_LOAD_ERROR})" if _LOAD_ERROR is not None else ""
    return (
        "the C accelerator (pike._pike_accel) is not built" + detail + ". It "
        "needs a C compiler and the Python headers when pike is "
        "installed; with those in place, reinstall pike the way it was "
        "installed, adding -v and --force-reinstall (in a source checkout: "
        "'python -m pip install -v -e .'): pip shows the compiler's output, "
        "and pike's warning when the build fails, only with -v."
    )


def _built_copy_elsewhere(here: str) -> Optional[str]:
    """The directory of another importable pike that has the accelerator."""
    import sys

    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "pike")
        if candidate == here or not os.path.isdir(candidate):
            continue
        try:
            names = os.listdir(candidate)
        except OSError:
            continue
        if any(name.startswith("_pike_accel") and name.endswith((".so", ".pyd")) for name in names):
            return candidate
    return None


def select_implementation(name: str) -> None:
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


def _apply(name: str) -> None:
    """Put the chosen implementation's primitives in force: Transport's
    send, and the epoll poller made from now on."""
    import select

    if name == "c":
        from . import _c_path

        _c_path.install()
    elif ACCEL is not None:
        from . import _c_path

        _c_path.uninstall()
    if hasattr(select, "epoll"):
        from .poller import epoll_backend

        batched = None
        if name == "c":
            from .poller.epoll_batch import BatchedEpollPoller

            batched = BatchedEpollPoller
        epoll_backend.use_batched_wait(batched)


def apply_at_import() -> None:
    """Called once by ``pike/__init__``, after Transport exists."""
    _apply(IMPLEMENTATION)
