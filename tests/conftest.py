"""Shared test settings: hypothesis profiles and the leak check."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

# connect() takes a proxy from these (docs/guide.md, "Through a proxy"); the
# tests reach listeners on loopback, directly unless a test sets them itself.
for _variable in ("https_proxy", "all_proxy", "no_proxy"):
    os.environ.pop(_variable, None)
    os.environ.pop(_variable.upper(), None)

# "dev" keeps the edit-test loop quick; "ci" (selected by .ci/run) explores more.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


#: Set by .ci/run when it tests the compiled build: the run must fail at once,
#: not pass on the pure sources, if the checkout shadows the installed build.
_EXPECTED_BUILD = os.environ.get("RELIABLE_TCP_EXPECT_BUILD", "")


def pytest_configure(config: pytest.Config) -> None:
    """Check that the build under test is the one asked for."""
    import reliable_tcp

    build = "compiled" if reliable_tcp.COMPILED else "pure"
    if _EXPECTED_BUILD and build != _EXPECTED_BUILD:
        raise pytest.UsageError(f"RELIABLE_TCP_EXPECT_BUILD={_EXPECTED_BUILD}, but {reliable_tcp.__file__} is the {build} build")


def pytest_report_header() -> str:
    """Say which build the tests run against."""
    import reliable_tcp

    kind = "compiled (mypyc)" if reliable_tcp.COMPILED else "pure Python"
    return f"reliable_tcp: {kind} build at {os.path.dirname(reliable_tcp.__file__)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the long tests first.

    The suite runs on several xdist workers (setup.cfg), handed out one
    test at a time. A long test (a minute-long outage, a stalled process, a
    soak) that came last would run alone at the end while the other
    workers sit idle; started first, the short tests fill in around it.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    import reliable_tcp

    if reliable_tcp.COMPILED:
        skip = pytest.mark.skip(reason="patches a compiled class's method, which compiled callers don't see: pure build only")
        for item in items:
            if item.get_closest_marker("pure_build") is not None:
                item.add_marker(skip)


_OUR_THREADS = ("rtcp-", "fault-proxy-")


def _our_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith(_OUR_THREADS))


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail any test that leaves a channel, listener or proxy thread running."""
    before = set(_our_threads())
    yield
    deadline = time.monotonic() + 10.0
    leaked = [n for n in _our_threads() if n not in before]
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)  # polling a condition with a deadline, not synchronising
        leaked = [n for n in _our_threads() if n not in before]
    assert not leaked, f"threads leaked: {leaked}"


@pytest.fixture(params=["threads", "asyncio"])
def front(request: pytest.FixtureRequest) -> Iterator[object]:
    """Each front end in turn, behind the threaded API's shape (tests/support/fronts.py)."""
    from fronts import THREADS, AsyncioFront

    if request.param == "threads":
        yield THREADS
        return
    chosen = AsyncioFront()
    try:
        yield chosen
    finally:
        chosen.close()


@pytest.fixture(params=[("threads", "asyncio"), ("asyncio", "threads")], ids=["threads-to-asyncio", "asyncio-to-threads"])
def mixed_fronts(request: pytest.FixtureRequest) -> Iterator[tuple[object, object]]:
    """A client of one front end talking to a server of the other."""
    from fronts import THREADS, AsyncioFront

    loop_front = AsyncioFront()
    try:
        client, server = (THREADS if name == "threads" else loop_front for name in request.param)
        yield client, server
    finally:
        loop_front.close()
