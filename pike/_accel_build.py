"""cffi builder of pike's C accelerator (out-of-line API mode).

setup.py names it in ``cffi_modules``; it compiles ``csrc/pike_accel.c``
into the extension module ``pike._pike_accel``. The declarations below
mirror ``csrc/pike_accel.h``, which documents each function.

The module is built against CPython's limited API (the stable ABI of
Python 3.9 and later), so one ``_pike_accel.abi3.so`` serves every
supported Python, and setup.py tags the wheel ``cp39-abi3``. Debug and
free-threaded builds of CPython have no stable ABI: there the module is an
ordinary one for that interpreter.

Run directly (``python pike/_accel_build.py`` from the repository root),
it builds the module in place; that needs setuptools, which Python 3.12
and later no longer bundle. ``python -m pip install -e .`` does the same
without that step.
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")

CDEF = """
long pike_send(int fd, const char *buf, size_t len);
#define PIKE_NOT_RECEIVED ...
size_t pike_epoll_event_size(void);
long pike_epoll_batch(int epfd, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records);
"""

# cffi's wrappers release and retake the GIL around every call. The send
# cannot block (sockets are non-blocking and MSG_DONTWAIT is passed), and the release/retake pair cost about 400 user-space
# instructions a call (callgrind, CPython 3.11), more than a 1 KiB send's
# own user-space work. So the wrappers keep the GIL: another thread waits at
# most one non-blocking system call. A function that may block must not be
# added here: pike_epoll_batch never waits (the poller waits in Python's own
# epoll.poll, which releases the GIL and runs signal handlers).
KEEP_GIL = """
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
"""

# The oldest Python whose stable ABI the module uses: the wheel tag
# (cp39-abi3) and Py_LIMITED_API (0x03090000) both say it.
LIMITED_API_TAG = "cp39"
LIMITED_API_HEX = "0x03090000"


def limited_api_available() -> bool:
    """True where this interpreter can build and load an abi3 module."""
    return (
        platform.python_implementation() == "CPython"
        and not hasattr(sys, "gettotalrefcount")  # a debug build
        and not sysconfig.get_config_var("Py_GIL_DISABLED")  # free-threaded
    )


# cffi turns the limited API on by itself where it can (py_limited_api and
# an unversioned Py_LIMITED_API); naming the version makes the compiler
# reject anything newer than the tag promises.
_LIMITED = (
    {"py_limited_api": True, "define_macros": [("Py_LIMITED_API", LIMITED_API_HEX)]}
    if limited_api_available()
    else {"py_limited_api": False}
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pike._pike_accel",
    KEEP_GIL + '#include "pike_accel.h"',
    sources=[
        os.path.relpath(os.path.join(_CSRC, name))
        for name in ("pike_accel.c", "pike_batch.c")
    ],
    include_dirs=[os.path.relpath(_CSRC)],
    extra_compile_args=["-O2"],
    **_LIMITED,
)


def _build_in_place() -> None:
    import importlib.util

    if importlib.util.find_spec("setuptools") is None:  # cffi compiles through it
        sys.exit(
            "building the accelerator needs setuptools (not bundled with "
            "Python 3.12 and later): 'python -m pip install setuptools', or "
            "build it in place with 'python -m pip install -e .' instead"
        )
    ffibuilder.compile(verbose=True)


if __name__ == "__main__":
    _build_in_place()
