"""cffi builder of pike's C accelerator (out-of-line API mode).

setup.py names it in ``cffi_modules``; it compiles ``csrc/pike_accel.c``
into the extension module ``pike._pike_accel``. The declarations below
mirror ``csrc/pike_accel.h``, which documents each function.
"""

import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")

CDEF = """
long pike_send(int fd, const char *buf, size_t len);
long pike_recv(int fd, char *buf, size_t len);
long pike_find(const char *hay, size_t hay_len, size_t start,
               const char *needle, size_t needle_len);
long pike_find_all(const char *hay, size_t hay_len, size_t start,
                   const char *needle, size_t needle_len, long *ends, long max);
long pike_prefix_at_end(const char *hay, size_t hay_len,
                        const char *needle, size_t needle_len);
long pike_scan_lengths(const unsigned char *buf, size_t len, size_t start,
                       int header_size, int little_endian,
                       unsigned long long max_frame, long *ends, long max);
"""

# cffi's wrappers release and retake the GIL around every call. Nothing here
# blocks (sockets are non-blocking and MSG_DONTWAIT is passed; the scanners
# only read memory), and the release/retake pair cost about 400 user-space
# instructions a call (callgrind, CPython 3.11), more than a 1 KiB send's
# own user-space work. So the wrappers keep the GIL: another thread waits at
# most one non-blocking system call. A function that may block must not be
# added here without releasing the GIL itself.
KEEP_GIL = """
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pike._pike_accel",
    KEEP_GIL + '#include "pike_accel.h"',
    sources=[os.path.relpath(os.path.join(_CSRC, "pike_accel.c"))],
    include_dirs=[os.path.relpath(_CSRC)],
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
