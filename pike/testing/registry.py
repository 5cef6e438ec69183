"""The battery's registry: the checks by name, and running them all.
"""

from __future__ import annotations

from ..poller import set_poller

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    from typing import Callable, Mapping

    from ..poller import Poller


#: Seconds any single wait of a check may last before it fails.
DEFAULT_TIMEOUT = 5.0


class CheckSkipped(Exception):
    """A check (or helper) cannot run on this machine, e.g. no IPv6.

    :func:`check_all` reports such checks as skipped; a pytest wrapper
    should turn this into ``pytest.skip``.
    """


#: Check name -> check function, in the order :func:`check_all` runs them.
#: A name is the function's name without ``check_``.
#:
#: :meta hide-value:
CHECKS: dict = {}


def _check(fn):
    name = fn.__name__
    assert name.startswith("check_")
    CHECKS[name[len("check_"):]] = fn
    return fn


def check_all(
    poller_factory: Callable[[], Poller],
    checks: Mapping[str, Callable[[Poller], None]] | None = None,
) -> dict[str, str]:
    """Run every check, each on a fresh poller from ``poller_factory()``.

    Each poller is installed as the process's default poller while its
    check runs (see :func:`~pike.poller.set_poller`); afterwards, any
    channel left on it is closed and the poller is closed.

    :param poller_factory: a callable returning a new poller.
    :param checks: a mapping of name to check function (default: ``CHECKS``).
    :returns: a dict mapping each check name to ``"passed"`` or to
        ``"skipped: <reason>"``.
    :raises AssertionError: naming every check that failed, with its error.
    """
    if checks is None:
        checks = CHECKS
    results = {}
    failures = []
    for name, check in checks.items():
        poller = poller_factory()
        previous = set_poller(poller)
        try:
            check(poller)
        except CheckSkipped as exc:
            results[name] = f"skipped: {exc}"
        except Exception as exc:
            results[name] = "failed"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            results[name] = "passed"
        finally:
            set_poller(previous)
            for channel in poller.channels():
                channel.close()
            poller.close()
    if failures:
        raise AssertionError(
            f"{len(failures)} of {len(checks)} checks failed:\n" + "\n".join(failures)
        )
    return results
