"""pytest configuration of pike's microbenchmarks (pytest-benchmark).

Run them with ``python -m pike bench --mode micro``, or ``python -m pytest
pike/bench/micro`` from a checkout (pyproject's ``testpaths`` keeps a bare
``pytest`` to ``tests/``). The suites are the ``bench_*.py`` files of
this folder: the hook below collects them here, and only here, so they
never mix with the test suite. ``--benchmark-disable`` runs each benchmark
once, as a quick check that they all still work.

This folder does not rely on ``tests/conftest.py``: the fixtures are here.
"""

import socket

import pytest

import pike
from pike import _impl

IMPLEMENTATIONS = ["python", "c"]


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    """Each implementation in turn ("c" skipped when it is not built)."""
    name = request.param
    if name not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    previous = _impl.IMPLEMENTATION
    _impl.select_implementation(name)
    yield name
    _impl.select_implementation(previous)


@pytest.fixture(params=pike.available_pollers())
def poller(request):
    """A fresh poller of each kind; its channels are closed afterwards."""
    p = pike.make_poller(request.param)
    yield p
    for channel in p.channels():
        channel.close()
    p.close()


@pytest.fixture
def pair():
    """A connected non-blocking socketpair, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()

