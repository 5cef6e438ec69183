"""Build glue for pike.

All metadata lives in pyproject.toml. This file exists only to plug in the
optional cffi accelerator, and to make sure that failing to build it never
fails the install: pike has a pure-Python implementation of the same code.

Set PIKE_NO_ACCEL to a non-empty value to skip the accelerator entirely.
"""

import os
import runpy
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

HERE = os.path.dirname(os.path.abspath(__file__))
ACCEL_BUILDER = "pike/_accel_build.py"

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


def _want_accel():
    if os.environ.get("PIKE_NO_ACCEL"):
        return False
    # The builder is added to the tree separately; without it there is
    # nothing to compile.
    if not os.path.exists(os.path.join(HERE, ACCEL_BUILDER)):
        return False
    # pyproject.toml lists cffi as a build requirement, but a build without
    # isolation (--no-build-isolation, python setup.py ...) may lack it.
    try:
        import cffi  # noqa: F401
    except ImportError:
        _warn("cffi is not installed, so the C accelerator is not built")
        return False
    return True


def _abi3_tag():
    """The limited-API tag the builder compiles for, or None (see there)."""
    builder = runpy.run_path(os.path.join(HERE, ACCEL_BUILDER), run_name="pike_setup")
    return builder["LIMITED_API_TAG"] if builder["limited_api_available"]() else None


kwargs = {"cmdclass": {"build_ext": OptionalBuildExt}}
if _want_accel():
    # cffi's setuptools hook runs the builder and adds its extension module.
    kwargs["cffi_modules"] = [ACCEL_BUILDER + ":ffibuilder"]
    tag = _abi3_tag()
    if tag:
        # The module is abi3 (the builder compiles it against the limited
        # API), so the wheel says so: one wheel for CPython 3.9 and later.
        kwargs["options"] = {"bdist_wheel": {"py_limited_api": tag}}

setup(**kwargs)
