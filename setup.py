"""Build glue for pike.

All metadata lives in pyproject.toml. This file exists only to add the
optional C accelerator (``csrc/`` -> the extension module
``pike._pike_accel``), and to make sure that failing to build it never
fails the install: pike has a pure-Python implementation of the same code.

On CPython 3.12 and later the module is built against the limited API of
3.12 (the stable ABI): one ``_pike_accel.abi3.so``, and one wheel tagged
``cp312-abi3``, serve 3.12 and every later CPython. The limited API of
older Pythons lacks the calls the module is fast with (vectorcall, the
buffer protocol), so there, and on debug and free-threaded builds (which
have no stable ABI), it is an ordinary module for the interpreter at hand.

Set PIKE_NO_ACCEL to a non-empty value to skip the accelerator entirely.
``python -m pip install -e .`` builds it in place in a source checkout.
"""

import os
import platform
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

SOURCES = ["csrc/pike_module.c", "csrc/pike_send.c", "csrc/pike_batch.c"]

# The oldest CPython whose stable ABI the module is built for, where it is.
LIMITED_API = (3, 12)
LIMITED_API_TAG = "cp312"
LIMITED_API_HEX = "0x030C0000"

# Errors that mean "this machine cannot compile C" rather than a bug in setup.
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, PlatformError, OSError)


def _warn(message):
    sys.stderr.write("WARNING: pike: %s; the pure-Python implementation will be used\n" % message)


class OptionalBuildExt(build_ext):
    """build_ext that treats every extension as optional.

    The accelerator is only a speed-up, so a missing compiler or a failed
    compile must leave a working pure-Python install instead of an error.
    """

    def run(self):
        # Optional extensions are skipped with a warning by setuptools itself
        # when their compile fails (and are not copied in place for editable
        # installs); the try/except covers failures before any compile starts,
        # such as no compiler being found at all.
        for ext in self.extensions:
            ext.optional = True
        try:
            super().run()
        except BUILD_ERRORS as exc:
            _warn("could not build the C accelerator (%s)" % (exc,))

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            _warn("could not build extension %s (%s)" % (ext.name, exc))


def _use_limited_api():
    """True where the module is built for the stable ABI (see above)."""
    return (
        platform.python_implementation() == "CPython"
        and sys.version_info >= LIMITED_API
        and not hasattr(sys, "gettotalrefcount")  # a debug build
        and not sysconfig.get_config_var("Py_GIL_DISABLED")  # free-threaded
    )


def _accelerator(limited):
    return Extension(
        "pike._pike_accel",
        sources=SOURCES,
        depends=["csrc/pike_accel.h"],
        include_dirs=["csrc"],
        extra_compile_args=["-O2"],
        py_limited_api=limited,
        define_macros=[("Py_LIMITED_API", LIMITED_API_HEX)] if limited else [],
    )


kwargs = {"cmdclass": {"build_ext": OptionalBuildExt}}
if not os.environ.get("PIKE_NO_ACCEL"):
    limited = _use_limited_api()
    kwargs["ext_modules"] = [_accelerator(limited)]
    if limited:
        # The module is abi3, so the wheel says so.
        kwargs["options"] = {"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}}

setup(**kwargs)
